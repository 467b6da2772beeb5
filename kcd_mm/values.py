"""Knowledge-value measures: how much a sample's teacher knowledge is worth.

Each measure maps a batch's student logits, teacher logits and hard labels
to one non-negative-ish value per sample; higher means the student has
absorbed less of the teacher's knowledge on that sample, so it is worth
keeping. All use ``log_softmax`` so an underflowed probability never gives
``0 * log 0 = NaN`` (the reference's ``p * log(p)`` does). Pure torch, no
gradients, no mmengine.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

ValueFn = Callable[[torch.Tensor, Optional[torch.Tensor],
                    Optional[torch.Tensor]], torch.Tensor]


def student_entropy(preds_S: torch.Tensor,
                    preds_T: Optional[torch.Tensor] = None,
                    labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """H(p_S) at temperature 1: the reference's value (teacher unused)."""
    log_p = F.log_softmax(preds_S.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def teacher_student_kl(preds_S: torch.Tensor,
                       preds_T: Optional[torch.Tensor] = None,
                       labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(p_T || p_S): what the student still misses of the teacher."""
    log_s = F.log_softmax(preds_S.float(), dim=1)
    log_t = F.log_softmax(preds_T.float(), dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1)


def label_cross_entropy(preds_S: torch.Tensor,
                        preds_T: Optional[torch.Tensor] = None,
                        labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CE of the student to the hard label: a plain hardness measure."""
    return F.cross_entropy(preds_S.float(), labels, reduction='none')


def teacher_student_margin(
        preds_S: torch.Tensor,
        preds_T: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """p_T(y) - p_S(y): how far the student trails the teacher on the label."""
    idx = labels.view(-1, 1)
    p_t = F.softmax(preds_T.float(), dim=1).gather(1, idx)
    p_s = F.softmax(preds_S.float(), dim=1).gather(1, idx)
    return (p_t - p_s).squeeze(1)


#: name -> (function, needs teacher logits, needs labels)
VALUE_MEASURES: Dict[str, tuple] = {
    'entropy': (student_entropy, False, False),
    'teacher_kl': (teacher_student_kl, True, False),
    'ce': (label_cross_entropy, False, True),
    'margin': (teacher_student_margin, True, True),
}


def get_value_measure(name: str) -> tuple:
    """Look a measure up by name, with an error that lists the choices."""
    if name not in VALUE_MEASURES:
        raise ValueError(
            f'Unknown knowledge value measure value={name!r}. Choose one of '
            f'{sorted(VALUE_MEASURES)} (the reference uses "entropy").')
    return VALUE_MEASURES[name]
