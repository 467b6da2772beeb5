"""KCDHook: runs KCD's E-step inside mmengine's training loop."""
import hashlib
import json
import os
import os.path as osp
import random
import resource
import time
from dataclasses import asdict
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import ConcatDataset
from mmengine.dist import (all_reduce, get_world_size, is_distributed,
                           is_main_process)
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from mmengine.visualization import TensorboardVisBackend
from mmrazor.registry import HOOKS

from .analysis import (CKPT_KEY, RECORD_FILE, SNAPSHOT_DIR, dataset_labels,
                       gt_labels, snapshot_path)
from .condensation import iterations_per_epoch, keep_schedule
from .dataset import KnowledgeSummaryDataset
from .loss import ValueWeightedLoss
from .sampler import KCDSampler
from .state import KCDOptions, KCDState



def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    all_reduce(tensor, op='sum')
    return tensor


@HOOKS.register_module()
class KCDHook(Hook):
    """Knowledge Condensation Distillation's E-step and bookkeeping.

    Each iteration it passes the batch's ``sample_idx`` to the model's
    :class:`ValueWeightedLoss` and banks the values it computed. Each epoch
    it merges all ranks' records. Every ``stage_epochs`` epochs it ranks
    all samples, condenses the kept set, hands it to :class:`KCDSampler`,
    appends a line to ``<work_dir>/kcd_stages.jsonl`` and logs the same
    figures under ``kcd/``. Its state is saved in every checkpoint.

    ``strategy`` swaps the selection for a comparison at KCD's sample
    budget (see :mod:`kcd_mm.strategies`): ``'random'`` keeps random
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
        epoch_seeding (bool): reseed python, numpy and torch RNGs at each
            epoch start from (run seed, epoch), so a run resumed from an
            epoch checkpoint repeats the uninterrupted one exactly (values,
            kept sets, weights; mmengine does not checkpoint RNG states).
            Defaults to True.
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
        self.epoch_seeding = epoch_seeding
        self.state: Optional[KCDState] = None
        self._loaded: Optional[Dict] = None
        self._loss: Optional[ValueWeightedLoss] = None
        self._epoch_samples = 0
        self._epoch_skipped = 0

    # ---------------------------------------------------------- set-up
    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        self._sampler = self._find_sampler(loader)
        self._loss = self._find_loss(runner.model)
        if self.options.strategy == 'infobatch':
            self._loss.check_splittable("KCDHook(strategy='infobatch')")
        num_samples = len(loader.dataset)
        self._check_setup(loader.dataset, runner.train_loop)
        labels = None
        if self.options.class_min_keep > 0:
            labels = _dataset_labels(loader.dataset)
        self.state = KCDState(num_samples, self.options, labels,
                              seed=runner.seed or 0,
                              max_epochs=runner.max_epochs,
                              fingerprint=_fingerprint(loader.dataset,
                                                       labels))
        if self._loaded is not None:
            self._restore(runner)
        else:
            self._start_record_file(runner)
        self._sampler.set_kept(*self._kept_and_pairs())
        self._plan_iterations(runner)
        self._warn_iteration_schedulers(runner)
        runner.logger.info(
            f'KCD: N={num_samples}, {self.options}, E-steps after epochs '
            f'{self.state.boundaries()}, kept now {self.state.kept_size}, '
            f'sample budget {self.state.budget}, knowledge bank '
            f'{self.state.bank.nbytes / 2**20:.1f} MiB')

    def _check_setup(self, dataset, loop) -> None:
        """Refuse configurations KCD cannot run, before any iteration."""
        opts = self.options
        if opts.blends and not isinstance(dataset, KnowledgeSummaryDataset):
            raise TypeError(
                'KCDHook(summary=True) needs the training dataset wrapped: '
                "train_dataloader.dataset=dict(type='mmrazor."
                "KnowledgeSummaryDataset', dataset=<your dataset>); or set "
                'summary=False for prune-only KCD.')
        if isinstance(getattr(dataset, 'dataset', dataset), ConcatDataset):
            raise TypeError(
                'KCD cannot tell the samples of a ConcatDataset apart: its '
                'parts repeat sample_idx. Merge the annotation files into '
                'one dataset.')
        if not isinstance(loop, EpochBasedTrainLoop):
            raise TypeError('KCDHook needs an epoch-based train loop '
                            "(train_cfg=dict(by_epoch=True, ...)).")
        if opts.stage_epochs > loop.max_epochs:
            raise ValueError(
                f'KCDHook stage_epochs={opts.stage_epochs} exceeds the run '
                f'({loop.max_epochs} epochs): no condensation would happen. '
                'Choose stage_epochs <= max_epochs / 2.')
        floor = keep_schedule(len(dataset), opts.theta, opts.num_steps,
                              opts.stage_epochs, loop.max_epochs)[-1]
        if floor < get_world_size():
            raise ValueError(
                f'KCDHook theta={opts.theta} would keep {floor} of '
                f'{len(dataset)} samples, fewer than the {get_world_size()} '
                'rank(s) need; raise theta.')

    @staticmethod
    def _find_sampler(loader) -> KCDSampler:
        sampler = loader.sampler
        if not isinstance(sampler, KCDSampler):
            sampler = getattr(loader.batch_sampler, 'sampler', None)
        if not isinstance(sampler, KCDSampler):
            raise TypeError(
                'KCDHook needs train_dataloader.sampler='
                "dict(type='mmrazor.KCDSampler', shuffle=True); got "
                f'{type(loader.sampler).__name__}.')
        return sampler

    @staticmethod
    def _find_loss(model) -> ValueWeightedLoss:
        losses = [
            m for m in model.modules()
            if isinstance(m, ValueWeightedLoss) and m.record
        ]
        if len(losses) != 1:
            raise TypeError(
                'KCDHook needs exactly one recording ValueWeightedLoss in '
                f'the model, found {len(losses)}. Wrap the logits distill '
                "loss: dict(type='ValueWeightedLoss', loss=dict(type="
                "'KLDivergence', ...)); set record=False on any others.")
        return losses[0]

    def _kept_and_pairs(self):
        pairs = self.state.pairs
        if pairs is None or not self.options.blends:
            return (self.state.kept, )
        return self.state.kept, pairs.tail, pairs.lost, pairs.lam

    def _restore(self, runner) -> None:
        saved = self._loaded
        self._loaded = None
        self.state.load_state_dict(saved)
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
            f'KCD resumed at stage {self.state.stage}: kept '
            f'{self.state.kept_size}/{self.state.num_samples}, '
            f'{self.state.sample_iters} samples trained so far.')
        if is_main_process():
            self._rewrite_records(runner)
        done = runner.epoch
        last = self.state.records[-1]['epoch'] if self.state.records else 0
        if done in self.state.boundaries() and last < done:
            # A finished run extended with more epochs: its last epoch was
            # no boundary then, it is one now.
            runner.logger.info(f'KCD: running the E-step after epoch {done} '
                               'that the shorter run skipped.')
            self._estep(runner, done)

    def before_train_epoch(self, runner) -> None:
        if self.epoch_seeding and runner.seed is not None:
            seed = (runner.seed + 1_000_003 * runner.epoch) % 2**32
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)  # seeds CUDA generators too

    # ------------------------------------------------------ per iteration
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

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        for sample_idx, values in self._loss.pop_records():
            self._epoch_skipped += self.state.bank.record(sample_idx, values)
        self._epoch_samples += len(data_batch['data_samples'])

    # ---------------------------------------------------------- per epoch
    def after_train_epoch(self, runner) -> None:
        reduce_fn = _sum_over_ranks if is_distributed() else None
        self.state.bank.merge(reduce_fn)
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

    def _estep(self, runner, epochs_done: int) -> None:
        record = self.state.estep(epochs_done)
        # Peak resident memory of this process so far: flat across stages
        # means the run holds no growing per-stage history.
        record['peak_rss_mib'] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self._sampler.set_kept(*self._kept_and_pairs())
        self._plan_iterations(runner, start_epoch=epochs_done)
        self._publish(runner, record)

    # --------------------------------------------------------- checkpoint
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

    # ------------------------------------------------------------ records
    def _record_path(self, runner) -> str:
        return osp.join(runner.work_dir, self.record_file)

    def _start_record_file(self, runner) -> None:
        """A fresh run starts a fresh record; an old one is kept aside."""
        stamp = time.strftime('%Y%m%d_%H%M%S')
        path = self._record_path(runner)
        snapshots = osp.join(runner.work_dir, SNAPSHOT_DIR)
        for old in (path, snapshots):
            if is_main_process() and osp.exists(old):
                root, ext = osp.splitext(old)
                os.replace(old, f'{root}.{stamp}{ext}')
                runner.logger.info(f'KCD: kept the previous run\'s {old} '
                                   f'as {root}.{stamp}{ext}')

    def _rewrite_records(self, runner) -> None:
        """Resumed: the record (and snapshots) hold exactly the
        checkpoint's stages, whatever a crashed run wrote after it."""
        path = self._record_path(runner)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            for record in self.state.records:
                f.write(json.dumps(record) + '\n')
        os.replace(tmp, path)
        stage = self.state.stage + 1
        while osp.exists(snapshot_path(runner.work_dir, stage)):
            os.remove(snapshot_path(runner.work_dir, stage))
            stage += 1

    def _write_snapshot(self, runner, mean_values: torch.Tensor) -> None:
        """Who was kept, blended and dropped at this stage, and why (for
        tools/analysis); ~10 bytes a sample."""
        state, pairs = self.state, self.state.pairs
        path = snapshot_path(runner.work_dir, state.stage)
        os.makedirs(osp.dirname(path), exist_ok=True)
        np.savez(
            path,
            kept=state.kept.numpy().astype(np.int32),
            tail=pairs.tail.numpy().astype(np.int32),
            lost=pairs.lost.numpy().astype(np.int32),
            lam=pairs.lam.numpy(),
            scores=state.last_scores.numpy(),
            mean_values=mean_values.numpy())

    def _add_value_histograms(self, runner, values: torch.Tensor,
                              step: int) -> None:
        """Mean knowledge values of kept and dropped samples, for
        TensorBoard (mmengine's visualizer has no histogram call)."""
        writers = [
            backend.experiment
            for backend in runner.visualizer._vis_backends.values()
            if isinstance(backend, TensorboardVisBackend)
        ]
        if not writers:
            return
        kept = torch.zeros(self.state.num_samples, dtype=torch.bool)
        kept[self.state.kept] = True
        for writer in writers:
            for tag, part in (('kcd/value_kept', values[kept]),
                              ('kcd/value_dropped', values[~kept])):
                if part.numel():
                    writer.add_histogram(tag, part.numpy(), global_step=step)

    def _publish(self, runner, record: Dict) -> None:
        if is_main_process():
            with open(self._record_path(runner), 'a') as f:
                f.write(json.dumps(record) + '\n')
                f.flush()
                os.fsync(f.fileno())
            values = self.state.bank.mean_values().float()
            self._write_snapshot(runner, values)
            self._add_value_histograms(runner, values, record['epoch'])
        n = record['num_samples']
        ratio = record['sample_iters'] / max(record['full_kd_sample_iters'],
                                             1)
        if 'prune_ratio' in record:
            runner.logger.info(
                f"KCD infobatch: epoch {record['epoch'] + 1} trains on "
                f"{record['kept']} (planned {record['target']}), dropping "
                f"{100 * record['prune_ratio']:.1f}% of the "
                f"{record['below_mean']} below-mean samples, the rest "
                f"weighted {record['loss_weight']:.3f}")
            if record['budget_capped']:
                runner.logger.warning(
                    'KCD infobatch: dropping every below-mean sample still '
                    f"leaves {record['kept']} > {record['target']} planned; "
                    'later epochs are planned smaller to make up, and the '
                    f"run overspends KCD's budget {record['budget']} if "
                    'they cannot.')
        runner.logger.info(
            f"KCD stage {record['stage']} after epoch {record['epoch']}: "
            f"kept {record['kept']}/{n} ({100 * record['kept'] / n:.1f}%), "
            f"blended {record['blended']}, dropped {record['dropped']}; "
            f"samples trained {record['sample_iters']} = {ratio:.3f} of KD; "
            f"value mean {record['value_mean']:.4f} std "
            f"{record['value_std']:.4f}; E-step "
            f"{record['estep_seconds'] * 1e3:.1f} ms; peak RSS "
            f"{record['peak_rss_mib']:.0f} MiB")
        scalars = {
            f'kcd/{k}': int(v) if isinstance(v, bool) else v
            for k, v in record.items() if k not in ('stage', 'epoch')
        }
        scalars['kcd/kept_fraction'] = record['kept'] / n
        runner.visualizer.add_scalars(scalars, step=record['epoch'])

    # ---------------------------------------------------------------- ETA
    def _plan_iterations(self, runner, start_epoch: Optional[int] = None):
        """Make train_loop.max_iters (the logger's ETA) follow the schedule.

        mmengine computes it once as max_epochs * len(dataloader); KCD's
        epochs shrink, and the schedule is known in advance.
        """
        loop, loader = runner.train_loop, runner.train_dataloader
        if loader.batch_size is None:
            return
        start = loop.epoch if start_epoch is None else start_epoch
        sizes = self.state.planned_sizes(start)
        world = get_world_size()
        loop._max_iters = loop.iter + sum(
            iterations_per_epoch(s, loader.batch_size, world,
                                 loader.drop_last) for s in sizes)

    @staticmethod
    def _warn_iteration_schedulers(runner) -> None:
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            schedulers = [s for group in schedulers.values() for s in group]
        if any(not getattr(s, 'by_epoch', True) for s in schedulers):
            runner.logger.warning(
                'KCD shortens epochs, but some param_scheduler is '
                'iteration-based (by_epoch=False or convert_to_iter_based):'
                ' it was sized for full epochs and will run behind. Use '
                'epoch-based schedules with KCD.')


def _dataset_labels(dataset) -> torch.Tensor:
    """One class index per sample, for per-class balancing."""
    inner = getattr(dataset, 'dataset', dataset)
    try:
        return torch.from_numpy(dataset_labels(inner))
    except (AttributeError, KeyError, TypeError) as error:
        raise TypeError(
            f'class_min_keep needs sample labels, but {type(inner).__name__} '
            f'gives none ({error}); set class_min_keep=0.') from error


def _fingerprint(dataset, labels: Optional[torch.Tensor]) -> Optional[str]:
    """A hash of the training labels, so a resume notices another dataset
    of the same size: from the labels at hand, else the dataset's own
    ``get_gt_labels`` (~7 us a sample in mmpretrain, ~10 s at ImageNet);
    None without it, rather than a slower per-sample pass."""
    if labels is None:
        gt = gt_labels(getattr(dataset, 'dataset', dataset))
        if gt is None:
            return None
        labels = torch.from_numpy(gt)
    data = labels.to(torch.int64).numpy().tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def _differs(a, b) -> bool:
    """Option values differ (a list and a tuple of equal items do not)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) != tuple(b)
    return a != b
