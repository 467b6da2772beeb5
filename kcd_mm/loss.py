"""ValueWeightedLoss: any MMRazor logits distill loss, plus knowledge values.

The wrapper sits where the distill loss sat in ``distill_losses``, so it
sees the student and teacher logits of the training forward pass. It
computes each sample's knowledge value from them (no extra forward) and
hands ``(sample_idx, value)`` to :class:`KCDHook`; the loss it returns is
the wrapped loss unchanged (``weighting='uniform'``, the reference) or the
per-sample losses weighted by normalised value (``weighting='value'``).

When :class:`KCDHook` passes per-sample loss weights with the batch
(``strategy='infobatch'``: 1 / (1 - r) on the kept below-mean samples),
the loss is ``mean(weight * per-sample loss)``, split by the rules of
:mod:`kcd_mm.core.per_sample`. Only this wrapped distill loss is rescaled: the
student's own CE is computed inside the student's head, out of reach, so
it stays a plain mean over the (pruned) batch.
"""
import functools
import inspect
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmrazor.registry import MODELS

from .core import per_sample as rules
from .core.values import get_value_measure

_WEIGHTINGS = ('uniform', 'value')
_SPLITS = (None, 'vmap')


@MODELS.register_module()
class ValueWeightedLoss(nn.Module):
    """Wrap a distill loss; record per-sample knowledge values.

    Its forward takes exactly the wrapped loss's arguments (so
    ``loss_forward_mappings`` stay as they were); the first two must be the
    student's and the teacher's class logits.

    Args:
        loss (dict | nn.Module): the distill loss to wrap, e.g.
            ``dict(type='KLDivergence', tau=4, loss_weight=0.9)``.
        value (str): knowledge value measure: ``'entropy'`` (student
            entropy, the reference), ``'teacher_kl'``, ``'ce'`` or
            ``'margin'``. See :mod:`kcd_mm.core.values`.
        weighting (str): ``'uniform'`` returns the wrapped loss as is;
            ``'value'`` weights per-sample losses by value / mean value.
        per_sample (str, optional): how to split a loss kcd_mm has no rule
            for, when a split is needed (``weighting='value'``, or per-sample
            weights from ``KCDHook(strategy='infobatch')``): None refuses
            it, ``'vmap'`` evaluates each sample as a batch of one (checked
            against the batch loss on the first batch). Uniform weighting
            never splits, so any logits loss can be wrapped for it.
        record (bool): record values for the E-step. At most one
            wrapped loss per model records (none: KCD reads the student
            classifier itself). Defaults to True.
    """

    def __init__(self,
                 loss: Union[dict, nn.Module],
                 value: str = 'entropy',
                 weighting: str = 'uniform',
                 per_sample: Optional[str] = None,
                 record: bool = True) -> None:
        super().__init__()
        self.loss = MODELS.build(loss) if isinstance(loss, dict) else loss
        name = type(self.loss).__name__
        self.value = value
        self.value_fn = get_value_measure(value)
        self.needs_labels = self.value_fn.needs_labels
        if weighting not in _WEIGHTINGS:
            raise ValueError(f'ValueWeightedLoss weighting={weighting!r}: '
                             f'choose one of {_WEIGHTINGS}.')
        if per_sample not in _SPLITS:
            raise ValueError(f'ValueWeightedLoss per_sample={per_sample!r}: '
                             f'choose one of {_SPLITS}.')
        self.weighting = weighting
        self.per_sample = per_sample
        if weighting == 'value':
            self.check_splittable("weighting='value'")
        self.record = record
        self._split_checked = per_sample is None
        self._sig = inspect.signature(self.loss.forward)
        self._params = list(self._sig.parameters)
        if len(self._params) < 2:
            raise TypeError(f'ValueWeightedLoss cannot wrap {name}: its '
                            'forward must take student and teacher logits')
        # MMRazor's distiller checks loss_forward_mappings against the
        # parameters of ``forward``: this instance's forward shows the
        # wrapped loss's. A partial (not a closure) so deepcopy and pickle
        # rebind it to the copy.
        self.forward = functools.partial(ValueWeightedLoss._compute, self)
        self.forward.__signature__ = self._sig
        self._batch: Optional[Tuple[torch.Tensor, Optional[torch.Tensor],
                                    Optional[torch.Tensor]]] = None
        self._records: List[Tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def splittable(self) -> bool:
        """Per-sample losses can be had (a rule, or per_sample='vmap')."""
        return self.per_sample == 'vmap' or rules.has_rule(self.loss)

    def check_splittable(self, why: str) -> None:
        """Refuse, naming the fixes, when ``why`` needs per-sample losses
        and this loss has no per-sample form."""
        if self.splittable:
            return
        name = type(self.loss).__name__
        raise TypeError(
            f'ValueWeightedLoss cannot wrap {name} with {why}: that weights '
            f'per-sample losses, and kcd_mm knows no per-sample form of '
            f'{name}. Known logits losses: {rules.known_losses()}. Fix: '
            'wrap one of those, register a rule with '
            '@kcd_mm.core.per_sample.register(' + repr(name) + '), set '
            "per_sample='vmap' if the loss is a mean over samples of class "
            "logits, or use weighting='uniform' with strategy='kcd' or "
            "'random' (they never split the loss).")

    def set_batch(self,
                  sample_idx: torch.Tensor,
                  labels: Optional[torch.Tensor],
                  weights: Optional[torch.Tensor] = None) -> None:
        """Called by KCDHook before each iteration with the batch's ids
        (and per-sample loss weights, or None for all 1)."""
        self._batch = (sample_idx, labels, weights)

    def pop_records(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(sample_idx, values) pairs recorded since the last call."""
        records, self._records = self._records, []
        return records

    def _labels(self, bound: inspect.BoundArguments) -> Optional[torch.Tensor]:
        labels = bound.arguments.get('gt_labels')
        if labels is None and self._batch is not None:
            labels = self._batch[1]
        return labels

    def _compute(self, *args, **kwargs) -> torch.Tensor:
        bound = self._sig.bind(*args, **kwargs)
        preds_S = bound.arguments[self._params[0]]
        preds_T = bound.arguments[self._params[1]]
        if preds_S.dim() != 2:
            raise ValueError(
                f'ValueWeightedLoss expects class logits (batch, classes) as '
                f'{self._params[0]!r}, got shape {tuple(preds_S.shape)}: '
                'it wraps logits losses only. Remove the wrapper: KCD reads '
                "its values from the student's classifier itself.")
        values = None
        sample_weights = None
        if self.training and self._batch is not None:
            sample_weights = self._batch[2]
        if self.training and (self.record or self.weighting == 'value'):
            labels = self._labels(bound)
            if self.needs_labels and labels is None:
                raise ValueError(
                    f'value={self.value!r} needs the batch labels; add '
                    'mmrazor.KCDHook to custom_hooks (it passes them).')
            teacher = preds_T.detach() if self.value_fn.needs_teacher else None
            with torch.no_grad():
                values = self.value_fn(preds_S.detach(), teacher, labels)
        if self.training and self.record:
            if self._batch is None:
                raise RuntimeError(
                    'ValueWeightedLoss got no sample_idx for this batch: add '
                    "dict(type='mmrazor.KCDHook') to custom_hooks, or set "
                    'record=False on this loss.')
            sample_idx = self._batch[0]
            if sample_idx.numel() != preds_S.shape[0]:
                raise RuntimeError(
                    f'ValueWeightedLoss: batch has {preds_S.shape[0]} logits '
                    f'but {sample_idx.numel()} sample_idx; batch-level '
                    'augments that change the batch size are not supported.')
            self._records.append((sample_idx, values))
            self._batch = None
        if not self.training or (self.weighting == 'uniform'
                                 and sample_weights is None):
            return self.loss(*args, **kwargs)
        return self._weighted(bound, values, sample_weights)

    def _weighted(self, bound: inspect.BoundArguments,
                  values: Optional[torch.Tensor],
                  sample_weights: Optional[torch.Tensor]) -> torch.Tensor:
        args = list(bound.args)
        if self.per_sample == 'vmap':
            rows = rules.vmap_per_sample_loss(self.loss, *args)
            if not self._split_checked:
                self._check_split(rows, bound)
        else:
            rows = rules.per_sample_loss(self.loss, *args)
        weights = torch.ones_like(rows)
        if self.weighting == 'value':
            weights = torch.nan_to_num(values.clamp(min=0), nan=0.0)
            mean = weights.mean()
            weights = weights / mean if mean > 0 else torch.ones_like(weights)
        if sample_weights is not None:
            if sample_weights.numel() != rows.numel():
                raise RuntimeError(
                    f'ValueWeightedLoss: {sample_weights.numel()} sample '
                    f'weights for a batch of {rows.numel()}')
            weights = weights * sample_weights.to(weights.device)
        return (weights.to(rows.dtype) * rows).mean()

    def _check_split(self, rows: torch.Tensor,
                     bound: inspect.BoundArguments) -> None:
        with torch.no_grad():
            full = self.loss(*bound.args, **bound.kwargs)
        if not torch.allclose(rows.detach().mean(), full, rtol=1e-4,
                              atol=1e-6):
            raise ValueError(
                'ValueWeightedLoss per_sample="vmap": '
                f'{type(self.loss).__name__} is not a mean over samples '
                f'(per-sample mean {float(rows.mean()):.6g} != batch loss '
                f'{float(full):.6g}). '
                'Register an exact rule with @kcd_mm.per_sample.register.')
        self._split_checked = True


def find_recording_loss(model) -> Optional[ValueWeightedLoss]:
    """The model's one :class:`ValueWeightedLoss` with ``record=True``;
    None when there is none (KCD then reads the classifier itself)."""
    losses = [
        m for m in model.modules()
        if isinstance(m, ValueWeightedLoss) and m.record
    ]
    if len(losses) > 1:
        raise ValueError(
            'KCDHook takes its values from one recording ValueWeightedLoss, '
            f'found {len(losses)}: set record=False on all but one, or on '
            'all of them (KCD then reads the student classifier itself).')
    return losses[0] if losses else None
