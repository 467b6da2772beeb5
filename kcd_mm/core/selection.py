"""Selectors: how the kept set is chosen at each E-step, one class each.

The registered selectors are short classes of one interface, read best
side by side.

:class:`KCDState` holds one selector, built from
:data:`kcd_mm.registry.SELECTORS` by ``KCDHook(strategy=...)``, and asks
it, at every boundary it names, for the next kept set. The selector owns
whatever only its strategy needs (InfoBatch's latest values and loss
weights), saves it in :meth:`Selector.state_dict`, and so nothing of one
strategy survives a resume under another.

* ``'kcd'``: the method's condensation (:mod:`.condensation`).
* ``'random'``: random subsets of KCD's sizes (:mod:`.condensation`).
* ``'infobatch'``: InfoBatch pruning at KCD's sample budget.
* ``'per_epoch_random'``: a fresh random subset of KCD's size every epoch
  (RS2).

A new strategy is a subclass registered with
``@SELECTORS.register_module('name')``. Pure torch apart from the registry.
"""
import functools
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..registry import SELECTORS
from .bank import EpochDelta, KnowledgeBank
from .condensation import (Condensation, balance_classes, boundary_epochs,
                           condense, cost_aware_scores, full_tail_epochs,
                           infobatch_prune, infobatch_sizes, keep_schedule,
                           next_keep_size, random_order, rank_samples,
                           seeded_generator)

LogLine = Tuple[int, str]  # (logging level, message)


@dataclass
class Selection:
    """One E-step's choice.

    Attributes:
        pairs: the kept set (``pairs.kept``) and its summary pairs (empty
            for a selector that forms none).
        scores: every sample's score as the selector saw it (for the stage
            snapshot).
        extra: the selector's own fields of the stage record.
    """
    pairs: Condensation
    scores: torch.Tensor
    extra: Dict = field(default_factory=dict)


class Selector:
    """Base class: stage boundaries and sizes of KCD's keep schedule.

    Args:
        options (KCDOptions): the E-step options.
        num_samples (int): N.
        max_epochs (int, optional): the run's length; needed by
            :meth:`boundaries`, :meth:`planned_sizes` and :attr:`budget`.
        seed (int): the run's seed, for selectors that draw at random.
        labels (Tensor, optional): class of each sample.
    """

    #: forms summary pairs (tail blended with a dropped partner)
    forms_pairs = False
    #: honours ``class_min_keep``
    balances_classes = False
    #: hands per-sample loss weights to ValueWeightedLoss
    weights_losses = False

    def __init__(self, options, num_samples: int,
                 max_epochs: Optional[int] = None, seed: int = 0,
                 labels: Optional[torch.Tensor] = None) -> None:
        self.options = options
        self.num_samples = int(num_samples)
        self.max_epochs = max_epochs
        self.seed = int(seed)
        self.labels = labels

    @functools.cached_property
    def budget(self) -> int:
        """KCD's total samples for the run: the sum of its keep schedule
        (fixed by the options and N, so computed once)."""
        opts = self.options
        return sum(
            keep_schedule(self.num_samples, opts.theta, opts.num_steps,
                          opts.stage_epochs, self.max_epochs))

    def budget_note(self) -> str:
        """What the run will spend, for the set-up log line."""
        return f'sample budget {self.budget}'

    def boundaries(self) -> List[int]:
        """Epochs completed at each E-step."""
        return boundary_epochs(self.options.stage_epochs, self.max_epochs)

    def planned_sizes(self, start_epoch: int, kept_size: int,
                      sample_iters: int) -> List[int]:
        """Training-set size of each epoch from ``start_epoch`` on (ETA)."""
        opts = self.options
        return keep_schedule(self.num_samples, opts.theta, opts.num_steps,
                             opts.stage_epochs, self.max_epochs, start_epoch,
                             kept_size)

    def observe(self, delta: EpochDelta) -> None:
        """See one epoch's merged records (all ranks); default: nothing."""

    def select(self, bank: KnowledgeBank, current_size: int, stage: int,
               epoch: int, sample_iters: int) -> Selection:
        """Choose the kept set of E-step ``stage`` (1, 2, ...), run after
        ``epoch`` epochs with ``sample_iters`` samples trained so far (the
        record's ``sample_iters``)."""
        raise NotImplementedError

    def sample_weights(self,
                       sample_idx: torch.Tensor) -> Optional[torch.Tensor]:
        """Loss weight of each sample of a batch; None when all are 1."""
        return None

    def describe(self, record) -> List[LogLine]:
        """Log lines of the selector's own fields of a StageRecord."""
        return []

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass


@SELECTORS.register_module('kcd')
class KCDSelector(Selector):
    """KCD: rank by cost-aware score, keep the top n_{t+1}, pair the tail
    with the samples just dropped (prune only with ``summary=False``)."""

    forms_pairs = True
    balances_classes = True

    def _order(self, scores: torch.Tensor, stage: int) -> torch.Tensor:
        # Ties (e.g. all-equal values) broken by a seeded permutation,
        # the same on every rank, not by index.
        return rank_samples(
            scores,
            random_order(self.num_samples,
                         seeded_generator(self.seed, -stage)))

    def select(self, bank: KnowledgeBank, current_size: int, stage: int,
               epoch: int, sample_iters: int) -> Selection:
        opts = self.options
        scores = cost_aware_scores(bank.value_sum, bank.visits,
                                   opts.score_exponent, opts.ref_epochs)
        num_keep = next_keep_size(self.num_samples, current_size, opts.theta,
                                  opts.num_steps)
        order = self._order(scores, stage)
        if opts.class_min_keep > 0:
            order = balance_classes(order, num_keep, self.labels,
                                    opts.class_min_keep)
        pairs = condense(order, current_size, num_keep, opts.lam_range,
                         opts.blends)
        return Selection(pairs=pairs, scores=scores.float())


@SELECTORS.register_module('random')
class RandomSelector(KCDSelector):
    """A uniformly random subset of KCD's next size at each E-step, drawn
    from (run seed, stage): identical on every rank and after a resume."""

    forms_pairs = False
    balances_classes = False

    def _order(self, scores: torch.Tensor, stage: int) -> torch.Tensor:
        return random_order(self.num_samples,
                            seeded_generator(self.seed, stage))


@SELECTORS.register_module('infobatch')
class InfoBatchSelector(Selector):
    """InfoBatch (Qin et al., ICLR 2024) at KCD's budget, every epoch.

    Drops a fraction r of the samples whose latest value is below the mean
    and weights the surviving ones' loss 1 / (1 - r); the first epoch and
    the last ``ceil(infobatch_full_epochs_ratio * max_epochs)`` train on
    all data; r is planned each epoch from the samples actually trained, so the
    run lands on KCD's total; or, with ``infobatch_ratio``, InfoBatch's
    own fixed r, and the run spends what that gives. See
    :mod:`.condensation`.
    """

    weights_losses = True

    def __init__(self, options, num_samples: int,
                 max_epochs: Optional[int] = None, seed: int = 0,
                 labels: Optional[torch.Tensor] = None) -> None:
        if max_epochs is None:
            raise ValueError("strategy='infobatch' needs max_epochs")
        super().__init__(options, num_samples, max_epochs, seed, labels)
        # Each sample's latest epoch value (NaN: never seen), and the kept
        # below-mean samples with their loss weight.
        self.latest = torch.full((self.num_samples, ), float('nan'))
        self.upweighted: Optional[torch.Tensor] = None
        self.loss_weight = 1.0

    def boundaries(self) -> List[int]:
        return list(range(1, self.max_epochs))

    def budget_note(self) -> str:
        ratio = self.options.infobatch_ratio
        if ratio is None:
            return super().budget_note()
        return (f"no sample budget (InfoBatch's own r={ratio}: the run "
                "spends what its values give; KCD's options would spend "
                f'{self.budget})')

    def _plan(self, start_epoch: int, sample_iters: int) -> List[int]:
        return infobatch_sizes(
            self.num_samples, self.budget, sample_iters, start_epoch,
            self.max_epochs,
            full_tail_epochs(self.max_epochs,
                             self.options.infobatch_full_epochs_ratio))

    def planned_sizes(self, start_epoch: int, kept_size: int,
                      sample_iters: int) -> List[int]:
        if start_epoch >= self.max_epochs:
            return []
        if self.options.infobatch_ratio is not None:
            # Fixed r: the sizes follow the values, unknown in advance;
            # for the ETA, pruned epochs as this one, the others full.
            tail = full_tail_epochs(self.max_epochs,
                                    self.options.infobatch_full_epochs_ratio)
            return [kept_size] + [
                self.num_samples if e >= self.max_epochs - tail else
                kept_size for e in range(start_epoch + 1, self.max_epochs)]
        return [kept_size] + self._plan(start_epoch + 1,
                                        sample_iters + kept_size)

    def observe(self, delta: EpochDelta) -> None:
        seen = delta.visits > 0
        self.latest[seen] = delta.value_sum[seen] / delta.visits[seen]

    def select(self, bank: KnowledgeBank, current_size: int, stage: int,
               epoch: int, sample_iters: int) -> Selection:
        target = self._plan(epoch, sample_iters)[0]
        ratio = self.options.infobatch_ratio
        if ratio is not None:  # full only where InfoBatch trains on all
            tail = full_tail_epochs(self.max_epochs,
                                    self.options.infobatch_full_epochs_ratio)
            if epoch < self.max_epochs - tail:
                target = self.num_samples - 1
        full = target >= self.num_samples
        prune = None
        if not full:
            prune = infobatch_prune(self.latest, target,
                                    seeded_generator(self.seed, epoch),
                                    ratio)
        kept = torch.arange(self.num_samples) if full else prune.kept
        weighted = prune is not None and prune.weight != 1.0
        self.upweighted = prune.upweighted if weighted else None
        self.loss_weight = prune.weight if weighted else 1.0
        empty = torch.zeros(0, dtype=torch.int64)
        pairs = Condensation(kept=kept, tail=empty, lost=empty,
                             lam=torch.zeros(0))
        if ratio is not None:  # fixed r: the size it gave is the plan
            target = int(kept.numel())
        extra = dict(
            target=target,
            prune_ratio=0.0 if full else prune.ratio,
            loss_weight=self.loss_weight,
            below_mean=0 if full else prune.below_mean,
            budget=self.budget,
            budget_capped=bool(prune is not None and prune.capped))
        return Selection(pairs=pairs, scores=self.latest.clone(),
                         extra=extra)

    def sample_weights(self,
                       sample_idx: torch.Tensor) -> Optional[torch.Tensor]:
        if self.upweighted is None:
            return None
        weights = torch.ones(sample_idx.numel())
        weights[self.upweighted[sample_idx.reshape(-1)]] = self.loss_weight
        return weights

    def describe(self, record) -> List[LogLine]:
        info = record.extra
        lines = [(logging.INFO, (
            f'KCD infobatch: epoch {record.epoch + 1} trains on '
            f"{record.kept} (planned {info['target']}), dropping "
            f"{100 * info['prune_ratio']:.1f}% of the "
            f"{info['below_mean']} below-mean samples, the rest "
            f"weighted {info['loss_weight']:.3f}"))]
        if info['budget_capped']:
            lines.append((logging.WARNING, (
                'KCD infobatch: dropping every below-mean sample still '
                f"leaves {record.kept} > {info['target']} planned; "
                'later epochs are planned smaller to make up, and the '
                f"run overspends KCD's budget {info['budget']} if "
                'they cannot.')))
        return lines

    def state_dict(self) -> Dict:
        return dict(
            latest=self.latest.clone(),
            upweighted=None
            if self.upweighted is None else self.upweighted.clone(),
            loss_weight=self.loss_weight)

    def load_state_dict(self, state: Dict) -> None:
        self.latest.fill_(float('nan'))
        if state.get('latest') is not None:
            self.latest.copy_(state['latest'])
        self.upweighted = state.get('upweighted')
        self.loss_weight = float(state.get('loss_weight', 1.0))


@SELECTORS.register_module('per_epoch_random')
class PerEpochRandomSelector(Selector):
    """A fresh uniformly random subset every epoch, of KCD's size for that
    epoch (RS2, Okanovic et al., arXiv 2305.18424, without replacement
    within an epoch): the literature's hard-to-beat baseline for training
    on a budget, and KCD's exact sample budget.

    Epoch ``e`` (0-based) trains on ``keep_schedule(...)[e]`` samples drawn
    from all N without replacement, from (run seed, e): identical on every
    rank and after a resume, with no state to save. Unlike ``'random'``,
    which keeps one subset for a whole stage and only shrinks it, a sample
    dropped in one epoch may return in the next. One record per epoch.
    """

    #: the generator stream of this selector, apart from the others'
    STREAM = 1 << 20

    def __init__(self, options, num_samples: int,
                 max_epochs: Optional[int] = None, seed: int = 0,
                 labels: Optional[torch.Tensor] = None) -> None:
        if max_epochs is None:
            raise ValueError("strategy='per_epoch_random' needs max_epochs")
        super().__init__(options, num_samples, max_epochs, seed, labels)

    @functools.cached_property
    def sizes(self) -> List[int]:
        """Every epoch's size: KCD's keep schedule for the run."""
        opts = self.options
        return keep_schedule(self.num_samples, opts.theta, opts.num_steps,
                             opts.stage_epochs, self.max_epochs)

    def boundaries(self) -> List[int]:
        return list(range(1, self.max_epochs))

    def planned_sizes(self, start_epoch: int, kept_size: int,
                      sample_iters: int) -> List[int]:
        return self.sizes[start_epoch:]

    def select(self, bank: KnowledgeBank, current_size: int, stage: int,
               epoch: int, sample_iters: int) -> Selection:
        size = self.sizes[epoch]
        if size >= self.num_samples:
            kept = torch.arange(self.num_samples)
        else:
            order = random_order(
                self.num_samples,
                seeded_generator(self.seed, self.STREAM + epoch))
            kept = order[:size].sort().values
        empty = torch.zeros(0, dtype=torch.int64)
        pairs = Condensation(kept=kept, tail=empty, lost=empty,
                             lam=torch.zeros(0))
        return Selection(pairs=pairs, scores=bank.mean_values().float())


def build_selector(options, num_samples: int,
                   max_epochs: Optional[int] = None, seed: int = 0,
                   labels: Optional[torch.Tensor] = None) -> Selector:
    """The selector ``options.strategy`` names, for this run."""
    return SELECTORS.get(options.strategy)(options, num_samples, max_epochs,
                                           seed, labels)
