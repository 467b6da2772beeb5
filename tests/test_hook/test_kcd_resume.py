"""Kill a KCD run mid-stage and resume it: nothing lost, nothing changed."""
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.dataset import worker_init_fn

from kcd_mm import EpochSeedingHook
from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
from helpers import (load_checkpoint, probe_env, repo_root, run_tool,
                     stage_records)


def _final(work_dir, epochs):
    ckpt = load_checkpoint(osp.join(work_dir, f'epoch_{epochs}.pth'))
    return ckpt['state_dict'], ckpt['kcd_state']


def _kill_resume_compare(tmp_path, cfg, kill_epoch, resumed_stage):
    """Run ``cfg`` whole; run it again, SIGKILLed in epoch ``kill_epoch``
    (batch 2), then ``--resume``d: both must end bit-equal."""
    epochs = cfg['train_cfg']['max_epochs']
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    whole, broken = str(tmp_path / 'whole'), str(tmp_path / 'broken')
    run_tool(['tools/train.py', path, '--work-dir', whole])

    # Same run, SIGKILLed mid-epoch ...
    marker = str(tmp_path / f'in_epoch_{kill_epoch}')
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(
        dict(type='mmrazor.PauseHook', epoch=kill_epoch, batch_idx=2,
             marker=marker))
    paused = write_config(cfg, str(tmp_path / 'kcd_paused.py'))
    proc = subprocess.Popen(
        [sys.executable, 'tools/train.py', paused, '--work-dir', broken],
        cwd=repo_root(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env=dict(os.environ, **probe_env(OMP_NUM_THREADS='1')))
    deadline = time.time() + 120
    while not osp.exists(marker):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not osp.exists(osp.join(broken, f'epoch_{epochs}.pth'))
    # ... then resumed from its last checkpoint, as a user would.
    out = run_tool(['tools/train.py', path, '--work-dir', broken,
                    '--resume']).stdout
    assert f'KCD resumed at stage {resumed_stage}' in out

    differ = []  # everything that differs, for one telling failure
    if stage_records(broken, timings=False) != stage_records(
            whole, timings=False):
        differ.append('stage records')
    weights_a, kcd_a = _final(whole, epochs)
    weights_b, kcd_b = _final(broken, epochs)
    if not torch.equal(kcd_a['kept'], kcd_b['kept']):
        differ.append('kept set')
    differ += [f'pairs.{key}' for key in ('tail', 'lost', 'lam')
               if not torch.equal(kcd_a['pairs'][key], kcd_b['pairs'][key])]
    if not torch.equal(kcd_a['bank']['value_sum'],
                       kcd_b['bank']['value_sum']):
        differ.append('bank values')
    if kcd_a['sample_iters'] != kcd_b['sample_iters']:
        differ.append('sample_iters')
    tensors = [name for name, tensor in weights_a.items()
               if not torch.equal(tensor, weights_b[name])]
    if tensors:
        differ.append(f'{len(tensors)}/{len(weights_a)} weight tensors')
    assert not differ, f'resumed != uninterrupted: {differ}'


@pytest.mark.slow
def test_killed_mid_stage_then_resumed_equals_uninterrupted(tmp_path):
    data = make_image_folder(str(tmp_path / 'data'), 60, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=6, stage_epochs=2, theta=0.5)
    cfg['randomness'] = dict(seed=7, deterministic=True)
    # SIGKILLed in epoch 4, the middle of stage 2.
    _kill_resume_compare(tmp_path, cfg, kill_epoch=4, resumed_stage=1)


@pytest.mark.slow
def test_killed_then_resumed_with_persistent_workers_equals_uninterrupted(
        tmp_path):
    """Two persistent dataloader workers drawing random flips and padded
    crops: the resumed run's fresh workers must draw in epoch 2 what the
    uninterrupted run's workers, alive since epoch 1, drew there."""
    data = make_image_folder(str(tmp_path / 'data'), 32, 3, 8)
    cfg = tiny_kcd_config(data, max_epochs=2, stage_epochs=1, theta=0.5)
    cfg['randomness'] = dict(seed=7, deterministic=True)
    loader = cfg['train_dataloader']
    loader.update(num_workers=2, persistent_workers=True)
    pipeline = loader['dataset']['dataset']['pipeline']
    assert pipeline[1]['type'] == 'RandomFlip'
    pipeline.insert(2, dict(type='RandomCrop', crop_size=8, padding=2))
    _kill_resume_compare(tmp_path, cfg, kill_epoch=2, resumed_stage=1)


class _Draws(torch.utils.data.Dataset):
    """Each item: the worker that loaded it and numpy, python and torch
    draws there, as an augmentation would make them."""

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        worker = torch.utils.data.get_worker_info().id
        return (worker, int(np.random.randint(2**31)),
                random.getrandbits(31), int(torch.randint(2**31, ())))


def _draws_per_epoch(loader, epochs):
    """What ``loader``'s workers drew in each epoch, EpochSeedingHook
    running as in a Runner (before each epoch's ``iter(loader)``)."""
    runner = SimpleNamespace(seed=7, epoch=0, train_dataloader=loader)
    hook, out = EpochSeedingHook(), {}
    for epoch in epochs:
        if epoch is not None:  # None: another pass, no hook call
            runner.epoch = epoch
            hook.before_train_epoch(runner)
        out[epoch] = [tuple(int(v) for v in item)
                      for batch in loader for item in zip(*batch)]
    return out


@pytest.mark.parametrize('persistent', [True, False],
                         ids=['persistent', 'not_persistent'])
def test_workers_draw_what_seed_and_epoch_say(persistent):
    """A loader started at epoch 2 (a resume) draws what one running since
    epoch 0 draws there; no two (epoch, worker) streams are alike."""

    def loader():  # as mmengine's Runner builds it for a seeded run
        init_fn = partial(worker_init_fn, num_workers=2, rank=0, seed=7)
        return torch.utils.data.DataLoader(
            _Draws(), batch_size=2, num_workers=2, worker_init_fn=init_fn,
            persistent_workers=persistent)

    whole = _draws_per_epoch(loader(), [0, 1, 2])
    resumed = _draws_per_epoch(loader(), [2])
    assert resumed[2] == whole[2]
    workers = {w for items in whole.values() for w, *_ in items}
    assert workers == {0, 1}
    draws = [d for items in whole.values() for _, *ds in items for d in ds]
    assert len(set(draws)) == len(draws)
    if persistent:  # a second pass in one epoch (an iteration-based loop)
        again = _draws_per_epoch(loader(), [2, None])
        assert again[2] == whole[2] and again[None] != whole[2]
