"""Slim Runner checkpoints down to model weights, for deployment or reuse.

Shared by ``tools/model_converters/extract_state_dict.py`` (a teacher's
weights, or any prefix of a state dict) and
``tools/model_converters/convert_kcd_ckpt_to_student.py`` (the student of
a distillation checkpoint). Nothing here changes its input; the output is
checked to load with ``torch.load(weights_only=True)`` before it replaces
``dst``.
"""
import os.path as osp
from collections import OrderedDict

import torch

from .compat import safe_loading
from .fileio import write_atomically

# Meta entries of a Runner checkpoint that are kept: plain, informative.
META_KEYS = ('epoch', 'iter', 'seed', 'dataset_meta', 'mmengine_version',
             'time')


def extract(src: str, dst: str, prefix: str = '') -> int:
    """Write the weights of checkpoint ``src`` to ``dst``.

    ``dst`` holds ``{'state_dict': ..., 'meta': ...}``: the tensors of
    ``src``'s state dict (detached CPU copies) and, when ``src`` has a
    meta dict, its :data:`META_KEYS` entries plus ``source`` (the base name
    of ``src``). The optimizer, message hub and other training state are
    dropped.

    Args:
        src (str): A Runner checkpoint, or a file holding a bare state
            dict.
        dst (str): The file to write; its folder is created. Written to
            ``dst + '.tmp'`` first and renamed once it loads.
        prefix (str): Keep only the keys under ``prefix.`` and strip it
            (e.g. ``'architecture'``: the student of a distillation
            checkpoint). Defaults to ``''``: every key.

    Returns:
        int: The number of tensors written.

    Raises:
        ValueError: ``src`` holds no state dict, or no key under
            ``prefix``.
    """
    ckpt = safe_loading.load(src, map_location='cpu', weights_only=True)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'{src} holds no state dict')
    if prefix:
        head = prefix.rstrip('.') + '.'
        state = OrderedDict((k[len(head):], v) for k, v in state.items()
                            if k.startswith(head))
        if not state:
            raise ValueError(f'no key of {src} starts with {head!r}')
    out = {'state_dict': OrderedDict((k, v.detach().clone().cpu())
                                     for k, v in state.items())}
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if isinstance(meta, dict):
        keep = {k: meta[k] for k in META_KEYS if k in meta}
        keep['source'] = osp.basename(src)
        out['meta'] = keep
    # Checked to load with the safe loader before it is published.
    write_atomically(dst, lambda f: torch.save(out, f),
                     check=lambda tmp: torch.load(
                         tmp, map_location='cpu', weights_only=True))
    return len(out['state_dict'])
