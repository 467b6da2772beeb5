"""KCDHook: KCD's E-step/M-step loop inside mmengine's training loop.

The methods read as KCD's loop: set up, each iteration, each epoch,
E-step, checkpoint. The hook talks to :class:`KCDState` (the math and the
saved state), to the set-up checks of :mod:`kcd_mm.checks`, and to the
sampler, the value source and the record writer, each through one call.
"""
import resource
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import (all_reduce, broadcast, get_world_size,
                           is_distributed, is_main_process)
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS

from .checks import (check_first_batch, check_loss_inputs, check_not_data_free,
                     check_same_dataset_on_ranks, check_setup,
                     check_single_hook, class_labels, setup_warnings,
                     warn_iteration_schedulers)
from .compat.mmengine_checkpoints import latest_checkpoint, make_atomic
from .core.condensation import iterations_per_epoch
from .core.options import KCDOptions
from .core.state import KCDState
from .core.values import get_value_measure
from .cpu_threads import set_cpu_threads_for_kcd_run
from .dataset import unwrap_summary
from .fingerprint import fingerprint
from .labels import class_count
from .loss import find_recording_loss
from .records import RECORD_FILE, RecordWriter, StageRecord, check_record_file
from .sampler import find_sampler
from .seeding import EpochSeedingHook
from .tap import LogitsTap, batch_ids, find_classifier, weights_digest


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    all_reduce(tensor, op='sum')
    return tensor


def _shared_seed(seed: int) -> int:
    """Rank 0's seed on every rank: random selections must be identical on
    all ranks, also with ``randomness.diff_rank_seed=True``."""
    value = torch.tensor([int(seed)], dtype=torch.int64)
    broadcast(value, src=0)
    return int(value)


@HOOKS.register_module()
class KCDHook(Hook):
    """Knowledge Condensation Distillation's E-step and bookkeeping.

    The M-step is plain training on the kept set; around it, the hook

    * each iteration, banks each sample's knowledge value, computed from
      the student's class logits of the training forward: read from the
      student's classifier (``classifier``, found automatically), or, when
      the model has a recording :class:`ValueWeightedLoss`, from that
      loss's inputs;
    * each epoch, merges all ranks' values into the knowledge bank;
    * at each stage boundary (every ``stage_epochs`` epochs), runs the
      E-step: the selector ranks all samples and condenses the kept set,
      the :class:`KCDSampler` gets it, and the stage record is written to
      ``<work_dir>/kcd_stages.jsonl``, the log and the visualizer;
    * carries :class:`KCDState` in and out of every checkpoint.

    ``strategy`` swaps the selection for a comparison at KCD's sample
    budget (see :mod:`kcd_mm.core.selection`): ``'random'`` keeps random
    subsets of KCD's sizes at the same boundaries; ``'per_epoch_random'``
    draws a fresh one of KCD's size every epoch; ``'infobatch'`` prunes
    every epoch and hands each batch's loss weights to the
    :class:`ValueWeightedLoss` (which rescales the wrapped distill loss
    only, not the student's own CE), one record per epoch.

    Args:
        stage_epochs (int): T, epochs per stage. Defaults to 40.
        theta (float): final kept fraction floor, in (0, 1]. Defaults to 0.7.
        num_steps (int): K, condensations from N to theta*N. Defaults to 6.
        score_exponent (float): exponent of the visit bonus. Defaults to 0.03.
        score_ref_epochs (float, optional): T_ref of the visit bonus; None
            uses ``stage_epochs``. Defaults to None.
        lam_range (tuple): (lam_min, lam_max) of the summary blend.
            Defaults to (0.7, 1.0).
        summary (str | bool): fold dropped samples into the kept tail by a
            pixel blend (needs :class:`KnowledgeSummaryDataset`):
            ``'persistent'``, the reference (each blend stays in the
            sample's image and later blends build on it), or ``'stage'``
            (this stage's pairs only, blended from raw images); False
            prunes only. See docs/method.md. Defaults to ``'persistent'``
            (best on held-out data in the paper-regime benchmark).
        summary_terms (int): with ``'persistent'`` on a file dataset, the
            most original images one sample's image combines (each is one
            more image load). Defaults to 4.
        blend_label (str): a blended sample's label: ``'own'``, the
            reference (the tail keeps its hard label), or ``'mix'`` (a
            ``gt_score`` mixing the labels of the images it is made of;
            every sample then trains on a ``gt_score``). Defaults to
            ``'own'``.
        class_min_keep (float): keep at least this fraction of every class
            at each E-step (0: off, the reference). Defaults to 0.
        strategy (str): ``'kcd'`` (the method), ``'random'``,
            ``'per_epoch_random'`` or ``'infobatch'``; the last three
            ignore ``summary``. Defaults to ``'kcd'``.
        infobatch_full_epochs_ratio (float): with ``'infobatch'``, the last
            ``ceil(ratio * max_epochs)`` epochs train on all data.
            Defaults to 0.125.
        infobatch_ratio (float, optional): with ``'infobatch'``,
            InfoBatch's own fixed r (its paper's 0.5) instead of an r that
            spends KCD's budget. Defaults to None.
        value (str): the knowledge value measure when KCD reads the
            classifier itself (``'entropy'``, the reference;
            ``'teacher_kl'``, ``'ce'``, ``'margin'``); a recording
            ValueWeightedLoss uses its own ``value``. Defaults to
            ``'entropy'``.
        classifier (str, optional): the student module whose outputs are
            the class logits, as a path relative to the student (as in
            MMRazor's recorders, e.g. ``'head.fc'``); None finds it
            (``head.fc``, else the last ``nn.Linear``).
        record_file (str): stage record name in the work dir.
        epoch_seeding (bool): run :class:`EpochSeedingHook`'s reseeding,
            so a run resumed from an epoch checkpoint repeats the
            uninterrupted one exactly. Defaults to True.
    """

    priority = 'NORMAL'  # before CheckpointHook (VERY_LOW): saves new state

    def __init__(self,
                 stage_epochs: int = 40,
                 theta: float = 0.7,
                 num_steps: int = 6,
                 score_exponent: float = 0.03,
                 score_ref_epochs: Optional[float] = None,
                 lam_range: Sequence[float] = (0.7, 1.0),
                 summary='persistent',
                 summary_terms: int = 4,
                 blend_label: str = 'own',
                 class_min_keep: float = 0.0,
                 strategy: str = 'kcd',
                 infobatch_full_epochs_ratio: float = 0.125,
                 infobatch_ratio: Optional[float] = None,
                 value: str = 'entropy',
                 classifier: Optional[str] = None,
                 record_file: str = RECORD_FILE,
                 epoch_seeding: bool = True) -> None:
        self.options = KCDOptions(
            stage_epochs=stage_epochs,
            theta=theta,
            num_steps=num_steps,
            score_exponent=score_exponent,
            score_ref_epochs=score_ref_epochs,
            lam_range=lam_range,
            summary=summary,
            summary_terms=summary_terms,
            blend_label=blend_label,
            class_min_keep=class_min_keep,
            strategy=strategy,
            infobatch_full_epochs_ratio=infobatch_full_epochs_ratio,
            infobatch_ratio=infobatch_ratio)
        get_value_measure(value)  # an unknown measure fails here
        if classifier is not None and not isinstance(classifier, str):
            raise TypeError(
                f'KCDHook classifier={classifier!r} must be a module path '
                "relative to the student, e.g. 'head.fc', or None.")
        self.value, self.classifier = value, classifier
        self.record_file = check_record_file(record_file)
        self.seeding = EpochSeedingHook() if epoch_seeding else None
        self.state: Optional[KCDState] = None
        self._loaded: Optional[Dict] = None  # kcd_state of a resume
        self._epoch_samples = 0
        self._epoch_skipped = 0
        self._first_batch_checked = False
        self._classifier = None  # the student's, found in before_train
        self._images = None  # an in-memory dataset's images, for summary
        self._classifier_digest = None  # its weights at the last E-step

    # ---------------------------------------------------------- set-up
    def before_run(self, runner) -> None:
        """Before mmengine resumes: checkpoints a kill cannot lose, an
        auto-resume that skips a damaged ``last_checkpoint``, and, without
        an accelerator, torch's CPU threads as kcd_mm's tools choose them
        (unless ``OMP_NUM_THREADS`` or the tool already chose)."""
        set_cpu_threads_for_kcd_run(runner.logger.info)
        if make_atomic(runner) is not None:
            runner.logger.info(
                'KCD: checkpoints are written atomically '
                '(CheckpointHook -> mmrazor.AtomicCheckpointHook).')
        if runner._resume and runner._load_from is None:
            chosen, warning = latest_checkpoint(runner.work_dir)
            if warning is not None:
                runner.logger.warning(warning)
                runner._load_from = chosen
                runner._resume = chosen is not None

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        dataset = loader.dataset
        check_single_hook(runner.hooks, KCDHook)
        check_not_data_free(runner.model)
        self._sampler = find_sampler(loader)
        # The value source: a recording ValueWeightedLoss, else a tap on
        # the student's classifier.
        self._source = find_recording_loss(runner.model)
        if self._source is None:
            self._source = LogitsTap(runner.model, self.value, self.classifier)
            self._classifier = self._source.module
        else:
            check_loss_inputs(runner.model, self._source)
            self._classifier = find_classifier(runner.model)
        self._classifier_digest = weights_digest(self._classifier)
        check_setup(self.options, dataset, runner.train_loop, self._sampler,
                    get_world_size())
        labels = None
        if self.options.class_min_keep > 0:
            labels = class_labels(dataset)
        data_fingerprint = fingerprint(unwrap_summary(dataset), labels)
        if is_distributed():
            check_same_dataset_on_ranks(len(dataset), data_fingerprint)
        self.state = KCDState(
            len(dataset), self.options, labels,
            seed=_shared_seed(runner.seed or 0),
            max_epochs=runner.max_epochs,
            fingerprint=data_fingerprint,
            value_measure=self._source.value,
            in_memory=getattr(dataset, 'in_memory', False))
        self._images = getattr(dataset, 'original_images', None)
        self._num_classes = class_count(unwrap_summary(dataset))
        for message in setup_warnings(
                self.options, self.state.boundaries(), runner.max_epochs,
                getattr(self._classifier, 'out_features', None),
                self._num_classes):
            runner.logger.warning(message)
        if self.options.blend_label == 'mix':
            dataset.mix_labels(self._classifier.out_features)
        if self.state.weights_losses:
            self._source.check_splittable(
                f'KCDHook(strategy={self.options.strategy!r})')
        self._writer = RecordWriter(runner.work_dir, self.record_file)
        ran_estep = False
        if self._loaded is not None:
            ran_estep = self._resume(runner)
        elif is_main_process():
            for message in self._writer.start():
                runner.logger.info(message)
        if not ran_estep:  # the E-step hands its own kept set on
            self._sampler.set_kept(*self.state.sampler_args())
            self._plan_iterations(runner, runner.train_loop.epoch)
        warn_iteration_schedulers(runner)
        state = self.state
        runner.logger.info(
            f'KCD: N={state.num_samples}, {self.options}, E-steps after '
            f'epochs {state.boundaries()}, kept now {state.kept_size}, '
            f'{state.budget_note()}, knowledge bank '
            f'{state.bank_mib:.1f} MiB')

    def after_train(self, runner) -> None:
        if isinstance(self._source, LogitsTap):
            self._source.remove()
        state = self.state
        if state is not None:
            # The whole run's share (resumed history included), which the
            # last E-step's line cannot give: epochs follow it.
            kd = state.full_kd_sample_iters
            epochs = kd // max(state.num_samples, 1)  # the epochs counted
            runner.logger.info(
                f'KCD run done: {state.sample_iters} samples trained = '
                f"{state.sample_iters / max(kd, 1):.3f} of KD's {kd} over "
                f"{epochs} epoch{'' if epochs == 1 else 's'}.")

    def before_train_epoch(self, runner) -> None:
        if self.seeding is not None:
            self.seeding.before_train_epoch(runner)

    # -------------------------------------------------- each iteration
    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[dict] = None) -> None:
        idx, labels = batch_ids(data_batch['data_samples'],
                                self._source.needs_labels)
        if not self._first_batch_checked:
            check_first_batch(self._sampler, idx)
            self._first_batch_checked = True
        self._source.set_batch(idx, labels, self.state.sample_weights(idx))

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        for sample_idx, values in self._source.pop_records():
            self._epoch_skipped += self.state.record(sample_idx, values)
        self._epoch_samples += len(data_batch['data_samples'])

    # ------------------------------------------------------ each epoch
    def after_train_epoch(self, runner) -> None:
        reduce_fn = _sum_over_ranks if is_distributed() else None
        self.state.merge(reduce_fn)
        counts = torch.tensor([self._epoch_samples, self._epoch_skipped],
                              dtype=torch.int64)
        if reduce_fn is not None:
            counts = reduce_fn(counts)
        self._epoch_samples = self._epoch_skipped = 0
        self.state.count_epoch(int(counts[0]))
        if int(counts[1]):
            runner.logger.warning(
                f'KCD skipped {int(counts[1])} non-finite knowledge values '
                'this epoch (NaN/inf logits); those samples keep their '
                'earlier values.')
        epochs_done = runner.epoch + 1
        if epochs_done in self.state.boundaries():
            self._estep(runner, epochs_done)

    # ---------------------------------------------------------- E-step
    def _estep(self, runner, epochs_done: int) -> None:
        record = self.state.estep(epochs_done, self._images)
        record.peak_rss_mib = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self._name_weak_values(runner, record)
        self._sampler.set_kept(*self.state.sampler_args())
        self._plan_iterations(runner, epochs_done)
        if is_main_process():
            self._write(runner, record)
        for level, message in self.state.describe(record):
            runner.logger.log(level, message)
        runner.logger.info(record.log_line())
        runner.visualizer.add_scalars(record.scalars(), step=record.epoch)

    def _name_weak_values(self, runner, record: StageRecord) -> None:
        """Warn, and say in the record, when the stage's values cannot rank
        the samples (a classifier that did not train, a single class, no
        values), naming the likely cause: a single class where the
        classifier or the dataset has one, as its values are all 0
        however it trains."""
        digest = weights_digest(self._classifier)
        changed = None if digest is None else digest != self._classifier_digest
        self._classifier_digest = digest
        for message in self.state.weak_values(
                record, changed,
                getattr(self._classifier, 'out_features', None),
                getattr(self, '_num_classes', None)):
            runner.logger.warning(message)

    def _write(self, runner, record: StageRecord) -> None:
        """The stage's line, snapshot and value histograms (rank 0)."""
        self._writer.append(record)
        snapshot = self.state.snapshot()
        self._writer.write_snapshot(self.state.stage, **snapshot)
        self._writer.add_value_histograms(runner.visualizer,
                                          snapshot['mean_values'],
                                          snapshot['kept'], record.epoch)

    def _plan_iterations(self, runner, start_epoch: int) -> None:
        """The logger's ETA follows the schedule, known in advance."""
        loop, loader = runner.train_loop, runner.train_dataloader
        if loader.batch_size is None:
            return
        sizes = self.state.planned_sizes(start_epoch)
        # mmengine 0.10.7 fixes max_iters once, as max_epochs *
        # len(dataloader), and offers no setter.
        loop._max_iters = loop.iter + sum(
            iterations_per_epoch(s, loader.batch_size, get_world_size(),
                                 loader.drop_last) for s in sizes)

    # ------------------------------------------------------ checkpoint
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.state is not None:
            self.state.save_into(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            # load_from: weights for a new run; KCD starts afresh.
            return
        self._loaded = KCDState.saved_in(checkpoint)
        if self._loaded is None:
            runner.logger.warning(
                'The resumed checkpoint has no KCD state (written without '
                'KCDHook?): KCD starts afresh from the full training set.')

    def _resume(self, runner) -> bool:
        """Restore the checkpoint's KCD state; run the E-step it missed.
        Returns whether that E-step ran."""
        state = self.state
        changed, missed = state.resume(self._loaded, runner.max_epochs,
                                       runner.epoch, log=runner.logger.log)
        self._loaded = None
        if changed:
            runner.logger.warning(
                'KCD options differ from the checkpoint (saved, now): '
                f'{changed}; the new ones apply from the next E-step (the '
                "bank keeps the values recorded so far).")
        runner.logger.info(
            f'KCD resumed at stage {state.stage}: kept '
            f'{state.kept_size}/{state.num_samples}, '
            f'{state.sample_iters} samples trained so far.')
        if is_main_process():
            self._writer.rewrite(state.records)
        if missed is None:
            return False
        runner.logger.info(
            f'KCD: running the E-step after epoch {runner.epoch} {missed}.')
        self._estep(runner, runner.epoch)
        return True
