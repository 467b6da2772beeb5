"""Why an E-step's values cannot rank the samples, and the likely cause.

:meth:`kcd_mm.core.state.KCDState.weak_values` asks these after each
E-step; :mod:`kcd_mm.checks` warns of a single class before training
with the same words.
"""
import math
from typing import List, Optional


def degenerate_stage(value_mean: float, value_std: float,
                     classifier_changed: Optional[bool]) -> Optional[str]:
    """Why a stage's values cannot rank samples, or None when they can:
    the student's classifier did not change, or the values are (near)
    constant (std below 1e-3 of the mean)."""
    if classifier_changed is False:
        return 'the student classifier did not change during the stage'
    if math.isfinite(value_std) and value_std <= 1e-3 * abs(value_mean):
        return (f'the values are near constant (std {value_std:.3g}, mean '
                f'{value_mean:.3g})')
    return None


#: why the values of a stage that trains no classifier cannot rank
NO_CLASSIFIER_CAUSE = (
    'a stage that trains no classifier (e.g. ABLoss stage 1, Factor '
    'Transfer pretraining); run KCD only in stages that train the student '
    "head, or use strategy='random' knowingly.")


#: why one class gives values that cannot rank, and the fix
SINGLE_CLASS_WHY = (
    'every prediction is certain, so the entropy (as any value of a '
    'one-way softmax) is 0 for every sample and each E-step prunes at '
    "random. KCD needs two classes or more: on one-class data drop KCD, or "
    "use strategy='random' knowingly.")


def degenerate_cause(out_features: Optional[int],
                     num_classes: Optional[int]) -> str:
    """The likely cause of a degenerate stage (see :func:`degenerate_stage`)
    to name in its warning: a single class where the classifier or the
    dataset has one, else a stage that trains no classifier."""
    if 1 in (out_features, num_classes):
        return f'a single class: {SINGLE_CLASS_WHY}'
    return NO_CLASSIFIER_CAUSE


def weak_value_warnings(record, out_features: Optional[int],
                        num_classes: Optional[int]) -> List[str]:
    """The warnings of a stage record whose values cannot rank the samples
    (``record.degenerate`` set) or that recorded none."""
    warnings = []
    if record.degenerate is not None:
        warnings.append(
            f'KCD stage {record.stage}: {record.degenerate}, so its '
            'values cannot tell samples apart and this E-step in effect '
            'prunes at random. Likely cause: ' +
            degenerate_cause(out_features, num_classes))
    if record.values_recorded == 0:
        warnings.append(
            f'KCD stage {record.stage}: no knowledge value was recorded '
            'since the last E-step (was the distill loss skipped, e.g. '
            'after StopDistillHook?); it ranked by earlier values.')
    return warnings
