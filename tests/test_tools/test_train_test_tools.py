"""tools/train.py, tools/test.py and tools/dist_train.sh, run for real.

One tiny logits-KD run (MMRazor ``SingleTeacherDistill``, 64 16-px images,
2 classes) is trained once per module; resume, test and the plain-config
test start from its checkpoint. The 2-process run goes through torchrun on
the CPU (gloo). The tools' helpers (tools/tool_utils.py), the shims that
let mmengine's own launcher and DDP wrapping run without CUDA, and the
checkpoint-loading shim get quick unit tests of their own.
"""
import argparse
import glob
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
from helpers import REPO_ROOT, free_port, load_checkpoint, read_log, run_tool

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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.multiprocess
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


@pytest.mark.slow
def test_test_tool_on_kd_checkpoint(kd_test):
    out, preds = kd_test
    acc = _accuracy(out)
    assert 0.0 <= acc <= 100.0
    # The checkpoint was loaded, not a fresh model.
    assert 'Load checkpoint from' in out
    with open(preds, 'rb') as f:
        assert len(pickle.load(f)) == NUM_IMAGES


@pytest.mark.slow
@pytest.mark.multiprocess
def test_test_tool_on_plain_classifier(trained, kd_test, data_root,
                                       tmp_path):
    """The student, cut out of the KD checkpoint, scores the same accuracy
    through a plain mmpretrain config as through the KD config."""
    work_dir, _ = trained
    ckpt = load_checkpoint(osp.join(work_dir, 'epoch_1.pth'))
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


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dist_train_two_cpu_ranks(kd_config, tmp_path):
    work_dir = str(tmp_path / 'dist')
    out = run_tool(['tools/dist_train.sh', kd_config, '2', '--work-dir',
                    work_dir],
                   # unset, so that the launcher's own default is checked
                   env=dict(PORT=str(free_port()),
                            OMP_NUM_THREADS=None)).stdout
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
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        assert cfg.optim_wrapper.type == 'mmrazor.CPUBF16AmpOptimWrapper'
        assert cfg.optim_wrapper.dtype == 'bfloat16'
        # The CPU bf16 wrapper builds from the config and autocasts.
        from mmengine.registry import OPTIM_WRAPPERS
        model = torch.nn.Linear(4, 2)
        wrapper = OPTIM_WRAPPERS.build(dict(
            cfg.optim_wrapper,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
        with wrapper.optim_context(model):
            y = model(torch.randn(3, 4))
        assert y.dtype == torch.bfloat16
        wrapper.update_params(y.float().sum())
        # mmengine's own AmpOptimWrapper is as mmengine made it.
        from mmengine.optim import AmpOptimWrapper
        with pytest.raises(AssertionError, match='only available'):
            AmpOptimWrapper(dtype='bfloat16', optimizer=torch.optim.SGD(
                model.parameters(), lr=0.1))
