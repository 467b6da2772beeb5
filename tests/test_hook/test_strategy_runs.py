"""Real tiny runs of the comparison strategies through mmengine's Runner."""
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from kcd_mm.core.condensation import keep_schedule
from kcd_mm.records import snapshot_path
from kcd_mm.testing import make_image_folder, tiny_kcd_config
from helpers import kcd_hook, load_checkpoint, stage_records, upweighted_mask

N, EPOCHS = 60, 8
SCHEDULE = dict(max_epochs=EPOCHS, theta=0.8, num_steps=2)
# KCD's sizes (60 * 0.2 = 11.99.. in floats): 60, 55, 50, 48 x 5 = 405.
SIZES = keep_schedule(N, 0.8, 2, 1, EPOCHS)
BUDGET = sum(SIZES)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('strategy_data')
    return make_image_folder(str(root), num_images=N, num_classes=3, size=16)


def _cloned(mask):
    return None if mask is None else mask.clone()


def _logits(recorders) -> torch.Tensor:
    return recorders.get_recorder('fc').get_record_data().detach().clone()


class LossProbe(Hook):
    """After each iteration: the batch, its logits, loss and weights."""
    priority = 'LOW'  # after KCDHook

    def __init__(self):
        self.batches = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        distiller = runner.model.distiller
        state = kcd_hook(runner).state
        self.batches.append(
            dict(
                epoch=runner.epoch,
                idx=torch.tensor([
                    s.metainfo['sample_idx']
                    for s in data_batch['data_samples']
                ]),
                student=_logits(distiller.student_recorders),
                teacher=_logits(distiller.teacher_recorders),
                loss=float(outputs['distill.loss_kl']),
                upweighted=_cloned(upweighted_mask(state))))


def _run(data_root, work_dir, probe=None, resume_from=None, **kwargs):
    cfg = tiny_kcd_config(data_root, **dict(SCHEDULE, **kwargs))
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    if resume_from:
        cfg.resume, cfg.load_from = True, resume_from
    runner = Runner.from_cfg(cfg)
    if probe is not None:
        runner.register_hook(probe)
    runner.train()
    return runner


def _records(work_dir):
    return stage_records(work_dir, timings=False)


def _kept(work_dir, stage):
    return set(np.load(snapshot_path(work_dir, stage))['kept'].tolist())


def _final_state(work_dir):
    path = osp.join(work_dir, f'epoch_{EPOCHS}.pth')
    return load_checkpoint(path)['kcd_state']


@pytest.mark.slow
def test_random_keeps_kcds_sizes_other_samples_and_resumes(
        data_root, tmp_path):
    kcd_dir, rnd_dir = str(tmp_path / 'kcd'), str(tmp_path / 'random')
    _run(data_root, kcd_dir)
    _run(data_root, rnd_dir, strategy='random')
    kcd, rnd = _records(kcd_dir), _records(rnd_dir)
    assert SIZES == [60, 55, 50, 48, 48, 48, 48, 48]
    assert [r['kept'] for r in rnd] == [r['kept'] for r in kcd] == SIZES[1:]
    assert [r['sample_iters'] for r in rnd] == [r['sample_iters'] for r in kcd]
    assert all(r['blended'] == 0 for r in rnd)
    assert any(r['blended'] > 0 for r in kcd)  # the same config blends
    assert _final_state(rnd_dir)['sample_iters'] == BUDGET
    assert _kept(rnd_dir, 1) != _kept(kcd_dir, 1)
    # A fresh draw per stage: stage 2's set is no subset of stage 1's.
    assert not _kept(rnd_dir, 2) <= _kept(rnd_dir, 1)
    # Resumed from epoch 3, in another work dir: the same draws follow.
    resumed = str(tmp_path / 'resumed')
    _run(data_root, resumed, strategy='random',
         resume_from=osp.join(rnd_dir, 'epoch_3.pth'))
    assert [r['kept'] for r in _records(resumed)] == [r['kept'] for r in rnd]
    for stage in range(4, EPOCHS):
        assert _kept(resumed, stage) == _kept(rnd_dir, stage)
    assert torch.equal(_final_state(resumed)['kept'],
                       _final_state(rnd_dir)['kept'])


@pytest.mark.slow
def test_per_epoch_random_draws_kcds_sizes_afresh_and_resumes(
        data_root, tmp_path):
    """RS2's baseline: every epoch a new uniform subset of KCD's size for
    that epoch, KCD's budget exactly; resumed, the same draws follow."""
    work = str(tmp_path / 'rs2')
    _run(data_root, work, strategy='per_epoch_random')
    records = _records(work)
    assert [r['kept'] for r in records] == SIZES[1:]
    assert [r['epoch'] for r in records] == list(range(1, EPOCHS))
    assert all(r['blended'] == 0 for r in records)
    assert _final_state(work)['sample_iters'] == BUDGET
    kept = [_kept(work, stage) for stage in range(1, EPOCHS)]
    assert all(len(k) == size for k, size in zip(kept, SIZES[1:]))
    # A fresh draw every epoch, also within a stage of KCD's (epochs 4-8
    # all train 48): a dropped sample comes back.
    assert len({frozenset(k) for k in kept[2:]}) == len(kept[2:])
    assert kept[3] - kept[2]
    resumed = str(tmp_path / 'resumed')
    _run(data_root, resumed, strategy='per_epoch_random',
         resume_from=osp.join(work, 'epoch_3.pth'))
    assert [r['kept'] for r in _records(resumed)] == SIZES[1:]
    for stage in range(4, EPOCHS):
        assert _kept(resumed, stage) == _kept(work, stage)


@pytest.fixture(scope='module')
def infobatch_run(data_root, tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('infobatch'))
    probe = LossProbe()
    _run(data_root, work_dir, probe=probe, strategy='infobatch')
    return work_dir, probe


@pytest.mark.slow
def test_infobatch_spends_kcds_budget_full_first_and_last(infobatch_run):
    work_dir, probe = infobatch_run
    records = _records(work_dir)
    assert [r['epoch'] for r in records] == list(range(1, EPOCHS))
    assert all(r['budget'] == BUDGET for r in records)
    assert not any(r['budget_capped'] for r in records)
    assert records[0]['sample_iters'] == N  # epoch 1: all data
    assert records[-1]['kept'] == N and records[-1]['loss_weight'] == 1.0
    pruned = records[:-1]
    assert all(r['kept'] < N and 0 < r['prune_ratio'] < 1 for r in pruned)
    # What the batches saw is what the records say.
    per_epoch = np.bincount([b['epoch'] for b in probe.batches
                             for _ in b['idx']], minlength=EPOCHS)
    assert per_epoch[0] == N and per_epoch[-1] == N
    assert list(per_epoch[1:]) == [r['kept'] for r in records]
    assert _final_state(work_dir)['sample_iters'] == BUDGET == sum(per_epoch)


def test_infobatch_weights_reach_the_loss(infobatch_run):
    work_dir, probe = infobatch_run
    records = _records(work_dir)
    checked = 0
    for batch in probe.batches:
        if batch['epoch'] in (0, EPOCHS - 1):
            assert batch['upweighted'] is None
            continue
        record = records[batch['epoch'] - 1]  # chose this epoch's samples
        weight = 1.0 / (1.0 - record['prune_ratio'])
        w = torch.where(batch['upweighted'][batch['idx']], weight, 1.0)
        # tiny_kd_config: KLDivergence(tau=4, loss_weight=1).
        rows = 16 * F.kl_div(
            F.log_softmax(batch['student'] / 4, dim=1),
            F.softmax(batch['teacher'] / 4, dim=1),
            reduction='none').sum(1)
        assert batch['loss'] == pytest.approx(float((w * rows).mean()),
                                              rel=1e-5)
        if (w != 1).any():
            assert batch['loss'] != pytest.approx(float(rows.mean()),
                                                  rel=1e-3)
            checked += 1
    assert checked >= EPOCHS - 2


@pytest.mark.slow
def test_infobatch_resumes_exactly(data_root, infobatch_run, tmp_path):
    work_dir, _ = infobatch_run
    resumed = str(tmp_path / 'resumed')
    _run(data_root, resumed, strategy='infobatch',
         resume_from=osp.join(work_dir, 'epoch_4.pth'))
    assert _records(resumed) == _records(work_dir)
    a, b = _final_state(resumed), _final_state(work_dir)
    assert torch.equal(a['kept'], b['kept'])
    assert torch.equal(a['selector']['state']['latest'],
                       b['selector']['state']['latest'])
    assert a['sample_iters'] == b['sample_iters'] == BUDGET


def test_bad_strategy_name_stops_at_build(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"KCD strategy='info_batch'"):
        _run(data_root, str(tmp_path / 'work'), strategy='info_batch')


@pytest.mark.slow
def test_infobatch_refuses_a_loss_it_cannot_split(data_root, tmp_path):
    """A loss without a per-sample form trains with strategy='kcd' (uniform
    weighting never splits it) but InfoBatch's weights need the split."""
    cfg = tiny_kcd_config(data_root, **dict(SCHEDULE, strategy='infobatch'))
    distiller = cfg['model']['distiller']
    distiller['distill_losses']['loss_kl']['loss'] = dict(type='L2Loss')
    mapping = distiller['loss_forward_mappings']['loss_kl']
    mapping['s_feature'] = mapping.pop('preds_S')
    mapping['t_feature'] = mapping.pop('preds_T')
    cfg = Config(cfg)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(TypeError, match="strategy='infobatch'"):
        runner.train()
    cfg.custom_hooks[0]['strategy'] = 'kcd'
    cfg.work_dir = str(tmp_path / 'work_kcd')
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = kcd_hook(runner)
    assert hook.state.sample_iters > 0 and hook.state.stage > 0
