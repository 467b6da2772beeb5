"""Installing kcd_mm changes nothing for code that does not use KCD.

Each test runs the same plain code in two fresh interpreters: one that
never sees kcd_mm (its mmrazor import hook off, ``KCD_MM_MMRAZOR_HOOK=0``),
one that imports kcd_mm first, as ``custom_imports`` or the hook would,
and compares what they did. The baseline defines torchvision's two op
schemas itself, as a working torchvision has them (the PyPI wheel here
does not import beside a CPU torch, docs/troubleshooting.md); that is the
one import fix a plain mmpretrain run needs here.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

from kcd_mm.testing import (make_image_folder, tiny_classifier_config,
                            write_config)
from helpers import REPO_ROOT

TORCHVISION_SCHEMAS = textwrap.dedent('''
    import importlib.util, os, torch
    _spec = importlib.util.find_spec('torchvision')
    _dir = list(_spec.submodule_search_locations)[0]
    try:
        torch.ops.load_library(os.path.join(_dir, [
            f for f in os.listdir(_dir) if f.startswith('_C.')][0]))
    except (OSError, RuntimeError, IndexError):
        _LIB = torch.library.Library('torchvision', 'DEF')
        _LIB.define('nms(Tensor dets, Tensor scores, float iou_threshold) '
                    '-> Tensor')
        _LIB.define('qnms(Tensor qdets, Tensor scores, float iou_threshold)'
                    ' -> Tensor')
''')


def _run(code: str, with_kcd: bool, **env) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh
    interpreter, after ``import kcd_mm`` or after the baseline's schemas."""
    prelude = ('import kcd_mm\n' if with_kcd else TORCHVISION_SCHEMAS)
    full = dict(os.environ, OMP_NUM_THREADS='1', **env)
    full['KCD_MM_MMRAZOR_HOOK'] = '1' if with_kcd else '0'
    proc = subprocess.run(
        [sys.executable, '-c', prelude + textwrap.dedent(code)],
        cwd=REPO_ROOT, env=full, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    # The JSON line, wherever a worker's late output put it.
    found = [line for line in proc.stdout.splitlines()
             if line.startswith('{') and line.endswith('}')]
    assert found, proc.stdout[-4000:]
    return json.loads(found[-1])


def _both(code: str, **env):
    return _run(code, False, **env), _run(code, True, **env)


PLAIN_RUN = '''
    import hashlib, json, os, sys
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    def digest(work):
        state = torch.load(os.path.join(work, 'epoch_2.pth'),
                           map_location='cpu', weights_only=False)
        h = hashlib.sha256()
        for name, tensor in sorted(state['state_dict'].items()):
            h.update(name.encode() + tensor.numpy().tobytes())
        return h.hexdigest()

    cfg_path, work, stray = sys.argv[1:4]
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = work
    Runner.from_cfg(cfg).train()
    files = sorted(n for n in os.listdir(work) if n.endswith('.pth'))
    with open(os.path.join(work, 'last_checkpoint')) as f:
        last = os.path.basename(f.read().strip())
    weights = digest(work)
    # A work dir holding a stray checkpoint but no last_checkpoint (a user
    # who deleted it to start afresh), resume=True: mmengine starts afresh.
    os.makedirs(stray, exist_ok=True)
    os.replace(os.path.join(work, 'epoch_2.pth'),
               os.path.join(stray, 'epoch_2.pth'))
    cfg.work_dir, cfg.resume = stray, True
    runner = Runner.from_cfg(cfg)
    runner.train()
    print(json.dumps(dict(files=files, last=last, weights=weights,
                          resumed=runner._has_loaded, afresh=digest(stray),
                          sys_modules_kcd=sorted(
                              m for m in sys.modules
                              if m.startswith('kcd_mm'))[:1])))
'''


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_plain_mmpretrain_run_trains_and_resumes_as_without_kcd_mm(
        tmp_path):
    """Same weights bit for bit (two workers, persistent; max_keep_ckpts=1),
    same checkpoint files, same choice on ``resume=True`` beside a stray
    checkpoint."""
    data = make_image_folder(str(tmp_path / 'data'), 24, 2, 16)
    cfg = tiny_classifier_config(data, max_epochs=2, batch_size=8,
                                 num_workers=2)
    cfg['train_dataloader']['persistent_workers'] = True
    cfg['default_hooks']['checkpoint']['max_keep_ckpts'] = 1
    cfg['randomness'] = dict(seed=3, deterministic=True)
    path = write_config(cfg, str(tmp_path / 'plain.py'))
    out = {}
    for with_kcd in (False, True):
        arm = 'kcd' if with_kcd else 'plain'
        code = PLAIN_RUN.replace(
            'sys.argv[1:4]', repr([path, str(tmp_path / arm / 'work'),
                                   str(tmp_path / arm / 'stray')]))
        out[arm] = _run(code, with_kcd)
    plain, kcd = out['plain'], out['kcd']
    assert plain['sys_modules_kcd'] == [] and kcd['sys_modules_kcd']
    assert plain['files'] == kcd['files'] == ['epoch_2.pth']
    assert plain['last'] == kcd['last'] == 'epoch_2.pth'
    assert plain['weights'] == kcd['weights']
    # Started afresh (the same run again), not resumed from the stray file.
    assert plain['resumed'] is kcd['resumed'] is False
    assert plain['afresh'] == kcd['afresh'] == plain['weights']


PROBE_DATASET = '''
import sys

import torch


class Probe(torch.utils.data.Dataset):
    """Each item: which of kcd_mm, mmrazor, mmpretrain the worker imported."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return sorted({m.split('.')[0] for m in sys.modules} & {
            'kcd_mm', 'mmrazor', 'mmpretrain'})
'''


@pytest.mark.slow
@pytest.mark.multiprocess
def test_plain_torch_loader_workers_import_nothing_of_kcd_mm(tmp_path):
    """A spawn-context DataLoader in a process that imported kcd_mm (and
    mmrazor): its workers import none of them, as without kcd_mm."""
    (tmp_path / 'probe_dataset.py').write_text(PROBE_DATASET)
    code = f'''
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import mmrazor  # noqa: F401
        import torch
        from probe_dataset import Probe
        loader = torch.utils.data.DataLoader(
            Probe(), batch_size=None, num_workers=2,
            multiprocessing_context='spawn')
        seen = sorted({{m for item in loader for m in item}})
        print(json.dumps(dict(workers=seen, here='mmrazor' in sys.modules)))
    '''
    plain, kcd = _both(code)
    assert plain == kcd == dict(workers=[], here=True)


USER_SAFE_GLOBALS = '''
    import io, json
    import numpy as np
    import torch
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar

    torch.serialization.add_safe_globals([
        _reconstruct, np.ndarray, np.dtype, scalar,
        type(np.dtype(np.float64))])
    data = io.BytesIO()
    torch.save(dict(a=np.arange(3, dtype=np.float64)), data)
    data.seek(0)
    loaded = torch.load(data, weights_only=True)['a']
    print(json.dumps(dict(
        value=loaded.tolist(), type=type(loaded).__name__,
        dtype=str(loaded.dtype))))
'''


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_users_own_weights_only_loads_are_untouched():
    """A user who allows numpy's types the PyTorch way loads a float64
    array with ``weights_only=True`` exactly as without kcd_mm, in every
    fresh process (set order once decided the outcome)."""
    for _ in range(3):
        plain, kcd = _both(USER_SAFE_GLOBALS)
        assert plain == kcd
        assert kcd['value'] == [0.0, 1.0, 2.0]
        assert kcd['type'] == 'ndarray' and kcd['dtype'] == 'float64'


IDENTITIES = '''
    import json
    import mmengine.hooks.checkpoint_hook as checkpoint_hook
    import mmengine.runner as mmengine_runner
    import mmengine.runner.checkpoint as checkpoint
    import torch
    import torch.utils.data._utils.worker as worker
    from mmengine.config import Config
    from mmengine.optim import AmpOptimWrapper
    from mmengine.registry import DefaultScope, Registry
    from torch.nn.parallel import DistributedDataParallel

    def names():
        return dict(
            worker_loop=worker._worker_loop,
            ddp_init=DistributedDataParallel.__init__,
            amp_init=AmpOptimWrapper.__init__,
            ckpt_with_step=checkpoint_hook.CheckpointHook.
            _save_checkpoint_with_step,
            hook_open=getattr(checkpoint_hook, 'open', open),
            save=checkpoint.save_checkpoint,
            runner_save=mmengine_runner.save_checkpoint,
            find_latest=mmengine_runner.find_latest_checkpoint,
            registry_get=Registry.get,
            registry_build=Registry.build,
            scope_init=DefaultScope.__init__,
            cfg_path=Config.__dict__['_get_cfg_path'].__func__,
            history_setstate=__import__(
                'mmengine.logging.history_buffer', fromlist=['x']
            ).HistoryBuffer.__setstate__,
        )

    before = names()
    import kcd_mm  # noqa: F401
    after = names()
    print(json.dumps(dict(changed=sorted(
        k for k in before if after[k] is not before[k]))))
'''


def _fake_mmcls(root: str) -> str:
    """A real (if tiny) ``mmcls`` package on a folder to put on the path."""
    os.makedirs(osp.join(root, 'mmcls'))
    with open(osp.join(root, 'mmcls', '__init__.py'), 'w') as f:
        f.write("__version__ = '1.0.0'\n")
    return root


@pytest.mark.slow
@pytest.mark.multiprocess
def test_nothing_of_torch_or_mmengine_is_replaced(tmp_path):
    """What importing kcd_mm leaves as it was: torch's worker loop and DDP,
    mmengine's checkpoint saving, hook, resume choice, AMP wrapper and
    HistoryBuffer; with a real mmcls installed, mmengine's registries and
    config paths too (the mmcls alias then does nothing)."""
    root = _fake_mmcls(str(tmp_path / 'site'))
    out = _run(IDENTITIES, False, PYTHONPATH=os.pathsep.join(
        [root, os.environ.get('PYTHONPATH', '')]))
    assert out['changed'] == []
    # Only where mmcls is missing does the alias read mmcls from mmpretrain.
    missing = _run(IDENTITIES, False)
    assert missing['changed'] == ['cfg_path', 'registry_build',
                                  'registry_get', 'scope_init']


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_real_mmcls_keeps_its_configs_and_names(tmp_path):
    root = _fake_mmcls(str(tmp_path / 'site'))
    code = '''
        import json, sys
        import kcd_mm  # noqa: F401
        from mmengine.config import Config
        from kcd_mm.compat import mmcls_alias
        print(json.dumps(dict(
            missing=mmcls_alias._mmcls_missing(),
            alias=any(f is mmcls_alias._MmclsAlias for f in sys.meta_path),
            path=getattr(Config._get_cfg_path, '_kcd_rewrites', False),
            mmcls=sys.modules['mmcls'].__file__ is not None)))
    '''
    out = _run('import mmcls\n' + textwrap.dedent(code), False,
               PYTHONPATH=os.pathsep.join(
                   [root, os.environ.get('PYTHONPATH', '')]))
    assert out == dict(missing=False, alias=False, path=False, mmcls=True)


def test_mmengine_loads_runner_checkpoints_and_the_allow_list_stays(
        tmp_path):
    """In this process (kcd_mm imported): mmengine loads a checkpoint
    holding a HistoryBuffer under torch's weights-only default, and torch's
    allow-list is the same before and after."""
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import _load_checkpoint
    buffer = HistoryBuffer()
    buffer.update(2.5)
    path = str(tmp_path / 'c.pth')
    torch.save(dict(meta=dict(epoch=1), buf=buffer), path)
    before = torch.serialization.get_safe_globals()
    loaded = _load_checkpoint(path, map_location='cpu')
    assert loaded['buf'].current() == 2.5
    assert type(loaded['buf']._log_history).__name__ == 'ndarray'
    assert set(torch.serialization.get_safe_globals()) == set(before)
    with pytest.raises(Exception, match='HistoryBuffer'):
        torch.load(path, weights_only=True)  # the user's own: torch's rules
