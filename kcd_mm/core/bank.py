"""The knowledge bank: O(N) online statistics of every sample's value.

KCD's E-step needs, for each of the N training samples, how often it was
trained on (F) and the mean of its recorded values (V) over the whole run.
The reference keeps an N x epochs history; the bank keeps running sums and
counts instead (20 bytes a sample: 26 MB at ImageNet-1k's 1.28M).

Records go into a *local* delta first, so each rank counts only what it
saw; :meth:`merge` folds the deltas of all ranks (summed by the caller's
``reduce_fn``) into the global totals, after which every rank holds the
same totals. :meth:`merge` also returns the merged delta, from which a
selector that needs each epoch's values (InfoBatch) keeps its own copy.
Pure torch, no mmengine.
"""
import math
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


class EpochDelta(NamedTuple):
    """What all ranks recorded since the last merge: per-sample value sums
    and visit counts (one epoch, when merged once per epoch)."""
    value_sum: torch.Tensor
    visits: torch.Tensor


class KnowledgeBank:
    """Running per-sample value sums and visit counts.

    Args:
        num_samples (int): N, the size of the full training set.
    """

    def __init__(self, num_samples: int) -> None:
        if num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {num_samples}')
        self.num_samples = int(num_samples)
        self.value_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.visits = torch.zeros(num_samples, dtype=torch.int32)
        self._delta_sum = torch.zeros(num_samples, dtype=torch.float32)
        self._delta_visits = torch.zeros(num_samples, dtype=torch.int32)
        # [sum, sum of squares, count, skipped non-finite] since last stats()
        self._moments = torch.zeros(4, dtype=torch.float64)
        self._merged_moments = torch.zeros(4, dtype=torch.float64)

    def record(self, sample_idx: torch.Tensor, values: torch.Tensor) -> int:
        """Add one batch of values; non-finite ones are skipped.

        Returns:
            int: how many values were skipped as NaN/inf.
        """
        sample_idx = sample_idx.reshape(-1).to('cpu', torch.int64)
        values = values.detach().reshape(-1).to('cpu', torch.float32)
        if sample_idx.numel() != values.numel():
            raise ValueError(f'{sample_idx.numel()} sample indices for '
                             f'{values.numel()} values')
        finite = torch.isfinite(values)
        skipped = int(finite.numel() - finite.sum())
        if skipped:
            sample_idx, values = sample_idx[finite], values[finite]
        if sample_idx.numel() and (int(sample_idx.min()) < 0 or int(
                sample_idx.max()) >= self.num_samples):
            raise IndexError(
                f'sample_idx out of range [0, {self.num_samples}): the '
                'dataset recording values is not the one the bank was sized '
                'for')
        self._delta_sum.index_add_(0, sample_idx, values)
        self._delta_visits.index_add_(
            0, sample_idx, torch.ones_like(sample_idx, dtype=torch.int32))
        v = values.double()
        self._moments += torch.stack([
            v.sum(), (v * v).sum(),
            torch.tensor(float(v.numel()), dtype=torch.float64),
            torch.tensor(float(skipped), dtype=torch.float64)
        ])
        return skipped

    def merge(self, reduce_fn: Optional[ReduceFn] = None) -> EpochDelta:
        """Fold the local deltas (summed over ranks by ``reduce_fn``) in;
        return the merged deltas."""
        delta_sum = self._delta_sum.clone()
        delta_visits = self._delta_visits.clone()
        moments = self._moments.clone()
        if reduce_fn is not None:
            delta_sum = reduce_fn(delta_sum)
            delta_visits = reduce_fn(delta_visits)
            moments = reduce_fn(moments)
        self.value_sum += delta_sum.double()
        self.visits += delta_visits
        self._merged_moments += moments
        self._delta_sum.zero_()
        self._delta_visits.zero_()
        self._moments.zero_()
        return EpochDelta(delta_sum, delta_visits)

    @property
    def merged_counts(self) -> Tuple[int, int]:
        """(recorded, skipped non-finite) values merged since the last
        :meth:`pop_stats`."""
        return int(self._merged_moments[2]), int(self._merged_moments[3])

    def pop_stats(self) -> Dict[str, float]:
        """Mean/std/count/skipped of the values merged since the last call."""
        total, sq, count, skipped = (float(x) for x in self._merged_moments)
        self._merged_moments.zero_()
        mean = total / count if count else float('nan')
        var = max(sq / count - mean * mean, 0.0) if count else float('nan')
        return dict(
            value_mean=mean,
            value_std=math.sqrt(var) if count else float('nan'),
            values_recorded=int(count),
            values_skipped=int(skipped))

    def mean_values(self) -> torch.Tensor:
        """V(x): mean recorded value, 0 for never-visited samples."""
        return self.value_sum / self.visits.clamp(min=1).double()

    @property
    def nbytes(self) -> int:
        """Bytes of per-sample state held."""
        tensors = [self.value_sum, self.visits, self._delta_sum,
                   self._delta_visits]
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Merged totals only.

        Unmerged records belong to an unfinished epoch, which mmengine runs
        again from its start on resume; saving them would count it twice.
        """
        state = dict(
            num_samples=self.num_samples,
            value_sum=self.value_sum.clone(),
            visits=self.visits.clone(),
            stage_moments=self._merged_moments.clone())
        return state

    def load_state_dict(self, state: Dict) -> None:
        """Restore totals saved by :meth:`state_dict`."""
        if int(state['num_samples']) != self.num_samples:
            raise ValueError(
                f'Saved KCD knowledge bank covers {int(state["num_samples"])}'
                f' samples but the training set now has {self.num_samples}:'
                ' the dataset changed since the checkpoint was written. '
                'Resume with the same dataset, or start a new run.')
        self.value_sum.copy_(state['value_sum'])
        self.visits.copy_(state['visits'])
        self._merged_moments.copy_(state['stage_moments'])
        self._moments.zero_()
        self._delta_sum.zero_()
        self._delta_visits.zero_()
