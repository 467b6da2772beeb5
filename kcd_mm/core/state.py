"""KCDState: the one owner of everything KCD adds to a training run.

The bank, the current kept set and summary pairs, the knowledge summary
(what each kept sample's image is), the stage and sample counts, the stage
records and the selector (with whatever state only its strategy needs)
live here and nowhere else; checkpoints save and restore
exactly :meth:`KCDState.state_dict`. Pure torch: the hook wires it to the
Runner.
"""
import logging
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..fingerprint import fingerprint_scheme, same_dataset
from ..records import CKPT_KEY, StageRecord
from .bank import KnowledgeBank, ReduceFn
from .condensation import Condensation
from .diagnostics import degenerate_stage, weak_value_warnings
from .options import KCDOptions
from .selection import build_selector
from .summary import StageSummary, build_summary

#: ``kcd_state['version']``: 3 moved strategy-only state into ``selector``;
#: 4 added ``summary`` (the persistent summary's images or terms).
STATE_VERSION = 4


class KCDState:
    """KCD's state for a training set of ``num_samples`` samples.

    Args:
        num_samples (int): N.
        options (KCDOptions): the E-step options.
        labels (Tensor, optional): class of each sample, needed for
            ``options.class_min_keep``.
        seed (int): the run's seed; random selectors draw from it (saved,
            so a resumed run draws the same). Defaults to 0.
        max_epochs (int, optional): the run's length; needed by
            :meth:`boundaries`, :meth:`planned_sizes` and ``'infobatch'``.
        fingerprint (str, optional): identifies the training set beyond its
            size (:func:`kcd_mm.fingerprint.fingerprint`: its files or
            images, with labels); a resume refuses a checkpoint whose
            fingerprint differs.
        value_measure (str, optional): the knowledge value measure the
            bank's values come from (saved, so a resume can say when it
            changes).
        in_memory (bool): the dataset holds its images in memory, so the
            persistent summary keeps exact uint8 images (else terms).
    """

    def __init__(self,
                 num_samples: int,
                 options: KCDOptions,
                 labels: Optional[torch.Tensor] = None,
                 seed: int = 0,
                 max_epochs: Optional[int] = None,
                 fingerprint: Optional[str] = None,
                 value_measure: Optional[str] = None,
                 in_memory: bool = False) -> None:
        if options.class_min_keep > 0 and (labels is None
                                           or labels.numel() != num_samples):
            raise ValueError('class_min_keep needs one label per sample')
        self.options = options
        self.num_samples = int(num_samples)
        self.max_epochs = max_epochs
        self.fingerprint = fingerprint
        self.value_measure = value_measure
        self.selector = build_selector(options, num_samples, max_epochs,
                                       seed, labels)
        self.summary = build_summary(
            options.summary if options.blends else False, in_memory,
            options.lam_range, options.summary_terms,
            mixed_labels=options.blend_label == 'mix')
        self.bank = KnowledgeBank(num_samples)
        self.kept: Optional[torch.Tensor] = None  # None: all N
        self.pairs: Optional[Condensation] = None
        self.stage = 0
        self.sample_iters = 0
        self.full_kd_sample_iters = 0
        self.records: List[StageRecord] = []
        self.last_scores: Optional[torch.Tensor] = None  # not checkpointed

    @property
    def seed(self) -> int:
        return self.selector.seed

    @property
    def kept_size(self) -> int:
        return self.num_samples if self.kept is None else int(
            self.kept.numel())

    @property
    def budget(self) -> int:
        """KCD's total samples for the run: the sum of its keep schedule."""
        return self.selector.budget

    def budget_note(self) -> str:
        """The selector's word on what the run spends (for the log)."""
        return self.selector.budget_note()

    def boundaries(self) -> List[int]:
        """Epochs completed at each E-step."""
        return self.selector.boundaries()

    def planned_sizes(self, start_epoch: int) -> List[int]:
        """Training-set size of each epoch from ``start_epoch`` on (ETA)."""
        return self.selector.planned_sizes(start_epoch, self.kept_size,
                                           self.sample_iters)

    def sample_weights(self, sample_idx: torch.Tensor
                       ) -> Optional[torch.Tensor]:
        """The selector's loss weight of each sample; None if all 1."""
        return self.selector.sample_weights(sample_idx)

    def merge(self, reduce_fn: Optional[ReduceFn] = None) -> None:
        """Fold this epoch's records of every rank into the bank (and show
        them to the selector)."""
        self.selector.observe(self.bank.merge(reduce_fn))

    def count_epoch(self, sample_iters: int) -> None:
        """Add one finished epoch's sample count (all ranks together)."""
        self.sample_iters += int(sample_iters)
        self.full_kd_sample_iters += self.num_samples

    # ------------------------------------------ what KCDHook asks of it
    def record(self, sample_idx: torch.Tensor, values: torch.Tensor) -> int:
        """Bank one batch's values; returns how many were skipped as
        non-finite."""
        return self.bank.record(sample_idx, values)

    @property
    def weights_losses(self) -> bool:
        """The selector hands per-sample loss weights (InfoBatch)."""
        return self.selector.weights_losses

    @property
    def bank_mib(self) -> float:
        return self.bank.nbytes / 2**20

    def describe(self, record: StageRecord) -> List[Tuple[int, str]]:
        """The selector's (level, message) lines of a stage record."""
        return self.selector.describe(record)

    def snapshot(self) -> Dict:
        """The last E-step's arrays for ``RecordWriter.write_snapshot``:
        kept, tail, lost, lam, scores, mean_values."""
        pairs = self.pairs
        kept = (torch.arange(self.num_samples)
                if self.kept is None else self.kept)
        return dict(kept=kept.numpy(), tail=pairs.tail.numpy(),
                    lost=pairs.lost.numpy(), lam=pairs.lam.numpy(),
                    scores=self.last_scores.numpy(),
                    mean_values=self.bank.mean_values().float().numpy())

    def weak_values(self, record: StageRecord,
                    classifier_changed: Optional[bool],
                    out_features: Optional[int] = None,
                    num_classes: Optional[int] = None) -> List[str]:
        """Say in ``record`` when the stage's values cannot rank the
        samples (:func:`degenerate_stage`), and return the warnings to log,
        naming the likely cause (:func:`degenerate_cause`)."""
        record.degenerate = degenerate_stage(record.value_mean,
                                             record.value_std,
                                             classifier_changed)
        return weak_value_warnings(record, out_features, num_classes)

    def save_into(self, checkpoint: Dict) -> None:
        """Put this state into a Runner checkpoint (under ``kcd_state``)."""
        checkpoint[CKPT_KEY] = self.state_dict()

    @staticmethod
    def saved_in(checkpoint: Dict) -> Optional[Dict]:
        """The KCD state a Runner checkpoint carries, or None."""
        return checkpoint.get(CKPT_KEY)

    @staticmethod
    def progress_of(saved: Dict) -> Dict[str, int]:
        """``stage``, ``kept`` (count), ``sample_iters`` and
        ``full_kd_sample_iters`` of a saved state (for the tools)."""
        kept = saved.get('kept')
        return dict(
            stage=int(saved['stage']),
            kept=int(saved['num_samples'])
            if kept is None else int(kept.numel()),
            sample_iters=int(saved['sample_iters']),
            full_kd_sample_iters=int(saved['full_kd_sample_iters']))

    def resume(self, saved: Dict, max_epochs: int, epochs_done: int,
               log: Optional[Callable[[int, str], None]] = None
               ) -> Tuple[Dict[str, Tuple], Optional[str]]:
        """Restore ``saved`` (:meth:`load_state_dict`) and say what changed:
        ``({option: (saved, now)}, missed)``, where ``missed`` says why the
        E-step after ``epochs_done`` is due now (the saved run was shorter,
        or the current options schedule one there), else None."""
        saved = self.load_state_dict(saved, log=log)
        changed = self.options.changes_from(saved.get('options', {}))
        old_value = saved.get('value_measure')
        if old_value is not None and old_value != self.value_measure:
            changed['value'] = (old_value, self.value_measure)
        last = self.records[-1].epoch if self.records else 0
        missed = None
        if epochs_done in self.boundaries() and last < epochs_done:
            saved_epochs = saved.get('max_epochs')
            missed = ('that the shorter run skipped'
                      if saved_epochs is not None and saved_epochs < max_epochs
                      else 'that the current options schedule there')
        return changed, missed

    def sampler_args(self) -> Tuple[Optional[torch.Tensor], Dict]:
        """What :meth:`KCDSampler.set_kept` takes: the kept set and each
        summarised sample's key extras."""
        if self.summary is None:
            return self.kept, {}
        return self.kept, self.summary.payloads(self.kept)

    def estep(self, epoch: int,
              images: Optional[Callable] = None) -> StageRecord:
        """Choose the next kept set by the selector; return the stage record.

        Call after :meth:`merge` has summed every rank's records: the
        choice then depends only on the merged totals and the seed, so
        every rank computes the same kept set (and summary).
        ``images(indices)`` returns an in-memory dataset's images, for the
        persistent summary.
        """
        recorded, skipped = self.bank.merged_counts
        if recorded == 0 and skipped > 0:
            raise RuntimeError(
                f'KCD E-step after epoch {epoch}: every knowledge value '
                f'recorded since the last E-step was NaN or inf ({skipped}),'
                ' so condensing would drop samples blindly. Check the '
                "student's logits (a NaN loss, a diverged run) or the value "
                'measure; the last checkpoint holds the run before this.')
        start = time.perf_counter()
        choice = self.selector.select(self.bank, self.kept_size,
                                      self.stage + 1, epoch,
                                      self.sample_iters)
        self.pairs, self.kept = choice.pairs, choice.pairs.kept
        self.last_scores = choice.scores
        summary = None
        if self.summary is not None:
            summary = dict(mode=self.summary.mode,
                           **self.summary.update(self.pairs, images))
        self.stage += 1
        record = StageRecord(
            stage=self.stage,
            epoch=int(epoch),
            num_samples=self.num_samples,
            kept=self.kept_size,
            blended=self.pairs.num_blended,
            dropped=self.num_samples - self.kept_size,
            sample_iters=self.sample_iters,
            full_kd_sample_iters=self.full_kd_sample_iters,
            estep_seconds=time.perf_counter() - start,
            **self.bank.pop_stats(),
            extra=choice.extra,
            summary=summary)
        self.records.append(record)
        return record

    def state_dict(self) -> Dict:
        """Everything needed to continue the run exactly."""
        pairs = None
        if self.pairs is not None:  # its kept set is ``kept``: saved once
            pairs = {
                k: v.clone()
                for k, v in asdict(self.pairs).items() if k != 'kept'
            }
        return dict(
            version=STATE_VERSION,
            options=asdict(self.options),
            num_samples=self.num_samples,
            max_epochs=self.max_epochs,
            value_measure=self.value_measure,
            fingerprint=self.fingerprint,
            seed=self.seed,
            selector=dict(
                type=self.options.strategy,
                state=self.selector.state_dict()),
            bank=self.bank.state_dict(),
            kept=None if self.kept is None else self.kept.clone(),
            pairs=pairs,
            summary=None if self.summary is None
            or self.summary.mode != 'persistent' else
            self.summary.state_dict(),
            stage=self.stage,
            sample_iters=self.sample_iters,
            full_kd_sample_iters=self.full_kd_sample_iters,
            records=[r.as_dict() for r in self.records])

    def load_state_dict(self, state: Dict,
                        log: Optional[Callable[[int, str], None]] = None
                        ) -> Dict:
        """Restore a saved state; the dataset must match. Returns the saved
        state in the current layout (:func:`upgrade_state`).

        Options are not restored: the caller's (possibly changed) options
        apply from the next E-step on, and the caller logs the difference.
        The selector's own state is restored only under the same strategy;
        ``log(level, message)`` hears when it is dropped.
        """
        if int(state['num_samples']) != self.num_samples:
            raise ValueError(
                f'The checkpoint\'s KCD state is for a training set of '
                f'{int(state["num_samples"])} samples, this run\'s has '
                f'{self.num_samples}. Resume with the same dataset, or start '
                'a new run (load_from= instead of resume).')
        saved = state.get('fingerprint')  # absent before it was recorded
        same = same_dataset(saved, self.fingerprint)
        if same is False:
            raise ValueError(
                f'The checkpoint\'s KCD state is for another training set of '
                f'the same size ({self.num_samples} samples, but the samples '
                'differ: other files (paths below the data root), images or '
                'labels, or the same in another order: another ann_file, '
                'folder contents, indices or class order). KCD\'s values and '
                'kept set name samples by position, so they would land on '
                'the wrong images. Resume with the same dataset, or start a '
                'new run (load_from= instead of resume).')
        if same is None and saved and self.fingerprint and log is not None:
            log(logging.WARNING,
                'KCD: the checkpoint identifies its training set by an older '
                f'fingerprint ({fingerprint_scheme(saved)}, labels only) '
                f'than this run ({fingerprint_scheme(self.fingerprint)}): '
                'only N and the labels were compared, not the files or '
                'images. Make sure it is the same dataset; checkpoints '
                'written from here on carry the new fingerprint.')
        state = upgrade_state(state)
        self.bank.load_state_dict(state['bank'])
        self.kept = state['kept']
        pairs = state['pairs']
        self.pairs = None if pairs is None else Condensation(
            **dict(pairs, kept=self.kept))
        self.stage = int(state['stage'])
        self.sample_iters = int(state['sample_iters'])
        self.full_kd_sample_iters = int(state['full_kd_sample_iters'])
        self.records = [StageRecord.from_dict(r) for r in state['records']]
        self._load_summary(state, log)
        self.selector.seed = int(state.get('seed', self.seed))
        selector = state['selector']
        if selector['type'] == self.options.strategy:
            self.selector.load_state_dict(selector['state'])
        elif selector['state'] and log is not None:
            log(logging.WARNING,
                f"KCD: the checkpoint was written with strategy="
                f"{selector['type']!r}; its own state (e.g. loss weights) "
                f'is dropped, strategy={self.options.strategy!r} starts '
                'its own from here.')
        return state

    def _load_summary(self, state: Dict, log) -> None:
        """The checkpoint's summary, where this run's mode is its."""
        if isinstance(self.summary, StageSummary) and self.pairs is not None:
            self.summary.update(self.pairs)
        saved = state.get('summary')
        if saved is None:
            return
        if self.summary is not None and self.summary.mode == 'persistent':
            self.summary.load_state_dict(saved)
        elif log is not None:
            log(logging.WARNING,
                "KCD: the checkpoint's persistent summary (the blended images"
                f' of {saved["indices"].numel()} samples) is dropped: this '
                f'run has summary={self.options.summary!r}; those samples '
                'train on their original images.')


def upgrade_state(state: Dict) -> Dict:
    """A saved ``kcd_state`` in the current layout (version 4).

    Versions 1-2 kept InfoBatch's loss weights at the top level and its
    latest values in the bank; they move into ``selector``. Before version
    4, ``summary=True`` meant today's ``'stage'``, and there was no
    persistent summary.
    """
    version = int(state.get('version', 1))
    if version >= STATE_VERSION:
        return state
    state = dict(state)
    options = dict(state.get('options', {}))
    if options.get('summary') is True:
        options['summary'] = 'stage'
    state.update(options=options, summary=None, version=STATE_VERSION)
    if version >= 3:
        return state
    bank = dict(state['bank'])
    latest = bank.pop('latest', None)
    strategy = state.get('options', {}).get('strategy', 'kcd')
    own = {}
    if strategy == 'infobatch':
        own = dict(latest=latest, upweighted=state.get('upweighted'),
                   loss_weight=float(state.get('loss_weight', 1.0)))
    state.update(bank=bank, selector=dict(type=strategy, state=own))
    return state
