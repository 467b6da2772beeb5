"""The math of the strategies KCD is compared with, at KCD's sample budget.

``KCDHook(strategy=...)`` picks how the kept set is chosen (the selectors
of :mod:`.selection`). ``'kcd'`` is the E-step of :mod:`.condensation`;
the others are what a user runs next to it, spending exactly KCD's samples
(``keep_schedule``) unless said otherwise:

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

Random draws come from a generator seeded by (run seed, stage or epoch):
the same on every rank and again after a resume. Pure torch, no mmengine.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import torch


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
