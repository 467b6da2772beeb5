"""The arithmetic of condensing the training set, for KCD and for the
strategies it is compared with, at KCD's sample budget.

KCD's E-step: the keep schedule, cost-aware scores, ranking, class balance
and the three-way partition (:func:`condense`). The others
(``KCDHook(strategy=...)``, their selectors in :mod:`.selection`), which
spend exactly KCD's samples (:func:`keep_schedule`) unless said otherwise:

* ``'random'``: at each E-step a uniformly random subset of all N samples
  of KCD's next size n_{t+1}: the floor any selection has to beat.
* ``'infobatch'`` (Qin et al., ICLR 2024): every epoch, among the samples
  whose latest value is below the mean of the latest values, drop a random
  fraction r and weight the surviving ones' loss 1 / (1 - r), so the
  expected gradient is unchanged; the first epoch (no values yet) and the
  last ``ceil(ratio * epochs)`` train on all data. r is chosen each epoch
  so that the run's total equals KCD's, from the samples trained so far; or,
  with ``infobatch_ratio``, it is InfoBatch's own fixed r, and the run
  spends what that gives.
* ``'per_epoch_random'`` (RS2): every epoch a fresh uniform subset of
  KCD's size for that epoch (:func:`random_order` of the epoch's seed).

Everything here is a pure function of tensors and ints, so the schedule can
be planned ahead (for an honest ETA), tested against the reference's table
and run at ImageNet scale in a fraction of a second. Random draws come from
a generator seeded by (run seed, stage or epoch): the same on every rank
and again after a resume.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


def next_keep_size(num_samples: int, current: int, theta: float,
                   num_steps: int) -> int:
    """n_{t+1} = max(|D_t| - floor(N(1-theta)/K), floor(theta N)).

    Never larger than ``current``: the kept set only shrinks.
    """
    step = math.floor(num_samples * (1.0 - theta) / num_steps)
    floor_size = math.floor(theta * num_samples)
    return min(current, max(current - step, floor_size))


def boundary_epochs(stage_epochs: int, max_epochs: int) -> List[int]:
    """Epochs completed at each E-step: T, 2T, ... strictly before the end.

    The reference also condenses after the last epoch, which changes no
    training, so it is skipped here.
    """
    return list(range(stage_epochs, max_epochs, stage_epochs))


def keep_schedule(num_samples: int,
                  theta: float,
                  num_steps: int,
                  stage_epochs: int,
                  max_epochs: int,
                  start_epoch: int = 0,
                  start_size: Optional[int] = None) -> List[int]:
    """Kept-set size for each epoch ``start_epoch .. max_epochs - 1``.

    ``start_size`` is the kept size entering ``start_epoch`` (default N), so
    a resumed run can plan its remaining epochs.
    """
    sizes = []
    size = num_samples if start_size is None else start_size
    boundaries = set(boundary_epochs(stage_epochs, max_epochs))
    for epoch in range(start_epoch, max_epochs):
        if epoch in boundaries and epoch != start_epoch:
            size = next_keep_size(num_samples, size, theta, num_steps)
        sizes.append(size)
    return sizes


def iterations_per_epoch(size: int,
                         batch_size: int,
                         world_size: int = 1,
                         drop_last: bool = False) -> int:
    """Iterations a rank runs on ``size`` samples (DefaultSampler round_up)."""
    per_rank = math.ceil(size / world_size)
    if drop_last:
        return per_rank // batch_size
    return math.ceil(per_rank / batch_size)


def cost_aware_scores(value_sum: torch.Tensor, visits: torch.Tensor,
                      exponent: float, ref_epochs: float) -> torch.Tensor:
    """S(x) = (F(x) / T_ref) ** exponent * V(x); 0 for unvisited samples."""
    visits = visits.double()
    mean_value = value_sum.double() / visits.clamp(min=1)
    return (visits / ref_epochs).pow(exponent) * mean_value


def rank_samples(scores: torch.Tensor,
                 tie_break: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Indices of all samples, highest score first.

    Equal scores are ordered by ``tie_break`` (distinct ints in [0, N),
    higher first; e.g. a seeded ``randperm``), else by lower index. A
    seeded tie-break matters where many scores tie (all-equal values on
    class-sorted data would otherwise drop whole classes by index).

    Scores are compared at float32 precision: each becomes one unique int64
    key (order-preserving float bits, then the tie-break), so an unstable
    quicksort gives the same order on every rank and platform, about 5x
    faster than a stable float64 sort (0.2 s -> 0.04 s at N = 1.28M).
    """
    n = scores.numel()
    if n >= 2**31:
        raise ValueError(f'rank_samples supports up to 2**31 samples, got {n}')
    bits = scores.float().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, -(bits & 0x7fffffff) - 1, bits)
    if tie_break is None:
        tie_break = n - 1 - torch.arange(n, dtype=torch.int64)
    keys = (bits << 31) | tie_break.to(torch.int64)
    return torch.from_numpy(np.argsort(-keys.numpy()))


def balance_classes(order: torch.Tensor, num_keep: int, labels: torch.Tensor,
                    min_fraction: float) -> torch.Tensor:
    """Reorder ``order`` so its first ``num_keep`` hold, of every class c,
    at least ``ceil(min_fraction * n_c)`` samples (all of them if fewer).

    Deficient classes bring in their best-ranked samples from below the
    cut; they replace the lowest-ranked kept samples of classes with
    surplus. Everything else keeps its rank order, so without a deficit
    ``order`` is returned unchanged.
    """
    labels = labels.to(torch.int64)
    counts = torch.bincount(labels)
    need = torch.minimum(counts, torch.ceil(min_fraction * counts).long())
    if int(need.sum()) > num_keep:
        raise ValueError(
            f'class_min_keep={min_fraction} asks to keep {int(need.sum())} '
            f'samples but only {num_keep} are kept: lower class_min_keep '
            '(at most theta).')
    kept, rest = order[:num_keep], order[num_keep:]
    have = torch.bincount(labels[kept], minlength=counts.numel())
    deficit = (need - have).clamp(min=0)
    if not bool(deficit.any()):
        return order
    promote = torch.cat([
        rest[labels[rest] == c][:int(d)]
        for c, d in enumerate(deficit.tolist()) if d
    ])
    surplus = (have - need).clamp(min=0)
    demote = []
    for idx in reversed(kept.tolist()):  # lowest-ranked first
        if len(demote) == promote.numel():
            break
        c = int(labels[idx])
        if surplus[c] > 0:
            surplus[c] -= 1
            demote.append(idx)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    moved_in = torch.zeros(order.numel(), dtype=torch.bool)
    moved_in[promote] = True
    moved_out = torch.zeros(order.numel(), dtype=torch.bool)
    moved_out[torch.tensor(demote, dtype=torch.int64)] = True
    new_kept = torch.cat([kept[~moved_out[kept]], promote])
    new_rest = torch.cat([rest[~moved_in[rest]], kept[moved_out[kept]]])
    new_kept = new_kept[torch.argsort(rank[new_kept])]
    new_rest = new_rest[torch.argsort(rank[new_rest])]
    return torch.cat([new_kept, new_rest])


@dataclass
class Condensation:
    """The result of one VAKS step.

    Attributes:
        kept: indices kept, in rank order (top first).
        tail: the lowest-ranked kept samples, each blended with ``lost``.
        lost: the samples ranked just below the cut, paired with ``tail``.
        lam: blend weight of each tail sample (its partner gets 1 - lam).
    """
    kept: torch.Tensor
    tail: torch.Tensor
    lost: torch.Tensor
    lam: torch.Tensor

    @property
    def num_blended(self) -> int:
        return int(self.tail.numel())


def condense(order: torch.Tensor, current_size: int, num_keep: int,
             lam_range: Sequence[float] = (0.7, 1.0),
             summary: bool = True) -> Condensation:
    """Three-way partition of the ranked samples and tail/lost pairing.

    Keeps the top ``num_keep``. The L = ``current_size - num_keep`` samples
    just below the cut are dropped; the k-th of them (k = 0 highest) is
    folded into the k-th of the L lowest kept samples with
    ``lam_k = lam_min + (lam_max - lam_min) * (L - k) / L``. If fewer than L
    samples are kept, only that many pairs are formed.

    Args:
        order: all N indices, best first (:func:`rank_samples`).
        current_size: |D_t|, the size of the kept set being condensed.
        num_keep: n_{t+1}.
        lam_range: (lam_min, lam_max); the reference uses (0.7, 1.0).
        summary: False gives the reference's prune-only variant.
    """
    if not 0 < num_keep <= order.numel():
        raise ValueError(f'cannot keep {num_keep} of {order.numel()} samples')
    kept = order[:num_keep]
    num_lost = max(current_size - num_keep, 0)
    num_pairs = min(num_lost, num_keep) if summary else 0
    lost = order[num_keep:num_keep + num_pairs]
    tail = order[num_keep - num_pairs:num_keep]
    lam_min, lam_max = lam_range
    k = torch.arange(num_pairs, dtype=torch.float64)
    lam = lam_min + (lam_max - lam_min) * (num_lost - k) / max(num_lost, 1)
    return Condensation(kept=kept, tail=tail, lost=lost, lam=lam.float())


def check_lam_range(lam_range: Tuple[float, float]) -> Tuple[float, float]:
    """Validate (lam_min, lam_max) within [0, 1]; returns floats."""
    lo, hi = (float(x) for x in lam_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(
            f'lam_range={tuple(lam_range)} must satisfy 0 <= lam_min <= '
            'lam_max <= 1 (the tail sample keeps lam of its own pixels); '
            'the reference uses (0.7, 1.0).')
    return lo, hi


def seeded_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one (run seed, stage or epoch) pair."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(step)) % 2**63)
    return gen


def random_order(num_samples: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random ranking of all N samples (for ``condense``)."""
    return torch.randperm(num_samples, generator=gen)


def full_tail_epochs(max_epochs: int, ratio: float) -> int:
    """Epochs at the end of an InfoBatch run that train on all data.

    ``ceil(ratio * max_epochs)`` (InfoBatch's 12.5% rounded up, so a short
    run still anneals on full data), at most all epochs but the first.
    """
    return min(max(max_epochs - 1, 0), math.ceil(ratio * max_epochs - 1e-9))


def infobatch_sizes(num_samples: int, budget: int, sample_iters: int,
                    start_epoch: int, max_epochs: int,
                    full_tail: int) -> List[int]:
    """Planned training-set size of epochs ``start_epoch .. max_epochs-1``.

    Epoch 0 and the last ``full_tail`` epochs use all N samples; the
    pruned epochs in between share what is left of ``budget`` after
    ``sample_iters`` (samples trained so far) as evenly as integers allow
    (earlier epochs get the odd samples), each between 0 and N.
    """
    epochs = range(start_epoch, max_epochs)
    pruned = [e for e in epochs if 1 <= e < max_epochs - full_tail]
    rest = budget - sample_iters - (len(epochs) - len(pruned)) * num_samples
    base, extra = divmod(max(rest, 0), max(len(pruned), 1))
    share = {
        e: min(num_samples, base + (i < extra))
        for i, e in enumerate(pruned)
    }
    return [share.get(e, num_samples) for e in epochs]


@dataclass
class InfoBatchPrune:
    """One epoch's InfoBatch selection.

    Attributes:
        kept: indices trained on in the epoch, ascending.
        upweighted: bool mask over N, the kept below-mean samples (their
            loss is multiplied by ``weight``).
        ratio: r, the fraction of the below-mean samples dropped.
        weight: 1 / (1 - r); 1 when nothing below the mean survives.
        below_mean: how many samples had a latest value below the mean.
        capped: the target needed more than all below-mean samples dropped
            (r was capped at 1 and the epoch is larger than planned).
    """
    kept: torch.Tensor
    upweighted: torch.Tensor
    ratio: float
    weight: float
    below_mean: int
    capped: bool


def infobatch_prune(latest: torch.Tensor, target: int,
                    gen: torch.Generator,
                    ratio: Optional[float] = None) -> InfoBatchPrune:
    """Drop ``N - target`` random below-mean samples (at most all of
    them), or, with ``ratio``, ``round(ratio * below-mean count)`` of them
    (InfoBatch's fixed r; ``target`` is then ignored).

    Args:
        latest: each sample's latest recorded value (NaN: none yet; such
            samples count as above the mean and are always kept).
        target: the epoch's planned size.
        gen: the epoch's generator.
        ratio: InfoBatch's fixed prune ratio, or None.
    """
    n = latest.numel()
    finite = torch.isfinite(latest)
    low = torch.zeros(n, dtype=torch.bool)
    if bool(finite.any()):
        values = latest.double()
        low = finite & (values < values[finite].mean())
    low_idx = torch.nonzero(low).flatten()
    num_low = low_idx.numel()
    want = max(n - int(target), 0)
    if ratio is not None:
        want = int(round(float(ratio) * num_low))
    drop = min(want, num_low)
    dropped = low_idx[torch.randperm(num_low, generator=gen)[:drop]]
    keep = torch.ones(n, dtype=torch.bool)
    keep[dropped] = False
    survivors = num_low - drop
    return InfoBatchPrune(
        kept=torch.nonzero(keep).flatten(),
        upweighted=low & keep,
        ratio=drop / num_low if num_low else 0.0,
        weight=num_low / survivors if survivors else 1.0,
        below_mean=num_low,
        capped=want > num_low)
