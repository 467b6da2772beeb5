"""Schedule, scores, ranking, partition and pairing (pure math)."""
import math

import pytest
import torch

from kcd_mm.core.condensation import (boundary_epochs, condense,
                                      cost_aware_scores, iterations_per_epoch,
                                      keep_schedule, next_keep_size,
                                      rank_samples)


def test_reference_cifar100_schedule():
    """N=50k, theta .7, K=6, T=40, 240 epochs: the reference's table."""
    sizes = keep_schedule(50000, 0.7, 6, 40, 240)
    per_stage = [sizes[e] for e in range(0, 240, 40)]
    assert per_stage == [50000, 47500, 45000, 42500, 40000, 37500]
    assert all(sizes[e] == sizes[e - e % 40] for e in range(240))
    assert boundary_epochs(40, 240) == [40, 80, 120, 160, 200]
    kcd = sum(iterations_per_epoch(n, 64) for n in sizes)
    kd = 240 * iterations_per_epoch(50000, 64)
    assert (kcd, kd) == (164200, 187680)


def test_keep_size_floor_and_step():
    assert next_keep_size(100, 100, 0.5, 2) == 75
    assert next_keep_size(100, 75, 0.5, 2) == 50
    assert next_keep_size(100, 50, 0.5, 2) == 50  # floor reached
    assert next_keep_size(10, 10, 1.0, 6) == 10  # theta 1 keeps all


def test_schedule_resumes_mid_run():
    full = keep_schedule(1000, 0.7, 6, 2, 10)
    assert keep_schedule(1000, 0.7, 6, 2, 10, start_epoch=4,
                         start_size=full[4]) == full[4:]


def test_iterations_per_epoch_sharding():
    assert iterations_per_epoch(101, 10) == 11
    assert iterations_per_epoch(101, 10, drop_last=True) == 10
    assert iterations_per_epoch(101, 10, world_size=2) == 6  # 51 per rank


def test_scores_are_cost_aware_mean_values():
    value_sum = torch.tensor([4.0, 4.0, 0.0, 3.0], dtype=torch.float64)
    visits = torch.tensor([2, 4, 0, 1], dtype=torch.int32)
    s = cost_aware_scores(value_sum, visits, 0.03, 40)
    expected = [(2 / 40)**0.03 * 2, (4 / 40)**0.03 * 1, 0.0, (1 / 40)**.03 * 3]
    assert torch.allclose(s, torch.tensor(expected, dtype=torch.float64))


def test_rank_ties_break_by_index():
    order = rank_samples(torch.tensor([1.0, 3.0, 1.0, 3.0, 2.0]))
    assert order.tolist() == [1, 3, 4, 0, 2]


def test_partition_and_pairing_hand_checked():
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    c = condense(order, current_size=10, num_keep=7, lam_range=(0.7, 1.0))
    assert c.kept.tolist() == [9, 8, 7, 6, 5, 4, 3]
    # L = 3: tail = 3 lowest kept, lost = 3 just below the cut, by rank.
    assert c.tail.tolist() == [5, 4, 3]
    assert c.lost.tolist() == [2, 1, 0]
    assert torch.allclose(c.lam, torch.tensor([1.0, 0.9, 0.8]))


def test_partition_counts_dropped_from_current_size():
    """Shrinking from a kept set smaller than N: L = |D_t| - n_{t+1}."""
    order = torch.arange(10)
    c = condense(order, current_size=8, num_keep=6)
    assert c.kept.tolist() == list(range(6))
    assert c.lost.tolist() == [6, 7] and c.tail.tolist() == [4, 5]
    assert c.lam[0] == 1.0 and math.isclose(float(c.lam[1]), 0.85,
                                            rel_tol=1e-6)


def test_prune_only_and_more_lost_than_kept():
    order = torch.arange(10)
    assert condense(order, 10, 6, summary=False).num_blended == 0
    c = condense(order, 10, 3)  # L = 7 > 3 kept: only 3 pairs
    assert c.tail.tolist() == [0, 1, 2] and c.lost.tolist() == [3, 4, 5]
    with pytest.raises(ValueError):
        condense(order, 10, 0)


def test_estep_fast_at_imagenet_scale():
    """Runs at N = 1.28M (speed is reported by benchmarks/, not here)."""
    n = 1281167
    g = torch.Generator().manual_seed(0)
    value_sum = torch.rand(n, generator=g, dtype=torch.float64)
    visits = torch.randint(1, 5, (n, ), generator=g, dtype=torch.int32)
    order = rank_samples(cost_aware_scores(value_sum, visits, 0.03, 16))
    c = condense(order, n, next_keep_size(n, n, 0.7, 6))
    assert c.kept.numel() == n - math.floor(n * 0.3 / 6)
    assert torch.unique(torch.cat([c.kept, c.lost])).numel() == (
        c.kept.numel() + c.lost.numel())


def test_class_balance_keeps_a_minimum_of_every_class():
    from kcd_mm.core.condensation import balance_classes

    # 10 samples ranked 0..9; class 1 = {6, 7, 8, 9} all below a cut at 6.
    order = torch.arange(10)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert torch.equal(balance_classes(order, 6, labels, 0.0), order)
    new = balance_classes(order, 6, labels, 0.5)  # class 1 needs 2 of 4
    assert new[:6].tolist() == [0, 1, 2, 3, 6, 7]  # 4, 5 made room
    assert new[6:].tolist() == [4, 5, 8, 9]  # rest stays in rank order
    c = condense(new, 10, 6)  # pairs follow the balanced order
    assert c.tail.tolist() == [2, 3, 6, 7] and c.lost.tolist() == [4, 5, 8, 9]
    with pytest.raises(ValueError, match='class_min_keep=0.9'):
        balance_classes(order, 6, labels, 0.9)
