"""tools/train.py, tools/test.py and tools/dist_train.sh, run for real.

One tiny logits-KD run (MMRazor ``SingleTeacherDistill``, 64 16-px images,
2 classes) is trained once per module; resume, test and the plain-config
test start from its checkpoint. The 2-process run goes through torchrun on
the CPU (gloo). The launch helpers and the checkpoint-loading shim get
quick unit tests of their own.
"""
import argparse
import glob
import os.path as osp
import pickle
import re
import shutil

import pytest
import torch
from helpers import (free_port, make_image_folder, run_tool,
                     tiny_classifier_config, tiny_kd_config, write_config)
from mmengine.config import Config

from kcd_mm import launch

NUM_IMAGES = 64
BATCH = 16


def _accuracy(out: str, prefix: str = 'Epoch(test)') -> float:
    """The last ``accuracy/top1`` printed on a line starting with prefix."""
    found = re.findall(
        re.escape(prefix) + r'.*?\saccuracy/top1: ([0-9.]+)', out)
    assert found, f'no {prefix} accuracy in the output:\n{out[-3000:]}'
    return float(found[-1])


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('tools_data') / 'images'
    return make_image_folder(str(root), num_images=NUM_IMAGES, num_classes=2,
                             size=16)


@pytest.fixture(scope='module')
def kd_config(data_root, tmp_path_factory):
    cfg = tiny_kd_config(data_root, max_epochs=1, batch_size=BATCH)
    path = tmp_path_factory.mktemp('tools_cfg') / 'tiny_kd.py'
    return write_config(cfg, str(path))


@pytest.fixture(scope='module')
def trained(kd_config, tmp_path_factory):
    """One epoch of KD through tools/train.py: (work_dir, stdout)."""
    work_dir = str(tmp_path_factory.mktemp('tools_train') / 'work')
    out = run_tool(['tools/train.py', kd_config, '--work-dir',
                    work_dir]).stdout
    return work_dir, out


def test_train_end_to_end(trained):
    work_dir, out = trained
    ckpt = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(ckpt)
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip() == ckpt
    logs = glob.glob(osp.join(work_dir, '*', '*.log'))
    assert len(logs) == 1
    with open(logs[0]) as f:
        log = f.read()
    assert f'Epoch(train) [1][{NUM_IMAGES // BATCH}/{NUM_IMAGES // BATCH}]' \
        in log
    assert 'distill.loss_kl' in log
    # mmrazor.SingleTeacherDistillValLoop validated student and teacher.
    assert re.search(r'Epoch\(val\).*accuracy/top1: [0-9.]+.*'
                     r'teacher\.accuracy/top1: [0-9.]+', log)
    assert 'Distributed training: False' in out
    assert osp.isfile(osp.join(work_dir, 'tiny_kd.py'))  # config dumped


def test_resume_continues_from_checkpoint(trained, tmp_path):
    """Bare ``--resume`` picks the work dir's latest checkpoint."""
    work_dir, _ = trained
    resumed_dir = str(tmp_path / 'resumed')
    shutil.copytree(work_dir, resumed_dir)
    out = run_tool([
        'tools/train.py', osp.join(work_dir, 'tiny_kd.py'), '--work-dir',
        resumed_dir, '--resume', '--cfg-options', 'train_cfg.max_epochs=2'
    ]).stdout
    assert 'resumed epoch: 1, iter: 4' in out
    assert 'Epoch(train) [1]' not in out
    assert 'Epoch(train) [2]' in out
    assert osp.isfile(osp.join(resumed_dir, 'epoch_2.pth'))


@pytest.fixture(scope='module')
def kd_test(trained, tmp_path_factory):
    """tools/test.py on the KD checkpoint with --out: (stdout, preds)."""
    work_dir, _ = trained
    tmp = tmp_path_factory.mktemp('tools_test')
    preds = str(tmp / 'preds.pkl')
    out = run_tool([
        'tools/test.py', osp.join(work_dir, 'tiny_kd.py'),
        osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
        str(tmp / 'test'), '--out', preds
    ]).stdout
    return out, preds


def test_test_tool_on_kd_checkpoint(kd_test):
    out, preds = kd_test
    acc = _accuracy(out)
    assert 0.0 <= acc <= 100.0
    # The checkpoint was loaded, not a fresh model.
    assert 'Load checkpoint from' in out
    with open(preds, 'rb') as f:
        assert len(pickle.load(f)) == NUM_IMAGES


def test_test_tool_on_plain_classifier(trained, kd_test, data_root,
                                       tmp_path):
    """The student, cut out of the KD checkpoint, scores the same accuracy
    through a plain mmpretrain config as through the KD config."""
    work_dir, _ = trained
    ckpt = torch.load(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu')
    prefix = 'architecture.'
    student = {
        k[len(prefix):]: v
        for k, v in ckpt['state_dict'].items() if k.startswith(prefix)
    }
    student_ckpt = str(tmp_path / 'student.pth')
    torch.save(dict(state_dict=student), student_ckpt)
    plain_cfg = write_config(
        tiny_classifier_config(data_root, batch_size=BATCH),
        str(tmp_path / 'plain.py'))
    plain = run_tool(['tools/test.py', plain_cfg, student_ckpt,
                      '--work-dir', str(tmp_path / 'plain')]).stdout
    assert _accuracy(plain) == _accuracy(kd_test[0])


def test_dist_train_two_cpu_ranks(kd_config, tmp_path):
    work_dir = str(tmp_path / 'dist')
    out = run_tool(['tools/dist_train.sh', kd_config, '2', '--work-dir',
                    work_dir],
                   env=dict(PORT=str(free_port()))).stdout
    for rank in (0, 1):
        assert f'rank {rank}/2 joined a gloo process group' in out
    assert 'Distributed training: True' in out
    # Each rank trains on half of the data.
    per_rank = NUM_IMAGES // BATCH // 2
    assert f'Epoch(train) [1][{per_rank}/{per_rank}]' in out
    assert re.search(r'Epoch\(val\).*teacher\.accuracy/top1', out)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


# ---------------------------------------------------------------- helpers


def test_both_local_rank_spellings():
    for flag in ('--local_rank', '--local-rank'):
        parser = argparse.ArgumentParser()
        launch.add_launcher_args(parser)
        args = parser.parse_args([f'{flag}=3', '--launcher', 'pytorch'])
        assert args.local_rank == 3 and args.launcher == 'pytorch'


def test_default_work_dir():
    cfg = Config(dict(a=1))
    assert launch.resolve_work_dir(cfg, 'configs/kd/x_y.py') == osp.join(
        './work_dirs', 'x_y')
    cfg = Config(dict(work_dir='/from/config'))
    assert launch.resolve_work_dir(cfg, 'c.py') == '/from/config'
    assert launch.resolve_work_dir(cfg, 'c.py', '/cli') == '/cli'


def test_slurm_env_like_mmengine():
    env = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1',
               SLURM_NODELIST='gpu-node[07-09,12]')
    got = launch.slurm_dist_env(env)
    assert got == dict(RANK='5', WORLD_SIZE='8', LOCAL_RANK='1',
                       MASTER_ADDR='gpu-node07', MASTER_PORT='29500')
    got = launch.slurm_dist_env(dict(env, MASTER_ADDR='10.0.0.1'), port=1234)
    assert got['MASTER_ADDR'] == '10.0.0.1' and got['MASTER_PORT'] == '1234'
    assert launch.first_slurm_host('a1,b[2-3]') == 'a1'
    assert launch.first_slurm_host('n[1,4],m5') == 'n1'


def test_cpu_wrapper_has_no_device_ids():
    cfg = Config(dict(find_unused_parameters=True))
    wrapper = launch.cpu_model_wrapper_cfg(cfg)
    assert wrapper['type'] == 'MMDistributedDataParallel'
    assert wrapper['device_ids'] is None  # overrides the Runner's default
    assert wrapper['find_unused_parameters'] is True
    assert wrapper['broadcast_buffers'] is False
    own = Config(dict(model_wrapper_cfg=dict(
        type='MMDistributedDataParallel', find_unused_parameters=True)))
    assert launch.cpu_model_wrapper_cfg(own)['device_ids'] is None


def test_checkpoint_getattr_is_restricted():
    """kcd_mm.compat lets checkpoints rebuild HistoryBuffer's statistics
    methods, and nothing else, through ``builtins.getattr``."""
    import io

    from mmengine.logging.history_buffer import HistoryBuffer

    buf = HistoryBuffer()
    buf.update(1.0)
    data = io.BytesIO()
    torch.save(dict(buf=buf), data)
    data.seek(0)
    loaded = torch.load(data)['buf']
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
            torch.load(data)


def _train_tool():
    import importlib.util
    from helpers import repo_root
    spec = importlib.util.spec_from_file_location(
        'kcd_tools_train', osp.join(repo_root(), 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_resume_and_amp_options(tmp_path):
    train = _train_tool()
    args = train.parse_args(['c.py', '--resume'])
    assert args.resume == 'auto'
    assert train.parse_args(['c.py', '--resume', 'x.pth']).resume == 'x.pth'
    assert train.parse_args(['c.py']).resume is None

    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))
    train.set_resume(cfg, 'x.pth')
    assert cfg.resume is True and cfg.load_from == 'x.pth'
    cfg = Config(dict(work_dir=str(tmp_path), load_from='init.pth'))
    train.set_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None

    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))))
    train.enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    if not torch.cuda.is_available():
        assert cfg.optim_wrapper.dtype == 'bfloat16'
        # The CPU bf16 wrapper builds and autocasts (kcd_mm.compat).
        from mmengine.optim import AmpOptimWrapper
        model = torch.nn.Linear(4, 2)
        wrapper = AmpOptimWrapper(
            dtype='bfloat16',
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        with wrapper.optim_context(model):
            y = model(torch.randn(3, 4))
        assert y.dtype == torch.bfloat16
        wrapper.update_params(y.float().sum())
