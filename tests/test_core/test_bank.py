"""The knowledge bank against a brute-force full history."""
import pytest
import torch

from kcd_mm.core.bank import KnowledgeBank
from kcd_mm.core.condensation import cost_aware_scores


def test_bank_matches_brute_force_history():
    n, epochs = 50, 7
    g = torch.Generator().manual_seed(0)
    bank = KnowledgeBank(n)
    history = [[] for _ in range(n)]  # the reference's N x epochs record
    for _ in range(epochs):
        visited = torch.randperm(n, generator=g)[:int(n * 0.8)]
        for batch in visited.split(8):
            values = torch.rand(batch.numel(), generator=g)
            bank.record(batch, values)
            for i, v in zip(batch.tolist(), values.tolist()):
                history[i].append(v)
        bank.merge()
    for i in range(n):
        assert int(bank.visits[i]) == len(history[i])
        mean = sum(history[i]) / len(history[i]) if history[i] else 0.0
        assert abs(float(bank.mean_values()[i]) - mean) < 1e-6
    s = cost_aware_scores(bank.value_sum, bank.visits, 0.03, 3)
    i = max(range(n), key=lambda k: len(history[k]))
    expected = (len(history[i]) / 3)**0.03 * sum(history[i]) / len(history[i])
    assert abs(float(s[i]) - expected) < 1e-6


def test_non_finite_values_are_skipped_and_counted():
    bank = KnowledgeBank(4)
    skipped = bank.record(
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([1.0, float('nan'), float('inf'), 2.0]))
    bank.merge()
    assert skipped == 2
    assert bank.visits.tolist() == [1, 0, 0, 1]
    stats = bank.pop_stats()
    assert stats['values_skipped'] == 2 and stats['values_recorded'] == 2
    assert stats['value_mean'] == 1.5


def test_merge_sums_deltas_of_all_ranks():
    """Two 'ranks': each adds the other's delta, as an all-reduce would."""
    a, b = KnowledgeBank(3), KnowledgeBank(3)
    a.record(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    b.record(torch.tensor([1, 2]), torch.tensor([4.0, 8.0]))

    def deltas(bank):
        return [t.clone() for t in (bank._delta_sum, bank._delta_visits,
                                    bank._moments)]

    from_a, from_b = deltas(a), deltas(b)
    a.merge(lambda t, it=iter(from_b): t + next(it))
    b.merge(lambda t, it=iter(from_a): t + next(it))
    for bank in (a, b):
        assert bank.visits.tolist() == [1, 2, 1]
        assert bank.value_sum.tolist() == [1.0, 6.0, 8.0]
        assert not bank._delta_visits.any()
        assert bank.pop_stats()['values_recorded'] == 4


def test_state_dict_round_trip_and_size_check():
    bank = KnowledgeBank(5)
    bank.record(torch.tensor([0, 4]), torch.tensor([0.5, 1.5]))
    bank.merge()
    bank.record(torch.tensor([1]), torch.tensor([9.0]))  # unfinished epoch
    state = bank.state_dict()
    other = KnowledgeBank(5)
    other.load_state_dict(state)
    assert other.visits.tolist() == [1, 0, 0, 0, 1]
    assert torch.equal(other.value_sum, bank.value_sum)
    with pytest.raises(ValueError, match='dataset changed'):
        KnowledgeBank(6).load_state_dict(state)
    with pytest.raises(IndexError):
        bank.record(torch.tensor([5]), torch.tensor([1.0]))


def test_bank_memory_at_imagenet_scale():
    assert KnowledgeBank(1281167).nbytes < 32 * 2**20
