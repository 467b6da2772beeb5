"""tools/train.py, tools/test.py and tools/dist_train.sh, run for real.

One tiny logits-KD run (MMRazor ``SingleTeacherDistill``, 64 16-px images,
2 classes) is trained once per module; resume, test and the plain-config
test start from its checkpoint. The 2-process run goes through torchrun on
the CPU (gloo). The tools' helpers (tools/tool_utils.py), the shims that
let mmengine's own launcher and DDP wrapping run without CUDA, and the
checkpoint-loading shim get quick unit tests of their own.
"""
import argparse
import datetime
import glob
import os
import os.path as osp
import pickle
import re
import shutil
import sys

import pytest
import torch
from mmengine.config import Config

from kcd_mm.testing import (make_image_folder, tiny_classifier_config,
                            tiny_kd_config, write_config)
from helpers import REPO_ROOT, free_port, read_log, run_tool

# tools/train.py imports tools/tool_utils.py as a sibling; appended, so that
# tools/test.py cannot shadow the standard library's ``test`` package.
sys.path.append(osp.join(REPO_ROOT, 'tools'))
import tool_utils  # noqa: E402

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
    assert len(glob.glob(osp.join(work_dir, '*', '*.log'))) == 1
    log = read_log(work_dir)
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
        # kcd_mm.compat's shim let mmengine's own launcher start gloo.
        assert (f'rank {rank}/2 joined a gloo process group (pytorch '
                f'launcher, LOCAL_RANK={rank})') in out
    assert 'Distributed training: True' in out
    # Each rank trains on half of the data.
    per_rank = NUM_IMAGES // BATCH // 2
    assert f'Epoch(train) [1][{per_rank}/{per_rank}]' in out
    assert 'CPU run: 1 torch thread(s) (OMP_NUM_THREADS)' in out
    assert re.search(r'Epoch\(val\).*teacher\.accuracy/top1', out)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


# ---------------------------------------------------------------- helpers


def test_both_local_rank_spellings():
    for flag in ('--local_rank', '--local-rank'):
        parser = argparse.ArgumentParser()
        tool_utils.add_launcher_args(parser)
        args = parser.parse_args([f'{flag}=3', '--launcher', 'pytorch'])
        assert args.local_rank == 3 and args.launcher == 'pytorch'


def test_cpu_threads_honour_the_env_then_the_idle_cores():
    assert tool_utils.cpu_threads({'OMP_NUM_THREADS': '3'}, 16, 9.0) == (
        3, 'OMP_NUM_THREADS')
    assert tool_utils.cpu_threads({}, 2, 0.1)[0] == 2  # alone: both cores
    assert tool_utils.cpu_threads({}, 2, 1.2)[0] == 1  # beside one job
    assert tool_utils.cpu_threads({}, 2, 7.0)[0] == 1  # never below 1
    threads, why = tool_utils.cpu_threads({}, 16, 0.0, local_procs=4)
    assert threads == 4 and 'set OMP_NUM_THREADS' in why


def test_default_work_dir():
    cfg = Config(dict(a=1))
    assert tool_utils.resolve_work_dir(
        cfg, 'configs/kd/x_y.py') == osp.join('./work_dirs', 'x_y')
    cfg = Config(dict(work_dir='/from/config'))
    assert tool_utils.resolve_work_dir(cfg, 'c.py') == '/from/config'
    assert tool_utils.resolve_work_dir(cfg, 'c.py', '/cli') == '/cli'


DIST_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')
needs_no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the shim leaves mmengine's CUDA launch alone")


def _init_dist(monkeypatch, launcher, env, path, **dist_cfg):
    """``mmengine.dist.init_dist(launcher, **dist_cfg)`` (the Runner's call)
    under the launcher variables ``env`` and ``PATH=path``, with
    ``torch.distributed.init_process_group`` captured instead of run.

    Returns:
        tuple: The backend, the other keyword arguments, and the five
        torch.distributed variables as the call saw them.
    """
    from mmengine.dist import utils as dist_utils
    launcher_vars = [k for k in os.environ if k.startswith(('SLURM_',
                                                           'OMPI_'))]
    for key in DIST_VARS + tuple(launcher_vars):
        # setenv first, so that the teardown removes what mmengine sets.
        monkeypatch.setenv(key, 'unset')
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv('PATH', path)
    calls = []

    def init_process_group(backend=None, **kwargs):
        calls.append(
            (backend, kwargs, {k: os.environ.get(k) for k in DIST_VARS}))

    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        init_process_group)
    # init_dist would otherwise switch this process to 'spawn'.
    monkeypatch.setattr(dist_utils.mp, 'set_start_method',
                        lambda *args, **kwargs: None)
    set_device = torch.cuda.set_device
    dist_utils.init_dist(launcher, **dist_cfg)
    assert torch.cuda.set_device is set_device  # restored
    assert len(calls) == 1
    return calls[0]


@needs_no_accelerator
def test_slurm_env_through_mmengine(monkeypatch, tmp_path):
    """mmengine's slurm launcher, made to run without CUDA by kcd_mm.compat:
    gloo instead of nccl, no CUDA device call, mmengine's derivation of the
    torch.distributed variables from slurm's kept."""
    system_path = os.environ['PATH']
    # Without the shim mmengine would call this, which cannot work here.
    with pytest.raises((AttributeError, RuntimeError, AssertionError)):
        torch.cuda.set_device(0)
    no_scontrol = str(tmp_path / 'empty')
    os.mkdir(no_scontrol)
    env = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1',
               SLURM_NODELIST='gpu-node[07-09,12]')
    backend, kwargs, got = _init_dist(monkeypatch, 'slurm', env, no_scontrol,
                                      timeout=60)
    assert backend == 'gloo'  # init_dist's default is nccl
    assert kwargs == dict(timeout=datetime.timedelta(seconds=60))
    # Without scontrol: the first host of the compact node list.
    assert got == dict(RANK='5', WORLD_SIZE='8', LOCAL_RANK='1',
                       MASTER_ADDR='gpu-node07', MASTER_PORT='29500')
    # A MASTER_ADDR already set wins; dist_cfg's port is used.
    _, _, got = _init_dist(monkeypatch, 'slurm',
                           dict(env, MASTER_ADDR='10.0.0.1'), no_scontrol,
                           backend='nccl', port=1234)
    assert got['MASTER_ADDR'] == '10.0.0.1' and got['MASTER_PORT'] == '1234'
    for node_list, host in (('a1,b[2-3]', 'a1'), ('n[1,4],m5', 'n1'),
                            ('node[03-05,9]', 'node03')):
        _, _, got = _init_dist(monkeypatch, 'slurm',
                               dict(env, SLURM_NODELIST=node_list),
                               no_scontrol)
        assert got['MASTER_ADDR'] == host, node_list
    # No SLURM_LOCALID: PROCID modulo the tasks per node (CUDA's device
    # count, mmengine's divisor, is 0 here).
    no_local = {k: v for k, v in env.items() if k != 'SLURM_LOCALID'}
    _, _, got = _init_dist(monkeypatch, 'slurm',
                           dict(no_local, SLURM_NTASKS_PER_NODE='4(x2)'),
                           no_scontrol)
    assert got['LOCAL_RANK'] == '1'
    # Where scontrol exists, mmengine asks it, as on a real cluster.
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    scontrol = fake_bin / 'scontrol'
    scontrol.write_text('#!/bin/sh\necho from-scontrol1\necho '
                        'from-scontrol2\n')
    scontrol.chmod(0o755)
    _, _, got = _init_dist(monkeypatch, 'slurm', env,
                           str(fake_bin) + os.pathsep + system_path)
    assert got['MASTER_ADDR'] == 'from-scontrol1'


@needs_no_accelerator
def test_pytorch_and_mpi_env_through_mmengine(monkeypatch, tmp_path):
    path = str(tmp_path)
    env = dict(RANK='3', WORLD_SIZE='4', LOCAL_RANK='1',
               MASTER_ADDR='10.0.0.2', MASTER_PORT='2345')
    backend, kwargs, got = _init_dist(monkeypatch, 'pytorch', env, path)
    assert backend == 'gloo' and kwargs == {} and got == env
    env = dict(OMPI_COMM_WORLD_RANK='6', OMPI_COMM_WORLD_SIZE='8',
               OMPI_COMM_WORLD_LOCAL_RANK='2', MASTER_ADDR='10.0.0.3')
    backend, _, got = _init_dist(monkeypatch, 'mpi', env, path,
                                 backend='gloo')
    assert backend == 'gloo'
    assert got == dict(RANK='6', WORLD_SIZE='8', LOCAL_RANK='2',
                       MASTER_ADDR='10.0.0.3', MASTER_PORT='29500')


@needs_no_accelerator
def test_cpu_ddp_wrappers_get_no_device_ids(monkeypatch):
    """mmengine's Runner.wrap_model passes device_ids=[LOCAL_RANK], with or
    without a model_wrapper_cfg; kcd_mm.compat drops it for a CPU module, so
    DDP accepts the module. Runs in a real 1-rank gloo group."""
    import types

    from mmengine.model import MMDistributedDataParallel
    from mmengine.runner import Runner
    from torch.nn.parallel import DistributedDataParallel

    monkeypatch.setenv('LOCAL_RANK', '0')
    torch.distributed.init_process_group(
        'gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
        world_size=1)
    try:

        def wrap(cfg, model_wrapper_cfg):
            runner = types.SimpleNamespace(distributed=True,
                                           cfg=Config(cfg), logger=None)
            return Runner.wrap_model(runner, model_wrapper_cfg,
                                     torch.nn.Linear(4, 2))

        wrapped = wrap(dict(find_unused_parameters=True), None)
        assert type(wrapped) is MMDistributedDataParallel
        assert wrapped.device_ids is None
        assert wrapped.find_unused_parameters is True
        assert wrapped.broadcast_buffers is False
        wrapped = wrap({}, dict(type='MMDistributedDataParallel',
                                find_unused_parameters=True))
        assert type(wrapped) is MMDistributedDataParallel
        assert wrapped.device_ids is None
        assert wrapped.find_unused_parameters is True
        wrapped = wrap({}, dict(type='DistributedDataParallel'))
        assert type(wrapped) is DistributedDataParallel
        assert wrapped.device_ids is None
        # Positional device ids and an output device, straight to torch.
        wrapped = DistributedDataParallel(torch.nn.Linear(4, 2), [0], 0)
        assert wrapped.device_ids is None and wrapped.output_device is None
        del wrapped
    finally:
        tool_utils.destroy_process_group()
    assert not torch.distributed.is_initialized()


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
