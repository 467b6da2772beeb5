"""KCDState: the one owner of everything KCD adds to a training run.

The bank, the current kept set, the summary pairs, the stage count and the
sample-iteration count (and, for the comparison strategies, the run seed
and InfoBatch's loss weights) live here and nowhere else; checkpoints save
and restore exactly :meth:`KCDState.state_dict`. Pure torch, no mmengine:
the hook wires it to the Runner.
"""
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .bank import KnowledgeBank
from .condensation import (Condensation, balance_classes, boundary_epochs,
                           check_lam_range, condense, cost_aware_scores,
                           keep_schedule, next_keep_size, rank_samples)
from .strategies import (check_strategy, full_tail_epochs, infobatch_prune,
                         infobatch_sizes, random_order, seeded_generator)


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
        strategy: how the kept set is chosen: ``'kcd'`` (the method),
            ``'random'`` or ``'infobatch'`` (comparisons at KCD's sample
            budget, see :mod:`kcd_mm.strategies`).
        infobatch_full_epochs_ratio: with ``'infobatch'``, the last
            ``ceil(ratio * max_epochs)`` epochs train on all data.
    """
    stage_epochs: int = 40
    theta: float = 0.7
    num_steps: int = 6
    score_exponent: float = 0.03
    score_ref_epochs: Optional[float] = None
    lam_range: Tuple[float, float] = (0.7, 1.0)
    summary: bool = True
    class_min_keep: float = 0.0
    strategy: str = 'kcd'
    infobatch_full_epochs_ratio: float = 0.125

    def __post_init__(self):
        check_strategy(self.strategy)
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
        if self.class_min_keep > 0 and self.strategy != 'kcd':
            raise ValueError(
                "KCD class_min_keep applies to strategy='kcd' only, not "
                f'{self.strategy!r}; set class_min_keep=0.')
        if not 0.0 <= self.infobatch_full_epochs_ratio < 1.0:
            raise ValueError(
                'KCD infobatch_full_epochs_ratio='
                f'{self.infobatch_full_epochs_ratio!r} must lie in [0, 1): '
                'the fraction of final epochs on all data (InfoBatch: '
                '0.125).')
        object.__setattr__(self, 'lam_range', check_lam_range(self.lam_range))

    @property
    def ref_epochs(self) -> float:
        return float(self.score_ref_epochs or self.stage_epochs)

    @property
    def blends(self) -> bool:
        """Summary pairs are formed (only KCD's condensation has them)."""
        return self.summary and self.strategy == 'kcd'


class KCDState:
    """KCD's state for a training set of ``num_samples`` samples.

    Args:
        num_samples (int): N.
        options (KCDOptions): the E-step options.
        labels (Tensor, optional): class of each sample, needed for
            ``options.class_min_keep``.
        seed (int): the run's seed; the random strategies draw from it
            (saved, so a resumed run draws the same). Defaults to 0.
        max_epochs (int, optional): the run's length; needed by
            :meth:`boundaries`, :meth:`planned_sizes` and ``'infobatch'``.
        fingerprint (str, optional): identifies the training set beyond its
            size (a hash of its labels); a resume refuses a checkpoint whose
            fingerprint differs.
    """

    def __init__(self,
                 num_samples: int,
                 options: KCDOptions,
                 labels: Optional[torch.Tensor] = None,
                 seed: int = 0,
                 max_epochs: Optional[int] = None,
                 fingerprint: Optional[str] = None) -> None:
        if options.class_min_keep > 0 and (labels is None
                                           or labels.numel() != num_samples):
            raise ValueError('class_min_keep needs one label per sample')
        infobatch = options.strategy == 'infobatch'
        if infobatch and max_epochs is None:
            raise ValueError("strategy='infobatch' needs max_epochs")
        self.options = options
        self.labels = labels
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.max_epochs = max_epochs
        self.fingerprint = fingerprint
        self.bank = KnowledgeBank(num_samples, track_latest=infobatch)
        self.kept: Optional[torch.Tensor] = None  # None: all N
        self.pairs: Optional[Condensation] = None
        # InfoBatch: the kept below-mean samples and their loss weight.
        self.upweighted: Optional[torch.Tensor] = None
        self.loss_weight = 1.0
        self.stage = 0
        self.sample_iters = 0
        self.full_kd_sample_iters = 0
        self.records: List[Dict] = []
        self.last_scores: Optional[torch.Tensor] = None  # not checkpointed

    @property
    def kept_size(self) -> int:
        return self.num_samples if self.kept is None else int(
            self.kept.numel())

    @property
    def budget(self) -> int:
        """KCD's total samples for the run: the sum of its keep schedule."""
        opts = self.options
        return sum(
            keep_schedule(self.num_samples, opts.theta, opts.num_steps,
                          opts.stage_epochs, self.max_epochs))

    def boundaries(self) -> List[int]:
        """Epochs completed at each E-step: every epoch for InfoBatch."""
        if self.options.strategy == 'infobatch':
            return list(range(1, self.max_epochs))
        return boundary_epochs(self.options.stage_epochs, self.max_epochs)

    def planned_sizes(self, start_epoch: int) -> List[int]:
        """Training-set size of each epoch from ``start_epoch`` on (ETA)."""
        opts = self.options
        if opts.strategy != 'infobatch':
            return keep_schedule(self.num_samples, opts.theta, opts.num_steps,
                                 opts.stage_epochs, self.max_epochs,
                                 start_epoch, self.kept_size)
        if start_epoch >= self.max_epochs:
            return []
        return [self.kept_size] + self._infobatch_plan(
            start_epoch + 1, self.sample_iters + self.kept_size)

    def _infobatch_plan(self, start_epoch: int, spent: int) -> List[int]:
        return infobatch_sizes(
            self.num_samples, self.budget, spent, start_epoch,
            self.max_epochs,
            full_tail_epochs(self.max_epochs,
                             self.options.infobatch_full_epochs_ratio))

    def sample_weights(self, sample_idx: torch.Tensor
                       ) -> Optional[torch.Tensor]:
        """InfoBatch's loss weight of each sample of a batch; None if all 1."""
        if self.upweighted is None:
            return None
        weights = torch.ones(sample_idx.numel())
        weights[self.upweighted[sample_idx.reshape(-1)]] = self.loss_weight
        return weights

    def count_epoch(self, samples_trained: int) -> None:
        """Add one finished epoch's sample count (all ranks together)."""
        self.sample_iters += int(samples_trained)
        self.full_kd_sample_iters += self.num_samples

    def estep(self, epoch: int) -> Dict:
        """Choose the next kept set by the strategy; return the stage record.

        Call after ``bank.merge`` has summed every rank's records: the
        choice then depends only on the merged totals and the seed, so
        every rank computes the same kept set.
        """
        start = time.perf_counter()
        extra = {}
        if self.options.strategy == 'infobatch':
            extra = self._infobatch_step(epoch)
        else:
            self._condense()
        num_keep = self.kept_size
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
        record.update(extra)
        self.records.append(record)
        return record

    def _condense(self) -> None:
        """KCD's condensation; ``'random'`` ranks by a seeded permutation
        (no summary), so it keeps exactly KCD's sizes."""
        opts = self.options
        scores = cost_aware_scores(self.bank.value_sum, self.bank.visits,
                                   opts.score_exponent, opts.ref_epochs)
        self.last_scores = scores.float()  # snapshot, whatever ranks
        current = self.kept_size
        num_keep = next_keep_size(self.num_samples, current, opts.theta,
                                  opts.num_steps)
        if opts.strategy == 'random':
            order = random_order(self.num_samples,
                                 seeded_generator(self.seed, self.stage + 1))
        else:
            order = rank_samples(scores)
        if opts.class_min_keep > 0:
            order = balance_classes(order, num_keep, self.labels,
                                    opts.class_min_keep)
        self.pairs = condense(order, current, num_keep, opts.lam_range,
                              opts.blends)
        self.kept = self.pairs.kept

    def _infobatch_step(self, epoch: int) -> Dict:
        """Select epoch ``epoch``'s samples (0-based: ``epoch`` epochs done)
        so the run ends on KCD's budget; return the record's extra fields.
        """
        target = self._infobatch_plan(epoch, self.sample_iters)[0]
        full = target >= self.num_samples
        prune = None
        if not full:
            prune = infobatch_prune(self.bank.latest, target,
                                    seeded_generator(self.seed, epoch))
        self.kept = torch.arange(self.num_samples) if full else prune.kept
        weighted = prune is not None and prune.weight != 1.0
        self.upweighted = prune.upweighted if weighted else None
        self.loss_weight = prune.weight if weighted else 1.0
        self.last_scores = self.bank.latest.clone()  # what it thresholds
        empty = torch.zeros(0, dtype=torch.int64)
        self.pairs = Condensation(
            kept=self.kept, tail=empty, lost=empty, lam=torch.zeros(0))
        return dict(
            target=target,
            prune_ratio=0.0 if full else prune.ratio,
            loss_weight=self.loss_weight,
            below_mean=0 if full else prune.below_mean,
            budget=self.budget,
            budget_capped=bool(prune is not None and prune.capped))

    def state_dict(self) -> Dict:
        """Everything needed to continue the run exactly."""
        pairs = None
        if self.pairs is not None:  # its kept set is ``kept``: saved once
            pairs = {
                k: v.clone()
                for k, v in asdict(self.pairs).items() if k != 'kept'
            }
        return dict(
            version=2,
            options=asdict(self.options),
            num_samples=self.num_samples,
            fingerprint=self.fingerprint,
            seed=self.seed,
            upweighted=None
            if self.upweighted is None else self.upweighted.clone(),
            loss_weight=self.loss_weight,
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
        saved = state.get('fingerprint')  # absent before it was recorded
        if saved and self.fingerprint and saved != self.fingerprint:
            raise ValueError(
                f'The checkpoint\'s KCD state is for another training set of '
                f'the same size ({self.num_samples} samples, but the labels '
                'differ in value or order: another ann_file, data_root, '
                'indices or class order). KCD\'s values and kept set name '
                'samples by position, so they would land on the wrong '
                'images. Resume with the same dataset, or start a new run '
                '(load_from= instead of resume).')
        self.bank.load_state_dict(state['bank'])
        self.kept = state['kept']
        pairs = state['pairs']
        self.pairs = None if pairs is None else Condensation(
            **dict(pairs, kept=self.kept))
        self.stage = int(state['stage'])
        self.sample_iters = int(state['sample_iters'])
        self.full_kd_sample_iters = int(state['full_kd_sample_iters'])
        self.records = [dict(r) for r in state['records']]
        # Version 1 (before the comparison strategies) has none of these.
        self.seed = int(state.get('seed', self.seed))
        self.upweighted = state.get('upweighted')
        self.loss_weight = float(state.get('loss_weight', 1.0))
