"""How KCDHook finds its partners in a Runner, and what it refuses.

Everything here runs in ``before_train``, before the first iteration, so
a configuration KCD cannot run fails with the option and the fix named
before any training time is spent.
"""
import torch
from mmengine.dataset import ConcatDataset
from mmengine.runner import EpochBasedTrainLoop

from .condensation import keep_schedule
from .dataset import KnowledgeSummaryDataset
from .labels import dataset_labels
from .loss import ValueWeightedLoss
from .options import KCDOptions
from .sampler import KCDSampler


def find_sampler(loader) -> KCDSampler:
    """The loader's :class:`KCDSampler` (plain or inside a batch sampler)."""
    sampler = loader.sampler
    if not isinstance(sampler, KCDSampler):
        sampler = getattr(loader.batch_sampler, 'sampler', None)
    if not isinstance(sampler, KCDSampler):
        raise TypeError(
            'KCDHook needs train_dataloader.sampler='
            "dict(type='mmrazor.KCDSampler', shuffle=True); got "
            f'{type(loader.sampler).__name__}.')
    return sampler


def find_recording_loss(model) -> ValueWeightedLoss:
    """The model's one :class:`ValueWeightedLoss` with ``record=True``."""
    losses = [
        m for m in model.modules()
        if isinstance(m, ValueWeightedLoss) and m.record
    ]
    if len(losses) != 1:
        raise ValueError(
            'KCDHook needs exactly one recording ValueWeightedLoss in '
            f'the model, found {len(losses)}. Wrap the logits distill '
            "loss: dict(type='ValueWeightedLoss', loss=dict(type="
            "'KLDivergence', ...)); set record=False on any others.")
    return losses[0]


def check_setup(options: KCDOptions, dataset, loop, world_size: int) -> None:
    """Refuse configurations KCD cannot run, before any iteration."""
    if options.blends and not isinstance(dataset, KnowledgeSummaryDataset):
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
    if options.stage_epochs > loop.max_epochs:
        raise ValueError(
            f'KCDHook stage_epochs={options.stage_epochs} exceeds the run '
            f'({loop.max_epochs} epochs): no condensation would happen. '
            'Choose stage_epochs <= max_epochs / 2.')
    floor = keep_schedule(len(dataset), options.theta, options.num_steps,
                          options.stage_epochs, loop.max_epochs)[-1]
    if floor < world_size:
        raise ValueError(
            f'KCDHook theta={options.theta} would keep {floor} of '
            f'{len(dataset)} samples, fewer than the {world_size} '
            'rank(s) need; raise theta.')


def class_labels(dataset) -> torch.Tensor:
    """One class index per sample, for ``class_min_keep``."""
    inner = getattr(dataset, 'dataset', dataset)
    try:
        return torch.from_numpy(dataset_labels(inner))
    except (AttributeError, KeyError, TypeError) as error:
        raise TypeError(
            f'class_min_keep needs sample labels, but {type(inner).__name__} '
            f'gives none ({error}); set class_min_keep=0.') from error


def warn_iteration_schedulers(runner) -> None:
    """Warn when some param scheduler counts iterations: KCD's epochs
    shrink, so a schedule sized for full epochs runs behind."""
    schedulers = runner.param_schedulers or []
    if isinstance(schedulers, dict):
        schedulers = [s for group in schedulers.values() for s in group]
    if any(not getattr(s, 'by_epoch', True) for s in schedulers):
        runner.logger.warning(
            'KCD shortens epochs, but some param_scheduler is '
            'iteration-based (by_epoch=False or convert_to_iter_based): '
            'it was sized for full epochs and will run behind. Use '
            'epoch-based schedules with KCD.')
