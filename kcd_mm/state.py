"""KCDState: the one owner of everything KCD adds to a training run.

The bank, the current kept set, the summary pairs, the stage count and the
sample-iteration count live here and nowhere else; checkpoints save and
restore exactly :meth:`KCDState.state_dict`. Pure torch, no mmengine: the
hook wires it to the Runner.
"""
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .bank import KnowledgeBank
from .condensation import (Condensation, balance_classes, check_lam_range,
                           condense, cost_aware_scores, next_keep_size,
                           rank_samples)


@dataclass(frozen=True)
class KCDOptions:
    """The E-step's options (reference defaults); see docs/configuration.md.

    Attributes:
        stage_epochs: T, epochs between two E-steps (reference: 40).
        theta: keep floor as a fraction of N (reference: 0.7).
        num_steps: K, condensations to go from N to the floor (reference: 6).
        score_exponent: exponent on F/T_ref in the score (reference: 0.03).
        score_ref_epochs: T_ref; None means ``stage_epochs``.
        lam_range: (lam_min, lam_max) of the summary blend.
        summary: blend dropped samples into the tail (False: prune only).
        class_min_keep: keep at least this fraction of every class (0: off,
            the reference); needs the samples' labels.
    """
    stage_epochs: int = 40
    theta: float = 0.7
    num_steps: int = 6
    score_exponent: float = 0.03
    score_ref_epochs: Optional[float] = None
    lam_range: Tuple[float, float] = (0.7, 1.0)
    summary: bool = True
    class_min_keep: float = 0.0

    def __post_init__(self):
        if not isinstance(self.stage_epochs, int) or self.stage_epochs < 1:
            raise ValueError(
                f'KCD stage_epochs={self.stage_epochs!r} must be an integer '
                '>= 1 (epochs between two condensations; reference: 40).')
        if not 0.0 < float(self.theta) <= 1.0:
            raise ValueError(
                f'KCD theta={self.theta!r} must lie in (0, 1]: it is the '
                'fraction of the training set kept at the end (reference: '
                '0.7; 1.0 keeps everything).')
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(
                f'KCD num_steps={self.num_steps!r} must be an integer >= 1 '
                '(condensations from N down to theta*N; reference: 6).')
        if self.score_exponent < 0:
            raise ValueError(
                f'KCD score_exponent={self.score_exponent!r} must be >= 0 '
                '(reference: 0.03; 0 ranks by mean value alone).')
        if self.score_ref_epochs is not None and self.score_ref_epochs <= 0:
            raise ValueError(
                f'KCD score_ref_epochs={self.score_ref_epochs!r} must be > 0 '
                'or None (None uses stage_epochs, as the reference does).')
        if not 0.0 <= self.class_min_keep <= self.theta:
            raise ValueError(
                f'KCD class_min_keep={self.class_min_keep!r} must lie in '
                f'[0, theta={self.theta}]: no more of a class can be kept '
                'than of the whole set (0 turns balancing off).')
        object.__setattr__(self, 'lam_range', check_lam_range(self.lam_range))

    @property
    def ref_epochs(self) -> float:
        return float(self.score_ref_epochs or self.stage_epochs)


class KCDState:
    """KCD's state for a training set of ``num_samples`` samples.

    Args:
        num_samples (int): N.
        options (KCDOptions): the E-step options.
        labels (Tensor, optional): class of each sample, needed for
            ``options.class_min_keep``.
    """

    def __init__(self,
                 num_samples: int,
                 options: KCDOptions,
                 labels: Optional[torch.Tensor] = None) -> None:
        if options.class_min_keep > 0 and (labels is None
                                           or labels.numel() != num_samples):
            raise ValueError('class_min_keep needs one label per sample')
        self.options = options
        self.labels = labels
        self.num_samples = int(num_samples)
        self.bank = KnowledgeBank(num_samples)
        self.kept: Optional[torch.Tensor] = None  # None: all N
        self.pairs: Optional[Condensation] = None
        self.stage = 0
        self.sample_iters = 0
        self.full_kd_sample_iters = 0
        self.records: List[Dict] = []
        self.last_scores: Optional[torch.Tensor] = None  # not checkpointed

    @property
    def kept_size(self) -> int:
        return self.num_samples if self.kept is None else int(
            self.kept.numel())

    def count_epoch(self, samples_trained: int) -> None:
        """Add one finished epoch's sample count (all ranks together)."""
        self.sample_iters += int(samples_trained)
        self.full_kd_sample_iters += self.num_samples

    def estep(self, epoch: int) -> Dict:
        """Rank all samples, condense the kept set; return the stage record.

        Call after ``bank.merge`` has summed every rank's records: the
        ranking then depends only on the merged totals, so every rank
        computes the same kept set.
        """
        start = time.perf_counter()
        opts = self.options
        scores = cost_aware_scores(self.bank.value_sum, self.bank.visits,
                                   opts.score_exponent, opts.ref_epochs)
        order = rank_samples(scores)
        self.last_scores = scores.float()
        current = self.kept_size
        num_keep = next_keep_size(self.num_samples, current, opts.theta,
                                  opts.num_steps)
        if opts.class_min_keep > 0:
            order = balance_classes(order, num_keep, self.labels,
                                    opts.class_min_keep)
        self.pairs = condense(order, current, num_keep, opts.lam_range,
                              opts.summary)
        self.kept = self.pairs.kept
        self.stage += 1
        record = dict(
            stage=self.stage,
            epoch=int(epoch),
            num_samples=self.num_samples,
            kept=num_keep,
            blended=self.pairs.num_blended,
            dropped=self.num_samples - num_keep,
            sample_iters=self.sample_iters,
            full_kd_sample_iters=self.full_kd_sample_iters,
            estep_seconds=time.perf_counter() - start)
        record.update(self.bank.pop_stats())
        self.records.append(record)
        return record

    def state_dict(self) -> Dict:
        """Everything needed to continue the run exactly."""
        pairs = None
        if self.pairs is not None:
            pairs = {k: v.clone() for k, v in asdict(self.pairs).items()}
        return dict(
            version=1,
            options=asdict(self.options),
            num_samples=self.num_samples,
            bank=self.bank.state_dict(),
            kept=None if self.kept is None else self.kept.clone(),
            pairs=pairs,
            stage=self.stage,
            sample_iters=self.sample_iters,
            full_kd_sample_iters=self.full_kd_sample_iters,
            records=[dict(r) for r in self.records])

    def load_state_dict(self, state: Dict) -> None:
        """Restore a saved state; the dataset size must match.

        Options are not restored: the caller's (possibly changed) options
        apply from the next E-step on, and the caller logs the difference.
        """
        if int(state['num_samples']) != self.num_samples:
            raise ValueError(
                f'The checkpoint\'s KCD state is for a training set of '
                f'{int(state["num_samples"])} samples, this run\'s has '
                f'{self.num_samples}. Resume with the same dataset, or start '
                'a new run (load_from= instead of resume).')
        self.bank.load_state_dict(state['bank'])
        self.kept = state['kept']
        pairs = state['pairs']
        self.pairs = None if pairs is None else Condensation(**pairs)
        self.stage = int(state['stage'])
        self.sample_iters = int(state['sample_iters'])
        self.full_kd_sample_iters = int(state['full_kd_sample_iters'])
        self.records = [dict(r) for r in state['records']]
