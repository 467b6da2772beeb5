"""KCDHook's hook points one by one, on a stand-in runner.

Each test wires a hook to real components (KCDState, KCDSampler,
ValueWeightedLoss, RecordWriter) and calls one hook point the way
mmengine's loop does; the real tiny Runner runs are in test_kcd_run.py.
"""
import json
import os.path as osp
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.structures import BaseDataElement
from mmengine.visualization import Visualizer
from mmrazor.registry import MODELS

from kcd_mm import EpochSeedingHook, KCDHook, KCDSampler, KCDState
from kcd_mm.records import CKPT_KEY, RecordWriter

N = 20


def _samples(idx, labels=None):
    out = []
    for k, i in enumerate(idx):
        s = BaseDataElement(metainfo=dict(sample_idx=i))
        if labels is not None:
            s.gt_label = torch.tensor([labels[k]])
        out.append(s)
    return out


@pytest.fixture
def wired(tmp_path):
    """A hook wired as ``before_train`` leaves it, and a stand-in runner."""
    hook = KCDHook(stage_epochs=1, theta=0.5, num_steps=2)
    hook.state = KCDState(N, hook.options, max_epochs=3)
    hook._sampler = KCDSampler(list(range(N)), shuffle=False, seed=0)
    hook._sampler.set_kept(None)
    hook._source = MODELS.build(
        dict(type='ValueWeightedLoss', loss=dict(type='KLDivergence'),
             _scope_='mmrazor')).train()
    hook._writer = RecordWriter(str(tmp_path))
    hook._first_batch_checked = True  # test_edge_cases checks the check
    loop = SimpleNamespace(iter=0, _max_iters=0)
    runner = SimpleNamespace(
        epoch=0, seed=7, work_dir=str(tmp_path), train_loop=loop,
        train_dataloader=SimpleNamespace(batch_size=4, drop_last=False),
        logger=MMLogger.get_instance('kcd_hook_points'),
        visualizer=Visualizer.get_instance('kcd_hook_points'),
        _resume=True)
    return hook, runner


def test_before_train_iter_hands_the_batch_ids_to_the_loss(wired):
    hook, runner = wired
    hook.before_train_iter(runner, 0, dict(data_samples=_samples([3, 1])))
    idx, labels, weights = hook._source._batch
    assert idx.tolist() == [3, 1] and labels is None and weights is None
    # A data field, as MMRazor's PackCRDClsInputs stores it.
    crd = [BaseDataElement(sample_idx=torch.tensor(i)) for i in (2, 0)]
    hook.before_train_iter(runner, 0, dict(data_samples=crd))
    assert hook._source._batch[0].tolist() == [2, 0]
    hook._source._batch = None
    with pytest.raises(KeyError, match='sample_idx'):
        hook.before_train_iter(
            runner, 0, dict(data_samples=[BaseDataElement(metainfo={})]))


def test_after_train_iter_banks_what_the_loss_recorded(wired):
    hook, runner = wired
    batch = dict(data_samples=_samples([3, 1]))
    hook.before_train_iter(runner, 0, batch)
    hook._source(torch.randn(2, 5), torch.randn(2, 5))  # the forward
    hook.after_train_iter(runner, 0, batch)
    hook.state.merge()
    assert torch.nonzero(hook.state.bank.visits).flatten().tolist() == [1, 3]
    assert hook._epoch_samples == 2 and hook._source.pop_records() == []


def test_after_train_epoch_condenses_at_a_boundary(wired):
    hook, runner = wired
    values = torch.linspace(0.1, 2.0, N)
    hook.state.bank.record(torch.arange(N), values)
    hook._epoch_samples = N
    hook.after_train_epoch(runner)  # epoch 1 done: a boundary (T = 1)
    state = hook.state
    assert state.stage == 1 and state.kept_size == 15  # 20 - 10 / 2
    # The most valuable (highest entropy) samples are kept.
    assert sorted(state.kept.tolist()) == list(range(5, N))
    assert sorted(hook._sampler.kept.tolist()) == list(range(5, N))
    assert len(hook._sampler._payloads) == 5  # tail blended with lost
    record = json.loads(open(hook._writer.path).read())
    assert record['kept'] == 15 and record['sample_iters'] == N
    assert osp.isfile(osp.join(runner.work_dir, 'kcd_stages',
                               'stage_001.npz'))
    # ETA: epochs 2 and 3 train 15 and 10 samples in batches of 4.
    assert runner.train_loop._max_iters == 4 + 3


def test_checkpoint_carries_the_state_and_resume_restores_it(wired):
    hook, runner = wired
    hook.state.bank.record(torch.arange(N), torch.rand(N))
    hook._epoch_samples = N
    hook.after_train_epoch(runner)
    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    assert checkpoint[CKPT_KEY]['stage'] == 1
    fresh = KCDHook(stage_epochs=1, theta=0.5, num_steps=2)
    runner._resume = False  # load_from: weights only
    fresh.after_load_checkpoint(runner, checkpoint)
    assert fresh._loaded is None
    runner._resume = True
    fresh.after_load_checkpoint(runner, checkpoint)
    assert fresh._loaded is checkpoint[CKPT_KEY]


def test_epoch_seeding_repeats_an_epochs_draws():
    runner = SimpleNamespace(seed=3, epoch=5)
    hook = EpochSeedingHook()
    draws = []
    for _ in range(2):
        hook.before_train_epoch(runner)
        draws.append((random.random(), float(np.random.rand()),
                      float(torch.rand(1))))
    assert draws[0] == draws[1]
    runner.epoch = 6
    hook.before_train_epoch(runner)
    assert random.random() != draws[0][0]
    assert KCDHook(epoch_seeding=False).seeding is None
