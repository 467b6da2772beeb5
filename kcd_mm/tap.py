"""LogitsTap: knowledge values read from the student's classifier itself.

KCD's value needs the student's class logits of the training forward (and
the teacher's, for some measures), not the distill loss: a forward hook on
the student's classifier (``head.fc`` of an mmpretrain model, found
automatically or named by ``KCDHook(classifier=...)``) reads them, so KCD
works on top of any MMRazor distillation method, logits, feature or
relation based, without touching ``distill_losses``. It offers
:class:`ValueWeightedLoss`'s interface to :class:`KCDHook`
(``set_batch``, ``pop_records``), and is used where the model has no
recording ``ValueWeightedLoss``.
"""
import hashlib
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .core.values import get_value_measure


def model_parts(model) -> Tuple[nn.Module, Optional[nn.Module]]:
    """(student, teacher) of an MMRazor distiller; (model, None) else."""
    model = getattr(model, 'module', model)  # a DDP wrapper
    student = getattr(model, 'student', None) or model
    return student, getattr(model, 'teacher', None)


def find_classifier_in(part: nn.Module,
                       path: Optional[str] = None) -> Tuple[nn.Module, str]:
    """The classifier of a model part and its path: ``path`` if given,
    else ``head.fc`` of an mmpretrain model, else its last ``nn.Linear``."""
    if path is not None:
        try:
            return part.get_submodule(path), path
        except AttributeError:
            raise ValueError(
                f'KCDHook classifier={path!r}: the student has no such '
                'module. Name the module that outputs the class logits, '
                "relative to the student (e.g. 'head.fc').") from None
    head = getattr(part, 'head', None)
    if isinstance(getattr(head, 'fc', None), nn.Linear):
        return head.fc, 'head.fc'
    linears = [(n, m) for n, m in part.named_modules()
               if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            'KCD found no classifier in the student (no head.fc, no '
            "nn.Linear): name it with KCDHook(classifier='...').")
    name, module = linears[-1]
    return module, name


def head_classes(part: nn.Module) -> Optional[int]:
    """The classes of a model part's head (mmpretrain heads say so)."""
    return getattr(getattr(part, 'head', None), 'num_classes', None)


def check_logits_module(module: nn.Module, path: str,
                        num_classes: Optional[int]) -> None:
    """Refuse, before any iteration, a module that cannot give class
    logits: not an ``nn.Linear``, or one whose outputs are not the
    head's classes."""
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f'KCD reads class logits from the student module {path!r}, a '
            f'{type(module).__name__}, not an nn.Linear classifier: its '
            'outputs are features, and their "entropy" would rank samples '
            "by noise. Set KCDHook(classifier='head.fc') (the module "
            'whose outputs are the class logits).')
    if num_classes and module.out_features != num_classes:
        raise ValueError(
            f'KCD reads class logits from {path!r}, which has '
            f'{module.out_features} outputs, but the head classifies '
            f'{num_classes} classes. Set KCDHook(classifier=...) to the '
            "student's classification layer.")


class LogitsTap:
    """Record each training batch's knowledge values from the classifier.

    Args:
        model (nn.Module): the Runner's model (distiller or classifier).
        value (str): the value measure (see :mod:`kcd_mm.core.values`).
        classifier (str, optional): the student's classifier, as a module
            path relative to the student; None finds it.
    """

    def __init__(self, model: nn.Module, value: str = 'entropy',
                 classifier: Optional[str] = None) -> None:
        self.value = value
        self.value_fn = get_value_measure(value)
        self.needs_labels = self.value_fn.needs_labels
        student, teacher = model_parts(model)
        self.module, self.path = find_classifier_in(student, classifier)
        check_logits_module(self.module, self.path, head_classes(student))
        self._handles = [self.module.register_forward_hook(self._student)]
        if self.value_fn.needs_teacher:
            if teacher is None:
                raise ValueError(
                    f'KCD value={value!r} needs the teacher, and the model '
                    'has none; use value=\'entropy\' or \'ce\'.')
            t_module, t_path = find_classifier_in(teacher)
            check_logits_module(t_module, 'teacher.' + t_path,
                                head_classes(teacher))
            self._handles.append(t_module.register_forward_hook(
                self._teacher))
        self._batch: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]
        self._batch = None
        self._logits: List[Optional[torch.Tensor]] = [None, None]

    def _student(self, module, args, output) -> None:
        # The first training forward of the iteration: the batch itself.
        if module.training and self._batch is not None and \
                self._logits[0] is None:
            self._logits[0] = output.detach()

    def _teacher(self, module, args, output) -> None:
        if self._batch is not None and self._logits[1] is None:
            self._logits[1] = output.detach()

    def check_splittable(self, why: str) -> None:
        """Per-sample loss weights need the distill loss itself."""
        raise TypeError(
            f'{why} weights the distill loss per sample, so the loss must '
            "be wrapped: dict(type='ValueWeightedLoss', loss=<your logits "
            "distill loss>); KCD's own values need no wrapper.")

    def set_batch(self, sample_idx: torch.Tensor,
                  labels: Optional[torch.Tensor],
                  weights: Optional[torch.Tensor] = None) -> None:
        """Called by KCDHook before each iteration with the batch's ids."""
        self._batch = (sample_idx, labels)
        self._logits = [None, None]

    def pop_records(self) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """This iteration's (sample_idx, values), computed from the
        logits the classifier produced."""
        if self._batch is None:
            return []
        (sample_idx, labels), self._batch = self._batch, None
        preds_S, preds_T = self._logits
        self._logits = [None, None]
        if preds_S is None:
            raise RuntimeError(
                f'KCD: the student classifier {self.path!r} ran no training '
                'forward this iteration, so the batch has no values. Name '
                "the module that does with KCDHook(classifier='...').")
        if preds_S.dim() != 2 or preds_S.shape[0] != sample_idx.numel():
            raise RuntimeError(
                f'KCD: {self.path!r} gave outputs of shape '
                f'{tuple(preds_S.shape)} for a batch of '
                f'{sample_idx.numel()}; class logits (batch, classes) are '
                'needed (batch-level augments that change the batch size '
                'are not supported).')
        if self.needs_labels and labels is None:
            raise ValueError(f'KCD value={self.value!r} needs gt_label in '
                             'the data samples.')
        with torch.no_grad():
            values = self.value_fn(preds_S, preds_T, labels)
        return [(sample_idx, values)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def find_classifier(model) -> Optional[nn.Module]:
    """The student's classifier (see :func:`tap.find_classifier_in`);
    None when there is none."""
    try:
        return find_classifier_in(model_parts(model)[0])[0]
    except ValueError:
        return None


def weights_digest(module: Optional[nn.Module]) -> Optional[bytes]:
    """A digest of a module's parameters, to tell whether it changed."""
    if module is None:
        return None
    digest = hashlib.sha1()
    for param in module.parameters():
        digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.digest()


def batch_ids(samples, with_labels: bool):
    """``(sample_idx, labels)`` of a batch's data samples; labels (first
    label of each) only when asked for and present, else None."""
    try:
        # In the metainfo (PackInputs) or a data field (MMRazor's
        # PackCRDClsInputs): an attribute either way, read without
        # building the metainfo dict (every batch, every sample).
        idx = [int(s.sample_idx) for s in samples]
    except AttributeError:
        raise KeyError(
            'KCD needs sample_idx in every data sample, in its metainfo '
            "(PackInputs) or as a data field (MMRazor's PackCRDClsInputs): "
            'use an mmengine BaseDataset (it adds sample_idx) and a '
            'pipeline that keeps it.') from None
    labels = None
    if with_labels and 'gt_label' in samples[0]:
        labels = torch.cat([s.gt_label.reshape(-1)[:1] for s in samples])
    return torch.tensor(idx, dtype=torch.int64), labels
