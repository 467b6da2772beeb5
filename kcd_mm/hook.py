"""KCDHook: KCD's E-step/M-step loop inside mmengine's training loop."""
import resource
from dataclasses import asdict
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import (all_reduce, get_world_size, is_distributed,
                           is_main_process)
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS

from .compat import set_max_iters
from .condensation import iterations_per_epoch
from .labels import fingerprint
from .options import KCDOptions
from .records import CKPT_KEY, RECORD_FILE, RecordWriter, StageRecord
from .seeding import EpochSeedingHook
from .state import KCDState
from .wiring import (check_setup, class_labels, find_recording_loss,
                     find_sampler, warn_iteration_schedulers)


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    all_reduce(tensor, op='sum')
    return tensor


@HOOKS.register_module()
class KCDHook(Hook):
    """Knowledge Condensation Distillation's E-step and bookkeeping.

    The M-step is plain training on the kept set; around it, the hook

    * each iteration, hands the batch's ``sample_idx`` to the model's
      :class:`ValueWeightedLoss` and banks the values it computed;
    * each epoch, merges all ranks' values into the knowledge bank;
    * at each stage boundary (every ``stage_epochs`` epochs), runs the
      E-step: the selector ranks all samples and condenses the kept set,
      the :class:`KCDSampler` gets it, and the stage record is written to
      ``<work_dir>/kcd_stages.jsonl``, the log and the visualizer;
    * carries :class:`KCDState` in and out of every checkpoint.

    ``strategy`` swaps the selection for a comparison at KCD's sample
    budget (see :mod:`kcd_mm.selection`): ``'random'`` keeps random
    subsets of KCD's sizes at the same boundaries; ``'infobatch'`` prunes
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
        summary (bool): blend dropped samples into the kept tail (needs
            :class:`KnowledgeSummaryDataset`); False prunes only.
            Defaults to True.
        class_min_keep (float): keep at least this fraction of every class
            at each E-step (0: off, the reference). Defaults to 0.
        strategy (str): ``'kcd'`` (the method), ``'random'`` or
            ``'infobatch'``; the last two ignore ``summary``.
            Defaults to ``'kcd'``.
        infobatch_full_epochs_ratio (float): with ``'infobatch'``, the last
            ``ceil(ratio * max_epochs)`` epochs train on all data.
            Defaults to 0.125.
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
                 summary: bool = True,
                 class_min_keep: float = 0.0,
                 strategy: str = 'kcd',
                 infobatch_full_epochs_ratio: float = 0.125,
                 record_file: str = RECORD_FILE,
                 epoch_seeding: bool = True) -> None:
        self.options = KCDOptions(
            stage_epochs=stage_epochs,
            theta=theta,
            num_steps=num_steps,
            score_exponent=score_exponent,
            score_ref_epochs=score_ref_epochs,
            lam_range=tuple(lam_range),
            summary=summary,
            class_min_keep=class_min_keep,
            strategy=strategy,
            infobatch_full_epochs_ratio=infobatch_full_epochs_ratio)
        self.record_file = record_file
        self.seeding = EpochSeedingHook() if epoch_seeding else None
        self.state: Optional[KCDState] = None
        self._loaded: Optional[Dict] = None  # kcd_state of a resume
        self._epoch_samples = 0
        self._epoch_skipped = 0

    # ---------------------------------------------------------- set-up
    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        dataset = loader.dataset
        self._sampler = find_sampler(loader)
        self._loss = find_recording_loss(runner.model)
        check_setup(self.options, dataset, runner.train_loop,
                    get_world_size())
        labels = None
        if self.options.class_min_keep > 0:
            labels = class_labels(dataset)
        self.state = KCDState(
            len(dataset), self.options, labels,
            seed=runner.seed or 0,
            max_epochs=runner.max_epochs,
            fingerprint=fingerprint(getattr(dataset, 'dataset', dataset),
                                    None if labels is None else
                                    labels.numpy()))
        if self.state.selector.weights_losses:
            self._loss.check_splittable(
                f'KCDHook(strategy={self.options.strategy!r})')
        self._writer = RecordWriter(runner.work_dir, self.record_file)
        if self._loaded is not None:
            self._resume(runner)
        elif is_main_process():
            for message in self._writer.start():
                runner.logger.info(message)
        self._sampler.set_kept(*self.state.kept_and_pairs())
        self._plan_iterations(runner, runner.train_loop.epoch)
        warn_iteration_schedulers(runner)
        state = self.state
        runner.logger.info(
            f'KCD: N={state.num_samples}, {self.options}, E-steps after '
            f'epochs {state.boundaries()}, kept now {state.kept_size}, '
            f'sample budget {state.budget}, knowledge bank '
            f'{state.bank.nbytes / 2**20:.1f} MiB')

    def before_train_epoch(self, runner) -> None:
        if self.seeding is not None:
            self.seeding.before_train_epoch(runner)

    # -------------------------------------------------- each iteration
    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[dict] = None) -> None:
        samples = data_batch['data_samples']
        try:
            idx = [s.metainfo['sample_idx'] for s in samples]
        except KeyError:
            raise KeyError(
                'KCD needs sample_idx in every data sample: use an mmengine '
                'BaseDataset (it adds sample_idx) and a pipeline ending in '
                'PackInputs, which keeps it.') from None
        labels = None  # only gathered for a value measure that uses them
        if self._loss.needs_labels and 'gt_label' in samples[0]:
            labels = torch.cat([s.gt_label.reshape(-1)[:1] for s in samples])
        idx = torch.tensor(idx, dtype=torch.int64)
        self._loss.set_batch(idx, labels, self.state.sample_weights(idx))

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        for sample_idx, values in self._loss.pop_records():
            self._epoch_skipped += self.state.bank.record(sample_idx, values)
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
        record = self.state.estep(epochs_done)
        record.peak_rss_mib = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self._sampler.set_kept(*self.state.kept_and_pairs())
        self._plan_iterations(runner, epochs_done)
        if is_main_process():
            self._write(runner, record)
        for level, message in self.state.selector.describe(record):
            runner.logger.log(level, message)
        runner.logger.info(record.log_line())
        runner.visualizer.add_scalars(record.scalars(), step=record.epoch)

    def _write(self, runner, record: StageRecord) -> None:
        """The stage's line, snapshot and value histograms (rank 0)."""
        state, pairs = self.state, self.state.pairs
        self._writer.append(record)
        values = state.bank.mean_values().float()
        self._writer.write_snapshot(state.stage, state.kept.numpy(),
                                    pairs.tail.numpy(), pairs.lost.numpy(),
                                    pairs.lam.numpy(),
                                    state.last_scores.numpy(),
                                    values.numpy())
        kept = torch.zeros(state.num_samples, dtype=torch.bool)
        kept[state.kept] = True
        self._writer.add_value_histograms(runner.visualizer,
                                          values[kept].numpy(),
                                          values[~kept].numpy(),
                                          record.epoch)

    def _plan_iterations(self, runner, start_epoch: int) -> None:
        """The logger's ETA follows the schedule, known in advance."""
        loop, loader = runner.train_loop, runner.train_dataloader
        if loader.batch_size is None:
            return
        sizes = self.state.planned_sizes(start_epoch)
        set_max_iters(
            loop, loop.iter + sum(
                iterations_per_epoch(s, loader.batch_size, get_world_size(),
                                     loader.drop_last) for s in sizes))

    # ------------------------------------------------------ checkpoint
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.state is not None:
            checkpoint[CKPT_KEY] = self.state.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            # load_from: weights for a new run; KCD starts afresh.
            return
        self._loaded = checkpoint.get(CKPT_KEY)
        if self._loaded is None:
            runner.logger.warning(
                'The resumed checkpoint has no KCD state (written without '
                'KCDHook?): KCD starts afresh from the full training set.')

    def _resume(self, runner) -> None:
        saved, self._loaded = self._loaded, None
        state = self.state
        state.load_state_dict(saved, log=runner.logger.log)
        old = saved.get('options', {})
        changed = {
            k: (old[k], v)
            for k, v in asdict(self.options).items()
            if k in old and _differs(old[k], v)
        }
        if changed:
            runner.logger.warning(
                'KCD options differ from the checkpoint (saved, now): '
                f'{changed}; the new ones apply from the next E-step.')
        runner.logger.info(
            f'KCD resumed at stage {state.stage}: kept '
            f'{state.kept_size}/{state.num_samples}, '
            f'{state.sample_iters} samples trained so far.')
        if is_main_process():
            self._writer.rewrite(state.records)
        done = runner.epoch
        last = state.records[-1].epoch if state.records else 0
        if done in state.boundaries() and last < done:
            # A finished run extended with more epochs: its last epoch was
            # no boundary then, it is one now.
            runner.logger.info(f'KCD: running the E-step after epoch {done} '
                               'that the shorter run skipped.')
            self._estep(runner, done)


def _differs(a, b) -> bool:
    """Option values differ (a list and a tuple of equal items do not)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) != tuple(b)
    return a != b
