"""Knowledge-value measures: how much a sample's teacher knowledge is worth.

Each measure maps a batch's student logits, teacher logits and hard labels
to one non-negative-ish value per sample; higher means the student has
absorbed less of the teacher's knowledge on that sample, so it is worth
keeping. All work in ``log_softmax`` space and count ``0 * log 0`` as 0,
so an underflowed probability or a masked class (logit -inf) gives a
finite value, not NaN (the reference's ``p * log(p)`` does not). Pure
torch, no gradients; each is registered in
:data:`kcd_mm.registry.VALUE_MEASURES` under the name
``ValueWeightedLoss(value=...)`` takes.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..registry import VALUE_MEASURES


def value_measure(name: str, needs_teacher: bool, needs_labels: bool
                  ) -> Callable[[Callable], Callable]:
    """Register ``fn(preds_S, preds_T, labels) -> (B,)`` under ``name``.

    ``needs_teacher`` / ``needs_labels`` tell the caller which inputs to
    gather; a measure that needs neither is given None for both.
    """

    def wrap(fn: Callable) -> Callable:
        fn.needs_teacher = needs_teacher
        fn.needs_labels = needs_labels
        return VALUE_MEASURES.register_module(name=name)(fn)

    return wrap


def _row_sums(log_p: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """Row sums of ``terms`` = p * (...), counting 0 where p = 0."""
    return torch.where(log_p.isneginf(), torch.zeros_like(terms),
                       terms).sum(dim=1)


@value_measure('entropy', needs_teacher=False, needs_labels=False)
def student_entropy(preds_S: torch.Tensor,
                    preds_T: Optional[torch.Tensor] = None,
                    labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """H(p_S) at temperature 1: the reference's value (teacher unused)."""
    log_p = F.log_softmax(preds_S.float(), dim=1)
    return -_row_sums(log_p, log_p.exp() * log_p)


@value_measure('teacher_kl', needs_teacher=True, needs_labels=False)
def teacher_student_kl(preds_S: torch.Tensor,
                       preds_T: Optional[torch.Tensor] = None,
                       labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(p_T || p_S): what the student still misses of the teacher."""
    log_s = F.log_softmax(preds_S.float(), dim=1)
    log_t = F.log_softmax(preds_T.float(), dim=1)
    return _row_sums(log_t, log_t.exp() * (log_t - log_s))


@value_measure('ce', needs_teacher=False, needs_labels=True)
def label_cross_entropy(preds_S: torch.Tensor,
                        preds_T: Optional[torch.Tensor] = None,
                        labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CE of the student to the hard label: a plain hardness measure."""
    return F.cross_entropy(preds_S.float(), labels, reduction='none')


@value_measure('margin', needs_teacher=True, needs_labels=True)
def teacher_student_margin(
        preds_S: torch.Tensor,
        preds_T: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p_T(y) - p_S(y): how far the student trails the teacher on the label."""
    idx = labels.view(-1, 1)
    p_t = F.softmax(preds_T.float(), dim=1).gather(1, idx)
    p_s = F.softmax(preds_S.float(), dim=1).gather(1, idx)
    return (p_t - p_s).squeeze(1)


def get_value_measure(name: str) -> Callable:
    """The registered measure ``name``, with an error listing the choices."""
    fn = VALUE_MEASURES.get(name) if isinstance(name, str) else None
    if fn is None:
        raise ValueError(
            f'Unknown knowledge value measure value={name!r}. Choose one of '
            f'{sorted(VALUE_MEASURES.module_dict)} (the reference uses '
            '"entropy").')
    return fn
