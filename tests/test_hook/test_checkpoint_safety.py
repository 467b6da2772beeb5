"""Checkpoints survive kills, and a forged checkpoint cannot crash a load.

* A run SIGKILLed halfway through writing a checkpoint (``max_keep_ckpts=1``,
  as the teacher and student configs) keeps its previous checkpoint and
  ``last_checkpoint``; ``--resume`` finishes it with the records an
  uninterrupted run writes.
* A truncated newest checkpoint and an empty ``last_checkpoint``: ``--resume``
  takes the newest complete checkpoint and names the damaged files.
* numpy arrays forged to hold object pointers (or any non-numeric dtype) in a
  "weights-only" checkpoint are refused with a clear error; real Runner
  checkpoints still resume, with plain numpy arrays in their HistoryBuffers.
"""
import logging
import os
import os.path as osp
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner, find_latest_checkpoint

from kcd_mm.records import check_consistency, read_records, read_snapshots
from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
import helpers
from helpers import TESTS_DIR, run_tool, stage_records


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('checkpoint_safety_data')
    return make_image_folder(str(root), num_images=48, num_classes=3, size=16)


def _config(data_root, max_epochs, keep=-1):
    cfg = tiny_kcd_config(data_root, max_epochs=max_epochs, stage_epochs=1,
                          theta=0.5)
    cfg['randomness'] = dict(seed=7, deterministic=True)
    cfg['default_hooks']['checkpoint']['max_keep_ckpts'] = keep
    return cfg


def _complete(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt['meta']['epoch']


def _recorded(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _train_here(cfg, work_dir):
    """A tiny run in this process (no interpreter start-up)."""
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _train_tool_here(argv):
    """``python tools/train.py *argv``, in this process."""
    import importlib.util
    tools = osp.join(helpers.repo_root(), 'tools')
    if tools not in sys.path:
        sys.path.append(tools)  # train.py imports tool_utils, a sibling
    spec = importlib.util.spec_from_file_location(
        'kcd_tools_train', osp.join(tools, 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


# ----------------------------------------------------- kills and resume
def test_killed_while_writing_a_checkpoint_then_resumed(data_root, tmp_path):
    cfg = _config(data_root, max_epochs=3, keep=1)
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    work = str(tmp_path / 'work')
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(dict(type='mmrazor.CheckpointKillHook',
                                    epoch=2))
    killed = write_config(cfg, str(tmp_path / 'kcd_killed.py'))
    proc = run_tool(['tools/train.py', killed, '--work-dir', work],
                    env=helpers.probe_env(), check=False)
    assert proc.returncode == -9, proc.stdout[-3000:]

    # Killed halfway through epoch_2.pth: epoch_1.pth and last_checkpoint
    # are whole, the half-written file is only a .tmp.
    assert _recorded(work) == osp.join(work, 'epoch_1.pth')
    assert _complete(osp.join(work, 'epoch_1.pth')) == 1
    assert not osp.exists(osp.join(work, 'epoch_2.pth'))
    assert osp.getsize(osp.join(work, 'epoch_2.pth.tmp')) > 0
    uninterrupted = stage_records(work, timings=False)  # E-steps 1 and 2
    assert [r['stage'] for r in uninterrupted] == [1, 2]

    _train_tool_here([path, '--work-dir', work, '--resume'])
    # Resumed, not restarted: no earlier record was put aside.
    assert sorted(n for n in os.listdir(work)
                  if n.startswith('kcd_stages')) == ['kcd_stages',
                                                     'kcd_stages.jsonl']
    assert stage_records(work, timings=False) == uninterrupted
    assert check_consistency(read_records(work), read_snapshots(work)) == []
    names = sorted(os.listdir(work))
    assert [n for n in names if n.endswith(('.pth', '.tmp'))] == [
        'epoch_3.pth']  # max_keep_ckpts=1: the others went, once replaced
    assert _recorded(work) == osp.join(work, 'epoch_3.pth')
    assert _complete(osp.join(work, 'epoch_3.pth')) == 3


def test_resume_skips_a_truncated_checkpoint_and_empty_last_checkpoint(
        data_root, tmp_path):
    cfg = _config(data_root, max_epochs=2)
    work = str(tmp_path / 'work')
    _train_here(cfg, work)
    newest = osp.join(work, 'epoch_2.pth')
    older = osp.join(work, 'epoch_1.pth')
    with open(newest, 'r+b') as f:  # a write cut short
        f.truncate(osp.getsize(newest) // 2)
    open(osp.join(work, 'last_checkpoint'), 'w').close()

    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    out = run_tool(['tools/train.py', path, '--work-dir', work,
                    '--resume']).stdout
    assert f'{work}/last_checkpoint is empty' in out
    assert f'{newest} is truncated' in out
    assert f'resuming from {older}, the newest complete checkpoint' in out
    assert 'KCD resumed at stage 1' in out
    assert _complete(newest) == 2  # epoch 2 ran again
    assert _recorded(work) == newest
    assert check_consistency(read_records(work), read_snapshots(work)) == []


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.fixture
def logged():
    """Messages logged to mmengine's current logger during the test."""
    from mmengine.logging import MMLogger

    class Collect(logging.Handler):

        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

        def take(self):
            text, self.messages = '\n'.join(self.messages), []
            return text

    logger, handler = MMLogger.get_current_instance(), Collect()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_find_latest_checkpoint_takes_the_newest_complete_one(
        tmp_path, logged):
    work = str(tmp_path)
    first = _save({'meta': {'epoch': 1}}, osp.join(work, 'epoch_1.pth'))
    second = _save({'meta': {'epoch': 2}}, osp.join(work, 'epoch_2.pth'))
    last = osp.join(work, 'last_checkpoint')

    def record(text):
        with open(last, 'w') as f:
            f.write(text)

    record(second)  # healthy: what last_checkpoint names, as mmengine
    assert find_latest_checkpoint(work) == second
    os.remove(last)  # killed before the first last_checkpoint was written
    assert find_latest_checkpoint(work) == second
    open(osp.join(work, 'epoch_3.pth'), 'w').close()  # zero length, newest
    record(osp.join(work, 'epoch_3.pth'))
    assert find_latest_checkpoint(work) == second
    assert 'epoch_3.pth (named by' in logged.take()
    record(osp.join(work, 'epoch_9.pth'))  # dangling
    os.remove(second)
    assert find_latest_checkpoint(work) == first
    out = logged.take()
    assert 'epoch_9.pth (named by' in out and 'does not exist' in out
    assert 'epoch_3.pth is empty (0 bytes)' in out
    os.remove(first)
    assert find_latest_checkpoint(work) is None
    assert 'training starts from scratch' in logged.take()
    record('s3://bucket/epoch_1.pth')  # other storage: not judged here
    assert find_latest_checkpoint(work) == 's3://bucket/epoch_1.pth'


def test_a_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import save_checkpoint
    path = str(tmp_path / 'epoch_1.pth')
    save_checkpoint({'meta': {'epoch': 1}}, path)

    def broken(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError('No space left on device')

    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(OSError, match='No space'):
        save_checkpoint({'meta': {'epoch': 2}}, path)
    monkeypatch.undo()
    assert _complete(path) == 1
    assert os.listdir(tmp_path) == ['epoch_1.pth']


# ------------------------------------------------- forged numpy arrays
FORGE = textwrap.dedent('''
    """Checkpoints whose numpy arrays a file forges (run as a script)."""
    import copyreg
    import sys

    import numpy as np
    import torch
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar


    class Forged:
        """Pickles as the reduce tuple it is given."""

        def __init__(self, *reduce):
            self.reduce = reduce

        def __reduce__(self):
            return self.reduce


    class ForgedNew(Forged):
        __class__ = property(lambda self: np.ndarray)  # for NEWOBJ


    OBJECT = 63 & ~0x02  # object dtype flags, raw bytes instead of a list


    def dtype(spec='f8', flags=OBJECT, copy=True):
        return Forged(np.dtype, (spec, False, copy),
                      (3, '<', None, None, None, -1, -1, flags))


    def array(dtype, raw=b'A' * 8):
        return Forged(_reconstruct, (np.ndarray, (0, ), b'b'),
                      (1, (len(raw) // 8, ), dtype, False, raw))


    VARIANTS = dict(
        object_flags=lambda: array(dtype()),
        object_dtype=lambda: array(Forged(np.dtype, ('O8', False, True))),
        shared_float64=lambda: [array(dtype(copy=False)), np.arange(3.)],
        newobj=lambda: ForgedNew(copyreg.__newobj__, (np.ndarray, (1, ),
                                 'f8'), (1, (1, ), dtype(), False, b'A' * 8)),
        scalar=lambda: Forged(scalar, (dtype(), b'A' * 8)),
        structured=lambda: array(Forged(np.dtype, ('V8', False, True))),
    )


    def forge(ckpt, path, variant='object_flags'):
        """``ckpt`` with the forged array in its first HistoryBuffer."""
        buffers = ckpt['message_hub']['log_scalars']
        buffers[next(iter(buffers))]._log_history = VARIANTS[variant]()
        torch.save(ckpt, path)


    if __name__ == '__main__':
        import kcd_mm.compat  # noqa: F401
        ckpt = torch.load(sys.argv[1], weights_only=True)
        for variant in VARIANTS:
            path = f'{sys.argv[2]}/{variant}.pth'
            forge(ckpt, path, variant)
            try:
                torch.load(path, weights_only=True)
                print(variant, 'LOADED', flush=True)
            except Exception as e:
                message = str(e).split('WeightsUnpickler error: ')[-1]
                print(variant, 'refused:', message.strip().splitlines()[0],
                      flush=True)
        print('float64 flags', np.dtype('f8').flags)
''')


@pytest.fixture(scope='module')
def real_checkpoint(data_root, tmp_path_factory):
    """A 1-epoch run's checkpoint, its config, and the forging script."""
    root = tmp_path_factory.mktemp('forged')
    cfg = _config(data_root, max_epochs=1)
    _train_here(cfg, str(root / 'work'))
    script = root / 'forge_numpy.py'
    script.write_text(FORGE)
    return str(root / 'work' / 'epoch_1.pth'), cfg, str(script)


def test_forged_object_array_is_refused_by_resume(real_checkpoint, tmp_path):
    ckpt_path, cfg, script = real_checkpoint
    sys.path.insert(0, osp.dirname(script))
    try:
        import forge_numpy
    finally:
        sys.path.remove(osp.dirname(script))
    forged = str(tmp_path / 'forged.pth')
    forge_numpy.forge(torch.load(ckpt_path, weights_only=True), forged)
    path = write_config(dict(cfg, train_cfg=dict(cfg['train_cfg'],
                                                 max_epochs=2)),
                        str(tmp_path / 'kcd.py'))
    proc = run_tool(['tools/train.py', path, '--work-dir',
                     str(tmp_path / 'work'), '--resume', forged],
                    check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-3000:])
    assert 'Weights only load failed' in proc.stdout
    assert ("kcd_mm: refusing the pickled state (3, '<', None, None, None, "
            "-1, -1, 61) of numpy dtype '<f8'") in proc.stdout
    assert not osp.exists(str(tmp_path / 'work' / 'epoch_2.pth'))


def test_every_forged_numpy_variant_is_refused(real_checkpoint, tmp_path):
    ckpt_path, _, script = real_checkpoint
    proc = subprocess.run(
        [sys.executable, script, ckpt_path, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=120,
        cwd=TESTS_DIR)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-3000:])
    lines = dict(line.split(' ', 1) for line in proc.stdout.splitlines()
                 if line.strip())
    for variant in ('object_flags', 'object_dtype', 'shared_float64',
                    'newobj', 'scalar', 'structured'):
        assert lines[variant].startswith('refused: kcd_mm: '), lines
    assert "numpy dtype 'O8'" in lines['object_dtype']
    assert "numpy dtype 'V8'" in lines['structured']
    assert lines['float64'] == 'flags 0'  # numpy's own float64 as it was


def test_real_checkpoint_resumes_with_plain_numpy(real_checkpoint, tmp_path):
    ckpt_path, cfg, _ = real_checkpoint
    ckpt = torch.load(ckpt_path, weights_only=True)
    for buffer in ckpt['message_hub']['log_scalars'].values():
        for array in buffer.data:
            assert type(array) is np.ndarray and array.dtype.kind in 'if'
    assert type(ckpt['message_hub']['runtime_info']['eta']) is np.float64

    cfg = dict(cfg, resume=True, load_from=ckpt_path,
               train_cfg=dict(cfg['train_cfg'], max_epochs=2))
    runner = _train_here(cfg, str(tmp_path / 'work'))
    assert runner.epoch == 2
    assert _complete(str(tmp_path / 'work' / 'epoch_2.pth')) == 2
