"""The summary's arithmetic: the reference's uint8 rule, terms, bounds."""
import numpy as np
import pytest
import torch

from kcd_mm.core.condensation import Condensation
from kcd_mm.core.summary import (ImageSummary, StageSummary, TermSummary,
                                 blend_uint8, compose_terms, reference_lams)


def _reference_step(data: torch.Tensor, tail, lost) -> None:
    """One E-step of the reference's summary, written out as it runs it:
    per pair, uint8 images times float32 rates, summed, cast to uint8, all
    read before any is written back."""
    num = len(tail)
    k = torch.arange(num)
    remain_rate = (1 - 0.7) * ((num * torch.ones(num) - k) / num) + 0.7
    lost_rate = torch.ones(num) - remain_rate
    remain_data, lost_data = data[tail], data[lost]
    mixed = [remain_data[i].unsqueeze(0) * remain_rate[i] +
             lost_data[i].unsqueeze(0) * lost_rate[i] for i in range(num)]
    data[tail] = torch.tensor(torch.cat(mixed), dtype=torch.uint8)


def _pairs(kept, tail, lost):
    kept, tail, lost = (torch.tensor(x, dtype=torch.int64)
                        for x in (kept, tail, lost))
    return Condensation(kept=kept, tail=tail, lost=lost,
                        lam=torch.zeros(len(tail)))


def _random_stages(n, stages, rng):
    """Kept sets shrinking by a few samples a stage, with the reference's
    tail/lost pairing, over a random ranking each stage."""
    size, out = n, []
    for _ in range(stages):
        order = rng.permutation(n)
        keep = size - max(n // 10, 1)
        lost_count = size - keep
        out.append((order[:keep].tolist(),
                    order[keep - lost_count:keep].tolist(),
                    order[keep:size].tolist()))
        size = keep
    return out


def test_blend_is_the_reference_truncation():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (500, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 256, (500, 8, 8), dtype=np.uint8)
    y[:100] = x[:100]  # equal pixels: float32 can land just below them
    data = torch.from_numpy(np.concatenate([x, y]))
    _reference_step(data, list(range(500)), list(range(500, 1000)))
    lams = reference_lams(500, (0.7, 1.0))
    ours = np.stack([blend_uint8(x[k], y[k], lams[k]) for k in range(500)])
    assert np.array_equal(ours, data[:500].numpy())
    rounded = np.rint(lams[:, None, None] * x.astype(np.float64) +
                      (1 - lams[:, None, None]) * y).astype(np.uint8)
    assert not np.array_equal(ours, rounded)  # truncation, not rounding
    assert lams[0] == 1.0 and 0.7 < lams[-1] < 0.701


def test_image_summary_replays_the_reference_over_stages():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 5, 5, 3), dtype=np.uint8)
    reference = torch.from_numpy(images.copy())
    summary = ImageSummary((0.7, 1.0))
    for kept, tail, lost in _random_stages(60, 5, rng):
        _reference_step(reference, tail, lost)
        fields = summary.update(_pairs(kept, tail, lost),
                                lambda idx: [images[i] for i in idx])
        assert fields['carrying_blend'] == len(
            set(kept) & set(summary.images))
    assert len(summary.images) > 6  # blended at several stages
    for i in range(60):
        want = reference[i].numpy()
        assert np.array_equal(summary.images.get(i, images[i]), want), i
    # Saved and restored (stacked uint8) exactly; handed out for kept ones.
    again = ImageSummary((0.7, 1.0))
    again.load_state_dict(summary.state_dict())
    assert again.images.keys() == summary.images.keys()
    assert all(np.array_equal(again.images[i], summary.images[i])
               for i in summary.images)
    kept = torch.tensor(kept)
    payloads = summary.payloads(kept)
    assert set(payloads) == set(kept.tolist()) & set(summary.images)


def test_terms_compose_merge_and_bound():
    terms, dropped = compose_terms(((0, 1.0), ), ((1, 1.0), ), 0.75, 4)
    assert terms == ((0, 0.75), (1, 0.25)) and dropped == 0
    # The same original on both sides merges.
    terms, _ = compose_terms(((0, 0.5), (1, 0.5)), ((1, 0.6), (2, 0.4)),
                             0.5, 4)
    assert dict(terms) == pytest.approx({0: 0.25, 1: 0.55, 2: 0.2})
    # Beyond the bound the smallest goes; the rest sums to 1.
    terms, dropped = compose_terms(((0, 0.7), (1, 0.3)), ((2, 0.9), (3, 0.1)),
                                   0.8, 3)
    assert [j for j, _ in terms] == [0, 1, 2]
    assert dropped == pytest.approx(0.02)
    assert sum(w for _, w in terms) == pytest.approx(1.0)


def _compose_image(terms, images):
    mixed = sum(np.float32(w) * images[j].astype(np.float32)
                for j, w in terms)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('max_terms', [64, 4])
def test_terms_stay_close_to_the_exact_images(max_terms):
    """The file-dataset summary against the in-memory (exact) one on the
    same images: within a grey level a blend unbounded; the default bound
    of 4 terms adds what it drops."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (80, 6, 6), dtype=np.uint8)
    exact = ImageSummary((0.7, 1.0))
    terms = TermSummary((0.7, 1.0), max_terms)
    stages = _random_stages(80, 6, rng)
    worst_cut = 0.0
    for kept, tail, lost in stages:
        pairs = _pairs(kept, tail, lost)
        exact.update(pairs, lambda idx: [images[i] for i in idx])
        worst_cut = max(worst_cut, terms.update(pairs)['max_weight_dropped'])
    assert exact.images.keys() == terms.terms.keys()
    diffs = [np.abs(_compose_image(terms.terms[i], images).astype(int) -
                    exact.images[i]).max() for i in exact.images]
    if max_terms == 64:
        assert worst_cut == 0.0
        assert max(diffs) <= len(stages)  # one truncation per blend at most
    else:
        assert all(len(t) <= 4 for t in terms.terms.values())
        assert max(diffs) <= len(stages) + 2 * 255 * worst_cut
    again = TermSummary((0.7, 1.0), max_terms)
    again.load_state_dict(terms.state_dict())
    assert again.terms.keys() == terms.terms.keys()
    for i, t in terms.terms.items():
        assert [j for j, _ in again.terms[i]] == [j for j, _ in t]
        assert [w for _, w in again.terms[i]] == pytest.approx(
            [w for _, w in t])


def test_stage_summary_yields_this_stage_pairs_only():
    summary = StageSummary()
    summary.update(_pairs([0, 1, 2, 3], [3], [7]))
    assert list(summary.payloads(None)) == [3]
    summary.update(_pairs([0, 1, 2], [2], [3]))
    assert list(summary.payloads(None)) == [2]  # 3's blend is gone


def test_a_kind_mismatch_on_resume_is_refused():
    images = ImageSummary((0.7, 1.0))
    with pytest.raises(ValueError, match='same training dataset'):
        images.load_state_dict(TermSummary((0.7, 1.0), 4).state_dict())


def _state(summary, n=20):
    from kcd_mm.core.options import KCDOptions
    from kcd_mm.core.state import KCDState
    options = KCDOptions(stage_epochs=1, theta=0.5, num_steps=2,
                         summary=summary)
    return KCDState(n, options, max_epochs=3, in_memory=True)


def test_a_persistent_state_resumed_under_another_mode_says_so():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 4, 4), dtype=np.uint8)
    state = _state('persistent')
    state.bank.record(torch.arange(20), torch.rand(20, dtype=torch.float64))
    state.merge()
    state.count_epoch(20)
    record = state.estep(1, lambda idx: [images[i] for i in idx])
    assert record.summary['mode'] == 'persistent'
    saved = state.state_dict()
    assert saved['version'] == 4 and saved['summary']['kind'] == 'images'
    same = _state('persistent')
    same.load_state_dict(saved)
    assert same.summary.images.keys() == state.summary.images.keys()
    heard = []
    other = _state('stage')
    other.load_state_dict(saved, log=lambda level, msg: heard.append(msg))
    assert any('persistent summary' in m and 'dropped' in m for m in heard)
    # The stage summary picks up the checkpoint's current pairs.
    assert set(other.sampler_args()[1]) == set(state.pairs.tail.tolist())


def test_older_states_read_summary_true_as_the_stage_summary():
    from kcd_mm.core.state import upgrade_state
    old = dict(version=3, options=dict(summary=True, theta=0.7), bank={},
               selector=dict(type='kcd', state={}))
    new = upgrade_state(old)
    assert new['version'] == 4 and new['summary'] is None
    assert new['options']['summary'] == 'stage'
    assert old['options']['summary'] is True  # the saved dict is not changed
