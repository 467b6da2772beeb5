"""Every check KCDHook makes of a run before spending training time.

Each refusal raises with the option, the value and the fix named; each
warning is logged before the first iteration. KCDHook calls them in
``before_train`` (and :func:`check_first_batch` on the first batch).
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.dataset import ClassBalancedDataset, ConcatDataset, RepeatDataset
from mmengine.dist import all_gather_object
from mmengine.runner import EpochBasedTrainLoop

from .core.condensation import iterations_per_epoch, keep_schedule
from .core.diagnostics import SINGLE_CLASS_WHY
from .core.options import KCDOptions
from .core.sample_key import index_of
from .dataset import KnowledgeSummaryDataset, unwrap_summary
from .labels import dataset_labels
from .loss import ValueWeightedLoss
from .tap import model_parts


def check_not_data_free(model) -> None:
    """Refuse data-free distillation (MMRazor's DataFreeDistillation:
    DAFL, ZSKT, DFAD): its student learns from images a generator makes,
    so there is no training set for KCD to value and condense."""
    model = getattr(model, 'module', model)
    for cls in type(model).__mro__:
        if cls.__name__ == 'DataFreeDistillation':
            raise TypeError(
                f'KCD condenses a training set, and {type(model).__name__} '
                'is data-free distillation: the student trains on images '
                'its generator makes, not on the dataset, so there is '
                "nothing to condense. Remove KCD's lines (KCDHook, "
                'KCDSampler, KnowledgeSummaryDataset) from this config.')


def check_single_hook(hooks, hook_type: type) -> None:
    """Refuse two KCD hooks: each would record every stage, and the one
    whose bank saw nothing would decide the kept set."""
    count = sum(isinstance(h, hook_type) for h in hooks)
    if count > 1:
        raise ValueError(
            f'custom_hooks holds {count} KCDHooks; a run takes exactly one '
            '(each would condense the same sampler). Keep one '
            "dict(type='mmrazor.KCDHook', ...).")


def check_loss_inputs(model, loss: ValueWeightedLoss) -> None:
    """A recording ValueWeightedLoss must get the student's class logits:
    refuse, before any iteration, one whose student input is recorded
    from a module that is not a classifier (a neck, a feature map)."""
    model = getattr(model, 'module', model)
    distiller = getattr(model, 'distiller', None)
    if distiller is None:
        return
    name = next((n for n, m in distiller.distill_losses.items()
                 if m is loss), None)
    mapping = distiller.loss_forward_mappings.get(name, {})
    first = mapping.get(loss._params[0]) or {}
    if not first.get('from_student', False):
        return
    recorder = distiller.student_recorders.recorders.get(first['recorder'])
    source = getattr(recorder, 'source', None)
    if type(recorder).__name__ != 'ModuleOutputsRecorder' or not source:
        return  # not a module's outputs: checked by shape at run time
    module = model_parts(model)[0].get_submodule(source)
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f'ValueWeightedLoss wraps distill loss {name!r}, whose student '
            f'input is the output of {source!r} ({type(module).__name__}), '
            'not class logits. Remove the wrapper: KCD reads its values '
            "from the student's classifier itself "
            '(docs/add_kcd_to_your_config.md); wrap only a logits loss, '
            "and only for weighting='value' or strategy='infobatch'.")


def check_setup(options: KCDOptions, dataset, loop, sampler,
                world_size: int) -> None:
    """Refuse configurations KCD cannot run, before any iteration."""
    if options.blends and not isinstance(dataset, KnowledgeSummaryDataset):
        raise TypeError(
            f'KCDHook(summary={options.summary!r}) needs the training '
            'dataset wrapped: '
            "train_dataloader.dataset=dict(type='mmrazor."
            "KnowledgeSummaryDataset', dataset=<your dataset>); or set "
            'summary=False for prune-only KCD.')
    inner = unwrap_summary(dataset)
    if isinstance(inner, ConcatDataset):
        raise TypeError(
            'KCD cannot tell the samples of a ConcatDataset apart: its '
            'parts repeat sample_idx. Merge the annotation files into '
            'one dataset.')
    if isinstance(inner, (RepeatDataset, ClassBalancedDataset)):
        raise TypeError(
            f'KCD cannot condense a {type(inner).__name__}: it shows each '
            'sample under several positions, but KCD values, ranks and '
            'keeps samples by position, so half a kept set would repeat '
            'what the other half trains. Use the plain dataset: for '
            'RepeatDataset(times=k) train k times the epochs (and stages); '
            'for class balance use KCDHook(class_min_keep=...).')
    if not isinstance(loop, EpochBasedTrainLoop):
        raise TypeError('KCDHook needs an epoch-based train loop '
                        "(train_cfg=dict(by_epoch=True, ...)).")
    if options.stage_epochs > loop.max_epochs:
        raise ValueError(
            f'KCDHook stage_epochs={options.stage_epochs} exceeds the run '
            f'({loop.max_epochs} epochs): no condensation would happen. '
            'Choose stage_epochs <= max_epochs / 2.')
    num_samples = len(dataset)
    floor = keep_schedule(num_samples, options.theta, options.num_steps,
                          options.stage_epochs, loop.max_epochs)[-1]
    if floor < world_size:
        raise ValueError(
            f'KCDHook theta={options.theta} would keep {floor} of '
            f'{num_samples} samples, fewer than the {world_size} '
            'rank(s) need; raise theta.')
    step = math.floor(num_samples * (1.0 - options.theta) / options.num_steps)
    if options.theta < 1.0 and step == 0:
        raise ValueError(
            f'KCDHook num_steps={options.num_steps} with theta='
            f'{options.theta} drops floor({num_samples} x '
            f'{1 - options.theta:.3g} / {options.num_steps}) = 0 samples per '
            'E-step: KCD would never condense. Lower num_steps or theta.')
    if world_size > 1 and not sampler.round_up:
        raise ValueError(
            'KCDSampler(round_up=False) on several ranks gives them shards '
            'of different sizes, so their iterations (and collectives) '
            'would not match; use round_up=True (the default).')
    loader = loop.dataloader
    if loader.batch_size and loader.drop_last and iterations_per_epoch(
            floor, loader.batch_size, world_size, drop_last=True) == 0:
        raise ValueError(
            f'train_dataloader drop_last=True with batch_size='
            f'{loader.batch_size} would run no iteration once KCD keeps '
            f'{floor} samples ({world_size} rank(s)): raise theta, lower '
            'the batch size, or set drop_last=False.')


def setup_warnings(options: KCDOptions, boundaries: Sequence[int],
                   max_epochs: int, out_features: Optional[int],
                   num_classes: Optional[int]) -> List[str]:
    """What KCD can run, but not to the purpose its options suggest: each
    a warning before training, not a refusal, since the run is still
    sound.

    * No E-step in the run (``stage_epochs == max_epochs``): KCD trains
      the full set every epoch and only records values. Kept, not
      refused: it measures KCD's overhead, and its checkpoints carry the
      values, so a longer resumed run condenses where this one stopped.
    * A single class (one classifier output, or one class in the
      dataset): every value is 0, so each E-step prunes at random.
    * More classifier outputs than the dataset has classes (a 1000-way
      ImageNet head on a 2-class set): the entropy spreads over outputs
      no sample has, starts near ln(out_features) for every sample, and
      ranks by noise until the extra outputs are trained down.

    Args:
        options: the E-step options.
        boundaries: epochs completed at each E-step of the run.
        max_epochs: the train loop's ``max_epochs``.
        out_features: the student classifier's outputs (None if unknown).
        num_classes: the dataset's classes (None if unknown), see
            :func:`kcd_mm.labels.class_count`.
    """
    messages = []
    if not boundaries:
        messages.append(
            f'KCDHook stage_epochs={options.stage_epochs} with '
            f'train_cfg.max_epochs={max_epochs} runs no E-step (E-steps '
            'come after epochs stage_epochs, 2 x stage_epochs, ... before '
            'the last): KCD trains the full set every epoch, as plain KD, '
            'and only records values. To condense, choose stage_epochs <= '
            'max_epochs / 2 (or run longer); this is fine only to measure '
            "KCD's overhead or for a run that a longer resume continues.")
    if out_features == 1 or (num_classes == 1 and not out_features):
        which = ('the student classifier has out_features=1'
                 if out_features == 1 else 'the training set has 1 class')
        messages.append(f'KCD: {which} (a single class): '
                        f'{SINGLE_CLASS_WHY}')
    elif out_features and num_classes and out_features > num_classes:
        messages.append(
            f'KCD: the student classifier has out_features={out_features}'
            f' but the training set has {num_classes} classes: the values '
            f'see all {out_features} outputs (the entropy starts near '
            f'ln({out_features}) = {math.log(out_features):.2f} for every '
            'sample) and rank the samples by noise until the extra outputs '
            "are trained down. Set the student's (and the teacher's) head "
            f'num_classes={num_classes}, or check that the dataset holds '
            'the classes the head was built for.')
    return messages


def check_first_batch(sampler, sample_idx: torch.Tensor) -> None:
    """The first batch's ``sample_idx`` must be the positions the sampler
    yielded: KCD names samples by position, so a dataset or pipeline that
    numbers them otherwise would value and keep the wrong samples. Half
    of them in place passes (see the comment below)."""
    keys = list(iter(sampler))[:sample_idx.numel()]
    want = [index_of(k) for k in keys]
    # mmengine's BaseDataset replaces a sample it cannot load (an
    # unreadable file with ignore_empty=True) by a random other one, with
    # that one's sample_idx: a few such positions are not a renumbering,
    # which leaves (almost) none in place.
    matches = sum(a == b for a, b in zip(sample_idx.tolist(), want))
    if len(want) != sample_idx.numel() or 2 * matches < len(want):
        raise ValueError(
            f'The first batch carries sample_idx {sample_idx.tolist()[:8]} '
            f'but the sampler yielded positions {want[:8]} ({matches} of '
            f'{len(want)} in place): KCD needs '
            "sample_idx == position in the dataset (mmengine's BaseDataset "
            'sets it so; do not change it in get_data_info, load_data_list '
            'or the pipeline).')


def check_same_dataset_on_ranks(num_samples: int, fingerprint) -> None:
    """All ranks must train on one dataset: KCD merges their values by
    position. Compares N and the fingerprint over all ranks."""
    seen = all_gather_object((num_samples, fingerprint))
    if any(item != seen[0] for item in seen):
        raise ValueError(
            'The ranks see different training sets (N, fingerprint per '
            f'rank: {seen}); KCD merges values by position, so every rank '
            'must build the same dataset (same ann_file, data_root, '
            'indices).')


def class_labels(dataset) -> torch.Tensor:
    """One class index per sample, for ``class_min_keep``."""
    inner = unwrap_summary(dataset)
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
