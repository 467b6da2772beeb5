"""Weights-only loading of Runner checkpoints, and of nothing more.

numpy arrays forged to hold object pointers (or any non-numeric dtype) in a
"weights-only" checkpoint are refused with a clear error; real Runner
checkpoints still resume, with plain numpy arrays in their HistoryBuffers;
``builtins.getattr`` reaches HistoryBuffer's statistics methods only.
"""
import io
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from kcd_mm.compat.safe_loading import load
from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
from helpers import TESTS_DIR, run_tool, train_here


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('safe_loading_data')
    return make_image_folder(str(root), num_images=48, num_classes=3, size=16)


def _config(data_root, max_epochs):
    cfg = tiny_kcd_config(data_root, max_epochs=max_epochs, stage_epochs=1,
                          theta=0.5)
    cfg['randomness'] = dict(seed=7, deterministic=True)
    return cfg


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
        from kcd_mm.compat.safe_loading import load
        ckpt = load(sys.argv[1], weights_only=True)
        for variant in VARIANTS:
            path = f'{sys.argv[2]}/{variant}.pth'
            forge(ckpt, path, variant)
            try:
                load(path, weights_only=True)
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
    train_here(cfg, str(root / 'work'))
    script = root / 'forge_numpy.py'
    script.write_text(FORGE)
    return str(root / 'work' / 'epoch_1.pth'), cfg, str(script)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_forged_object_array_is_refused_by_resume(real_checkpoint, tmp_path):
    ckpt_path, cfg, script = real_checkpoint
    sys.path.insert(0, osp.dirname(script))
    try:
        import forge_numpy
    finally:
        sys.path.remove(osp.dirname(script))
    forged = str(tmp_path / 'forged.pth')
    forge_numpy.forge(load(ckpt_path, weights_only=True), forged)
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


@pytest.mark.slow
@pytest.mark.multiprocess
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


@pytest.mark.slow
def test_real_checkpoint_resumes_with_plain_numpy(real_checkpoint, tmp_path):
    ckpt_path, cfg, _ = real_checkpoint
    ckpt = load(ckpt_path, weights_only=True)
    for buffer in ckpt['message_hub']['log_scalars'].values():
        for array in buffer.data:
            assert type(array) is np.ndarray and array.dtype.kind in 'if'
    assert type(ckpt['message_hub']['runtime_info']['eta']) is np.float64

    cfg = dict(cfg, resume=True, load_from=ckpt_path,
               train_cfg=dict(cfg['train_cfg'], max_epochs=2))
    runner = train_here(cfg, str(tmp_path / 'work'))
    assert runner.epoch == 2
    assert load(str(tmp_path / 'work' / 'epoch_2.pth'))['meta']['epoch'] == 2


def test_checkpoint_getattr_is_restricted():
    """Checkpoint loads rebuild HistoryBuffer's statistics methods, and
    nothing else, through ``builtins.getattr``."""
    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(1.0)
    data = io.BytesIO()
    torch.save(dict(buf=buf), data)
    data.seek(0)
    loaded = load(data)['buf']
    assert loaded.current() == 1.0

    class Lookup:

        def __init__(self, obj, name):
            self.obj, self.name = obj, name

        def __reduce__(self):
            return (getattr, (self.obj, self.name))

    for obj, name in ((HistoryBuffer, '__init__'), (dict, 'fromkeys'),
                      (HistoryBuffer, '_set_default_statistics')):
        data = io.BytesIO()
        torch.save(dict(x=Lookup(obj, name)), data)
        data.seek(0)
        with pytest.raises(pickle.UnpicklingError):
            load(data)
