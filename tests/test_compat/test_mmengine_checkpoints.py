"""mmengine checkpoints in KCD runs: a kill loses nothing, a damaged
``last_checkpoint`` is skipped; runs without KCD keep mmengine's policy.

* A run SIGKILLed halfway through writing a checkpoint (``max_keep_ckpts=1``,
  as the teacher and student configs) keeps its previous checkpoint and
  ``last_checkpoint``; ``--resume`` finishes it with the records an
  uninterrupted run writes.
* A truncated newest checkpoint and an empty ``last_checkpoint``: ``--resume``
  takes the newest complete checkpoint and names the damaged files.
* Without ``last_checkpoint`` nothing is resumed, as in mmengine.
"""
import os
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner

from kcd_mm.compat.mmengine_checkpoints import (AtomicCheckpointHook,
                                                latest_checkpoint)
from kcd_mm.records import check_consistency, read_records, read_snapshots
from kcd_mm.testing import (make_image_folder, tiny_kcd_config, tiny_kd_config,
                            write_config)
import helpers
from helpers import load_checkpoint, run_tool, stage_records, train_here


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
    return load_checkpoint(path)['meta']['epoch']


def _recorded(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


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
def _killed_while_saving(cfg, tmp_path, **kill):
    """Train ``cfg`` through tools/train.py, SIGKILLed halfway through a
    checkpoint write (CheckpointKillHook(**kill)); returns the config's
    path (without the kill) and the work dir."""
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    work = str(tmp_path / 'work')
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(dict(type='mmrazor.CheckpointKillHook',
                                    **kill))
    killed = write_config(cfg, str(tmp_path / 'kcd_killed.py'))
    proc = run_tool(['tools/train.py', killed, '--work-dir', work],
                    env=helpers.probe_env(), check=False)
    assert proc.returncode == -9, proc.stdout[-3000:]
    return path, work


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_while_writing_a_checkpoint_then_resumed(data_root, tmp_path):
    cfg = _config(data_root, max_epochs=3, keep=1)
    path, work = _killed_while_saving(cfg, tmp_path, epoch=2)

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


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_while_saving_again_after_a_new_best(data_root, tmp_path):
    """With ``save_best`` a new best checkpoint makes mmengine save the
    epoch's checkpoint a second time, the file ``last_checkpoint`` names:
    a kill there must leave the first, complete one."""
    cfg = _config(data_root, max_epochs=2, keep=1)
    cfg['default_hooks']['checkpoint'].update(save_best='accuracy/top1',
                                              rule='greater')
    cfg['train_cfg']['val_interval'] = 1  # the first validation: a best
    path, work = _killed_while_saving(cfg, tmp_path, epoch=1, skip=2)
    assert _recorded(work) == osp.join(work, 'epoch_1.pth')
    assert _complete(osp.join(work, 'epoch_1.pth')) == 1
    assert osp.getsize(osp.join(work, 'epoch_1.pth.tmp')) > 0
    best = [n for n in os.listdir(work) if n.startswith('best_')]
    assert best and not any(n.endswith('.tmp') for n in best)
    _train_tool_here([path, '--work-dir', work, '--resume'])
    assert _complete(osp.join(work, 'epoch_2.pth')) == 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_skips_a_truncated_checkpoint_and_empty_last_checkpoint(
        data_root, tmp_path):
    cfg = _config(data_root, max_epochs=2)
    work = str(tmp_path / 'work')
    train_here(cfg, work)
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


def test_latest_checkpoint_takes_the_highest_complete_step(tmp_path):
    work = str(tmp_path)
    first = _save({'meta': {'epoch': 1}}, osp.join(work, 'epoch_1.pth'))
    second = _save({'meta': {'epoch': 2}}, osp.join(work, 'epoch_2.pth'))
    last = osp.join(work, 'last_checkpoint')

    def record(text):
        with open(last, 'w') as f:
            f.write(text)

    # No last_checkpoint (a user who deleted it to start afresh): nothing
    # is resumed, as in mmengine, whatever checkpoints lie there.
    assert latest_checkpoint(work) == (None, None)
    record(second)  # healthy: what last_checkpoint names, as mmengine
    assert latest_checkpoint(work) == (second, None)
    open(osp.join(work, 'epoch_3.pth'), 'w').close()  # zero length, newest
    record(osp.join(work, 'epoch_3.pth'))
    chosen, warning = latest_checkpoint(work)
    assert chosen == second and 'epoch_3.pth (named by' in warning
    record(osp.join(work, 'epoch_9.pth'))  # dangling
    os.remove(second)
    chosen, warning = latest_checkpoint(work)
    assert chosen == first
    assert 'epoch_9.pth (named by' in warning and 'does not exist' in warning
    assert 'epoch_3.pth is empty (0 bytes)' in warning
    record('')  # empty: the highest complete step, not the newest file
    _save({'meta': {'epoch': 10}}, osp.join(work, 'epoch_10.pth'))
    os.utime(first)  # epoch_1.pth is now the newest by time
    chosen, warning = latest_checkpoint(work)
    assert chosen == osp.join(work, 'epoch_10.pth')
    assert f'{last} is empty' in warning
    os.remove(first)
    os.remove(osp.join(work, 'epoch_10.pth'))
    chosen, warning = latest_checkpoint(work)
    assert chosen is None and 'training starts from scratch' in warning
    record('s3://bucket/epoch_1.pth')  # other storage: not judged here
    assert latest_checkpoint(work) == ('s3://bucket/epoch_1.pth', None)


def _runner(cfg, work_dir):
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    return Runner.from_cfg(cfg)


@pytest.mark.slow
def test_kcd_runs_get_the_atomic_hook_and_plain_runs_keep_mmengines(
        data_root, tmp_path):
    cfg = _config(data_root, max_epochs=1)
    runner = _runner(cfg, str(tmp_path / 'kcd'))
    runner.train()
    hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
    assert [type(h) for h in hooks] == [AtomicCheckpointHook]
    assert not osp.exists(str(tmp_path / 'kcd' / 'epoch_1.pth.tmp'))
    assert _complete(str(tmp_path / 'kcd' / 'epoch_1.pth')) == 1
    plain = tiny_kd_config(data_root, num_classes=3, max_epochs=1)
    runner = _runner(plain, str(tmp_path / 'plain'))
    runner.train()
    assert [type(h) for h in runner.hooks
            if isinstance(h, CheckpointHook)] == [CheckpointHook]


@pytest.mark.slow
def test_kcd_auto_resume_skips_a_damaged_last_checkpoint(data_root,
                                                         tmp_path):
    """``resume=True`` in a KCD config (no tool): KCDHook chooses before
    mmengine does, so an empty ``last_checkpoint`` resumes the newest
    complete checkpoint instead of failing."""
    cfg = _config(data_root, max_epochs=2)
    work = str(tmp_path / 'work')
    train_here(dict(cfg, train_cfg=dict(cfg['train_cfg'], max_epochs=1)),
               work)
    open(osp.join(work, 'last_checkpoint'), 'w').close()
    runner = _runner(dict(cfg, resume=True), work)
    runner.train()
    assert runner._has_loaded and runner.epoch == 2
    assert _complete(osp.join(work, 'epoch_2.pth')) == 2
