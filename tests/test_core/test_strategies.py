"""The comparison strategies' pure parts: random subsets and InfoBatch."""
import pytest
import torch
import torch.nn.functional as F
from mmrazor.registry import MODELS

from kcd_mm import KCDOptions, KCDState
from kcd_mm.core.condensation import (full_tail_epochs, infobatch_prune,
                                      infobatch_sizes, keep_schedule,
                                      seeded_generator)


def test_unknown_strategy_names_the_option():
    with pytest.raises(ValueError, match=r"KCD strategy='infobach' is unkn"):
        KCDOptions(strategy='infobach')
    with pytest.raises(ValueError, match='class_min_keep applies to'):
        KCDOptions(strategy='random', class_min_keep=0.1)
    with pytest.raises(ValueError, match='infobatch_full_epochs_ratio=1.0'):
        KCDOptions(strategy='infobatch', infobatch_full_epochs_ratio=1.0)
    assert not KCDOptions(strategy='random').blends
    assert KCDOptions().blends and not KCDOptions(summary=False).blends


def test_full_tail_epochs_rounds_up_and_leaves_the_first():
    assert full_tail_epochs(240, 0.125) == 30
    assert full_tail_epochs(100, 0.125) == 13
    assert full_tail_epochs(8, 0.125) == 1
    assert full_tail_epochs(6, 0.125) == 1
    assert full_tail_epochs(6, 0.0) == 0
    assert full_tail_epochs(1, 0.5) == 0


def test_infobatch_sizes_spend_the_budget_exactly():
    n, epochs = 1000, 8
    budget = sum(keep_schedule(n, 0.7, 6, 1, epochs))
    sizes = infobatch_sizes(n, budget, 0, 0, epochs, 1)
    assert sum(sizes) == budget
    assert sizes[0] == n and sizes[-1] == n
    assert max(sizes[1:-1]) - min(sizes[1:-1]) <= 1
    # Re-planned from what was spent: an overspent epoch is made up later.
    later = infobatch_sizes(n, budget, sizes[0] + sizes[1] + 30, 2, epochs, 1)
    assert sum(later) + sizes[0] + sizes[1] + 30 == budget
    # A budget below two full epochs cannot be met: pruned epochs get 0.
    assert infobatch_sizes(n, n, 0, 0, 4, 1) == [n, 0, 0, n]


def test_infobatch_prune_drops_only_below_mean_and_reweights():
    latest = torch.tensor([0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 100.,
                           float('nan')])
    # mean of the finite values is 13.18: 0..9 (ten samples) are below it.
    prune = infobatch_prune(latest, target=8, gen=seeded_generator(0, 1))
    assert prune.below_mean == 10 and not prune.capped
    assert prune.kept.numel() == 8 and prune.ratio == pytest.approx(0.4)
    assert prune.weight == pytest.approx(1 / (1 - 0.4))
    assert {10, 11} <= set(prune.kept.tolist())  # above the mean, or no value
    assert prune.upweighted.sum() == 6
    assert set(torch.nonzero(prune.upweighted).flatten().tolist()) == set(
        prune.kept.tolist()) - {10, 11}
    again = infobatch_prune(latest, 8, seeded_generator(0, 1))
    assert torch.equal(again.kept, prune.kept)
    other = infobatch_prune(latest, 8, seeded_generator(0, 2))
    assert not torch.equal(other.kept, prune.kept)
    # Asking for more than all below-mean samples: r capped at 1.
    capped = infobatch_prune(latest, 1, seeded_generator(0, 1))
    assert capped.capped and capped.ratio == 1.0 and capped.weight == 1.0
    assert capped.kept.tolist() == [10, 11]


def test_infobatch_selector_tracks_each_samples_latest_epoch_value():
    state = KCDState(4, KCDOptions(stage_epochs=1, strategy='infobatch'),
                     max_epochs=4)
    state.bank.record(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    state.merge()
    state.bank.record(torch.tensor([1, 2]), torch.tensor([5.0, float('nan')]))
    state.merge()
    latest = state.selector.latest.tolist()
    assert latest[:3] == [1.0, 5.0, 3.0] and latest[3] != latest[3]
    assert not hasattr(KCDState(4, KCDOptions()).selector, 'latest')
    restored = KCDState(4, state.options, max_epochs=4)
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.selector.latest[:3], state.selector.latest[:3])


def _fed_state(strategy, seed=0, epochs=6, **kwargs):
    opts = KCDOptions(stage_epochs=1, theta=0.7, num_steps=3,
                      strategy=strategy, **kwargs)
    state = KCDState(100, opts, seed=seed, max_epochs=epochs)
    g = torch.Generator().manual_seed(1)
    state.bank.record(torch.arange(100), torch.rand(100, generator=g))
    state.merge()
    state.count_epoch(100)
    return state


def test_random_state_keeps_kcds_sizes_reproducibly():
    kcd, rnd = _fed_state('kcd'), _fed_state('random')
    sizes = []
    for epoch in (1, 2, 3):
        sizes.append((kcd.estep(epoch).kept, rnd.estep(epoch).kept))
        assert rnd.pairs.num_blended == 0
        if epoch == 1:
            saved, first = rnd.state_dict(), rnd.kept.clone()
    assert [a for a, b in sizes] == [b for a, b in sizes] == [90, 80, 70]
    assert not torch.equal(torch.sort(kcd.kept).values,
                           torch.sort(rnd.kept).values)
    resumed = KCDState(100, rnd.options, seed=123, max_epochs=6)
    resumed.load_state_dict(saved)  # the checkpoint's seed wins
    resumed.estep(2)
    resumed.estep(3)
    assert torch.equal(resumed.kept, rnd.kept)
    other = _fed_state('random', seed=1)
    other.estep(1)
    assert not torch.equal(other.kept, first)


def test_infobatch_state_plans_weights_and_checkpoints():
    state = _fed_state('infobatch', epochs=4)
    assert state.boundaries() == [1, 2, 3]
    budget = state.budget
    assert budget == sum(keep_schedule(100, 0.7, 3, 1, 4))  # 100+90+80+70
    record = state.estep(1)
    assert record.kept == record.extra['target'] == 70  # (340 - 200) / 2
    assert state.planned_sizes(1) == [70, 70, 100]  # the last epoch full
    assert record.extra['loss_weight'] == pytest.approx(
        1 / (1 - record.extra['prune_ratio']))
    idx = torch.arange(100)
    weights = state.sample_weights(idx)
    assert torch.equal(weights != 1, state.selector.upweighted)
    assert set(torch.nonzero(weights != 1).flatten().tolist()) <= set(
        state.kept.tolist())
    saved = state.state_dict()
    copy = KCDState(100, state.options, max_epochs=4)
    copy.load_state_dict(saved)
    assert torch.equal(copy.sample_weights(idx), weights)
    assert torch.equal(copy.selector.latest, state.selector.latest)


def test_loss_is_the_weighted_mean_of_per_sample_losses():
    g = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(6, 5, generator=g)).requires_grad_()
    t = 3 * torch.randn(6, 5, generator=g)
    cfg = dict(type='KLDivergence', tau=4, loss_weight=0.9)
    loss = MODELS.build(dict(type='ValueWeightedLoss', loss=cfg,
                             _scope_='mmrazor'))
    loss.train()
    w = torch.tensor([1.0, 2.5, 1.0, 2.5, 2.5, 1.0])
    loss.set_batch(torch.arange(6), None, w)
    out = loss(s, t)
    rows = 0.9 * 16 * F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1),
                               reduction='none').sum(1)
    assert torch.allclose(out, (w * rows).mean())
    out.backward()
    assert s.grad is not None
    loss.set_batch(torch.arange(6), None, None)
    assert torch.equal(loss(s, t), MODELS.build(dict(cfg, _scope_='mmrazor'))(
        s, t))


def test_infobatch_at_its_own_fixed_ratio_drops_half_the_below_mean():
    """InfoBatch's paper: r = 0.5 of the below-mean samples every pruned
    epoch, whatever the budget; the last epoch trains on all data."""
    with pytest.raises(ValueError, match='infobatch_ratio=1.5 must lie'):
        KCDOptions(strategy='infobatch', infobatch_ratio=1.5)
    with pytest.raises(ValueError, match="strategy='infobatch' only"):
        KCDOptions(strategy='random', infobatch_ratio=0.5)
    state = _fed_state('infobatch', epochs=4, infobatch_ratio=0.5)
    below = int((state.selector.latest < state.selector.latest.mean()).sum())
    record = state.estep(1)
    assert record.extra['below_mean'] == below
    assert record.kept == record.extra['target'] == 100 - round(below / 2)
    assert record.extra['prune_ratio'] == pytest.approx(
        round(below / 2) / below)
    assert record.extra['loss_weight'] == pytest.approx(
        below / (below - round(below / 2)))
    assert state.planned_sizes(1) == [record.kept, record.kept, 100]
    state.count_epoch(record.kept)
    state.estep(2)
    last = state.estep(3)  # before the last epoch: all data
    assert last.kept == 100 and last.extra['prune_ratio'] == 0.0
    # Planned to KCD's budget (the default), the same values keep 70.
    planned = _fed_state('infobatch', epochs=4)
    assert planned.estep(1).kept == 70
    # The set-up log line does not promise KCD's budget at a fixed r.
    assert planned.budget_note() == f'sample budget {planned.budget}'
    assert state.budget_note().startswith(
        "no sample budget (InfoBatch's own r=0.5")


def test_per_epoch_random_draws_kcds_sizes_afresh_every_epoch():
    state = _fed_state('per_epoch_random', epochs=6)
    assert state.boundaries() == [1, 2, 3, 4, 5]
    sizes = keep_schedule(100, 0.7, 3, 1, 6)  # 100, 90, 80, 70, 70, 70
    kept = []
    for epoch in range(1, 6):
        record = state.estep(epoch)
        assert record.kept == sizes[epoch] and record.blended == 0
        kept.append(set(state.kept.tolist()))
    assert state.planned_sizes(3) == sizes[3:]
    assert kept[2] != kept[3] != kept[4]  # same size, a fresh draw
    # No state: a run resumed before epoch 4 draws what this one drew.
    again = _fed_state('per_epoch_random', epochs=6)
    again.estep(4)
    assert set(again.kept.tolist()) == kept[3]
    other = _fed_state('per_epoch_random', seed=5, epochs=6)
    other.estep(4)
    assert set(other.kept.tolist()) != kept[3]
