"""Which arms have run already: in their work dirs, or, from an earlier
session whose work dirs are gone, in the committed results jsons.

A result counts only when it ran with the same ``--cfg-options``; where
the caller names a teacher (``Mode.same_teacher``), also only from a
teacher with the same weights (:func:`weights_sha256`): paired arms must
share one teacher, and a session that trains the teacher again must find
out whether it got the same one.
"""
import functools
import glob
import hashlib
import json
import os
import os.path as osp
from typing import Dict, List, Optional

from modes import ROOT  # first: ROOT on sys.path


def weights_sha256(path: str) -> Optional[str]:
    """The sha256 of a weights file's tensors (names, dtypes, shapes and
    bytes in key order), None when there is no file.

    Not the file's own hash: the teacher file's meta holds the time its
    training started, so two trainings that end in the same weights write
    different files.
    """
    if not osp.isfile(path):
        return None
    stat = os.stat(path)  # every arm asks: hash each file version once
    return _weights_sha256(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _weights_sha256(path: str, mtime_ns: int, size: int) -> str:
    import torch

    from kcd_mm.compat import safe_loading
    ckpt = safe_loading.load(path, map_location='cpu', weights_only=True)
    state = ckpt.get('state_dict', ckpt)
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().reshape(-1)  # 0-d tensors cannot view
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'
                      .encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b'')
    return digest.hexdigest()


def _committed(name: str, opts: List[str],
               teacher: Optional[str]) -> Optional[Dict]:
    """The result of arm ``name`` in a committed
    ``benchmarks/results/bench_*.json``, run with ``opts`` (and, when
    ``teacher`` is given, from a teacher of those weights)."""
    for path in sorted(glob.glob(osp.join(ROOT, 'benchmarks', 'results',
                                          'bench_*.json'))):
        with open(path) as f:
            for result in json.load(f).get('arms', []):
                if result.get('name') != name or result.get(
                        'cfg_options') != opts:
                    continue
                if teacher is not None and result.get(
                        'teacher_weights_sha256') != teacher:
                    continue
                return dict(result, from_json=osp.basename(path))
    return None


def cached_result(name: str, opts: List[str], work_dir: str,
                  teacher: Optional[str] = None,
                  committed: bool = False) -> Optional[Dict]:
    """The arm's result (``reused=True``): its work dir's
    ``bench_result.json``, else, with ``committed``, a committed json's
    (:func:`_committed`);
    None when it has not run with ``opts`` (and ``teacher``, when given:
    a result naming other teacher weights, or none, does not count)."""
    cached = None
    result_path = osp.join(work_dir, 'bench_result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            cached = json.load(f)
    if cached is not None and (cached['cfg_options'] != opts or (
            teacher is not None and
            cached.get('teacher_weights_sha256') != teacher)):
        cached = None
    if cached is None and committed:
        cached = _committed(name, opts, teacher)
    return None if cached is None else dict(cached, reused=True)
