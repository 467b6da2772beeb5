"""Per-sample decompositions of MMRazor's logits distillation losses.

Value weighting needs each sample's share of a batch loss: a vector
``l`` of length B with ``l.mean() == loss(batch)``, differentiable like the
loss itself. MMRazor's losses reduce inside ``forward``, so each known loss
gets a rule here that reuses the module's own hyper-parameters. A loss with
no rule is refused where a split is needed (register one with
:func:`register`), or split per sample with ``torch.func.vmap`` on request;
that split is checked against the batch loss on the first batch. Pure
torch; the rules live in :data:`kcd_mm.registry.PER_SAMPLE_RULES`, keyed by the
loss's class name.
"""
from typing import Callable, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import PER_SAMPLE_RULES

PerSampleFn = Callable[..., torch.Tensor]


def register(loss_type: str) -> Callable[[PerSampleFn], PerSampleFn]:
    """Register ``fn(module, *forward_args) -> (B,)`` for a loss class name."""
    return PER_SAMPLE_RULES.register_module(name=loss_type, force=True)


def has_rule(module: nn.Module) -> bool:
    return type(module).__name__ in PER_SAMPLE_RULES


def known_losses() -> List[str]:
    return sorted(PER_SAMPLE_RULES.module_dict)


def per_sample_loss(module: nn.Module, *args) -> torch.Tensor:
    """Per-sample losses of ``module`` on one batch (rule must exist)."""
    return PER_SAMPLE_RULES.get(type(module).__name__)(module, *args)


def vmap_per_sample_loss(module: nn.Module, *args) -> torch.Tensor:
    """Generic split: the loss of each sample evaluated as a batch of one."""

    def one(*xs):
        return module(*(x.unsqueeze(0) for x in xs)).reshape(())

    return torch.func.vmap(one)(*args)


def _reduction_scale(reduction: str, batch: int, per_row: int) -> float:
    """Factor turning a per-sample sum into this reduction's share."""
    if reduction == 'batchmean':
        return 1.0
    if reduction == 'mean':
        return 1.0 / per_row
    if reduction == 'sum':
        return float(batch)
    raise ValueError(
        f'reduction={reduction!r} returns no scalar loss; use "batchmean"')


def _kl_rows(log_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    return F.kl_div(log_s, p_t, reduction='none').sum(dim=1)


@register('KLDivergence')
def _kl_divergence(module, preds_S, preds_T):
    if module.teacher_detach:
        preds_T = preds_T.detach()
    tau = module.tau
    rows = _kl_rows(
        F.log_softmax(preds_S / tau, dim=1), F.softmax(preds_T / tau, dim=1))
    scale = _reduction_scale(module.reduction, preds_S.shape[0],
                             preds_S[0].numel())
    return module.loss_weight * tau**2 * scale * rows


@register('DKDLoss')
def _dkd(module, preds_S, preds_T, gt_labels):
    tau, batch = module.tau, preds_S.shape[0]
    # mmrazor's DKDLoss passes size_average=False to F.kl_div, which turns
    # reduction 'mean' into 'sum' (batchmean still divides by B): mirror it.
    reduction = 'sum' if module.reduction == 'mean' else module.reduction
    gt_mask = module._get_gt_mask(preds_S, gt_labels)
    other_mask = module._get_non_gt_mask(preds_S, gt_labels)
    s_bin = module._cat_mask(F.softmax(preds_S / tau, dim=1), gt_mask,
                             other_mask)
    t_bin = module._cat_mask(F.softmax(preds_T / tau, dim=1), gt_mask,
                             other_mask)
    tckd = _kl_rows(torch.log(s_bin), t_bin)
    tckd = tckd * _reduction_scale(reduction, batch, 2)
    nckd = _kl_rows(
        F.log_softmax(preds_S / tau - 1000.0 * gt_mask, dim=1),
        F.softmax(preds_T / tau - 1000.0 * gt_mask, dim=1))
    nckd = nckd * _reduction_scale(reduction, batch, preds_S.shape[1])
    return module.loss_weight * tau**2 * (
        module.alpha * tckd + module.beta * nckd)


@register('DISTLoss')
def _dist(module, logits_S, logits_T):
    """Inter-class term per sample; the intra-class (over the batch)
    Pearson term split exactly into per-sample shares of its numerator."""
    if module.teacher_detach:
        logits_T = logits_T.detach()
    tau, eps = module.tau, 1e-8
    y_s = (logits_S / tau).softmax(dim=1)
    y_t = (logits_T / tau).softmax(dim=1)
    a = y_s - y_s.mean(1, keepdim=True)
    b = y_t - y_t.mean(1, keepdim=True)
    inter = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    a = y_s - y_s.mean(0, keepdim=True)  # centred over the batch, per class
    b = y_t - y_t.mean(0, keepdim=True)
    share = a * b / (a.norm(dim=0) * b.norm(dim=0) + eps)  # (B, C)
    intra = 1 - y_s.shape[0] * share.mean(dim=1)
    return module.loss_weight * tau**2 * (
        module.inter_loss_weight * inter + module.intra_loss_weight * intra)


@register('WSLD')
def _wsld(module, student, teacher, gt_labels):
    tau = module.tau
    soft_ce = -(F.softmax(teacher / tau, dim=1) *
                F.log_softmax(student / tau, dim=1)).sum(1)
    log_s = F.log_softmax(student.detach(), dim=1)
    log_t = F.log_softmax(teacher.detach(), dim=1)
    idx = gt_labels.view(-1, 1)
    ratio = (-log_s.gather(1, idx)) / (-log_t.gather(1, idx) + 1e-7)
    focal = 1 - torch.exp(-ratio.clamp(min=0)).squeeze(1)
    return module.loss_weight * tau**2 * focal * soft_ce
