"""KCDOptions: the E-step's options, checked once, before any training.

Every option is checked for its type and its range when the hook is
built, so a typo in a config fails at once with the option, the value and
the fix named, not at the first E-step, and never silently.
"""
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple, Union

from ..registry import SELECTORS
from . import selection  # noqa: F401  (registers the built-in selectors)
from .condensation import check_lam_range
from .summary import BLENDING_MODES


@dataclass(frozen=True)
class KCDOptions:
    """The E-step's options (reference defaults); see docs/configuration.md.

    Attributes:
        stage_epochs: T, epochs between two E-steps (reference: 40).
        theta: keep floor as a fraction of N (reference: 0.7).
        num_steps: K, condensations to go from N to the floor (reference: 6).
        score_exponent: exponent on F/T_ref in the score (reference: 0.03).
        score_ref_epochs: T_ref; None means ``stage_epochs``.
        lam_range: (lam_min, lam_max) of the summary blend.
        summary: how dropped samples are folded into the kept tail:
            ``'persistent'`` (the reference: blends accumulate in each
            sample's image for the rest of training), ``'stage'`` (this
            stage's pairs only, from raw images) or False (prune only); see
            :mod:`kcd_mm.core.summary`.
        summary_terms: with ``'persistent'`` on a file dataset, the most
            original images one sample's image may combine.
        blend_label: a blended sample's label: ``'own'`` (the reference:
            the tail sample keeps its hard label) or ``'mix'`` (the labels
            of the images it is made of, in their weights, as mixup does).
        class_min_keep: keep at least this fraction of every class (0: off,
            the reference); needs the samples' labels.
        strategy: the registered selector that chooses the kept set:
            ``'kcd'`` (the method), ``'random'``, ``'infobatch'`` or
            ``'per_epoch_random'`` (comparisons at KCD's sample budget,
            see :mod:`kcd_mm.core.selection`).
        infobatch_full_epochs_ratio: with ``'infobatch'``, the last
            ``ceil(ratio * max_epochs)`` epochs train on all data.
        infobatch_ratio: with ``'infobatch'``, InfoBatch's own fixed
            fraction r of the below-mean samples dropped each epoch (its
            paper's 0.5); the run then spends what that gives, not KCD's
            budget. None (the default) plans r every epoch so that the run
            spends exactly KCD's budget.
    """
    stage_epochs: int = 40
    theta: float = 0.7
    num_steps: int = 6
    score_exponent: float = 0.03
    score_ref_epochs: Optional[float] = None
    lam_range: Tuple[float, float] = (0.7, 1.0)
    summary: Union[str, bool] = 'persistent'
    summary_terms: int = 4
    blend_label: str = 'own'
    class_min_keep: float = 0.0
    strategy: str = 'kcd'
    infobatch_full_epochs_ratio: float = 0.125
    infobatch_ratio: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.strategy, str) or \
                self.strategy not in SELECTORS:
            raise ValueError(
                f'KCD strategy={self.strategy!r} is unknown: choose one of '
                f'{tuple(SELECTORS.module_dict)} (kcd: value-ranked '
                "condensation, the method; random: random subsets of KCD's "
                "sizes; infobatch: InfoBatch pruning at KCD's sample "
                'budget; per_epoch_random: a fresh random subset of '
                "KCD's size every epoch).")
        _integer('stage_epochs', self.stage_epochs,
                 'epochs between two condensations; reference: 40')
        _number('theta', self.theta, 0.0, 1.0, 'fraction of the training '
                'set kept at the end; reference: 0.7, 1.0 keeps everything',
                low_open=True)
        _integer('num_steps', self.num_steps,
                 'condensations from N down to theta*N; reference: 6')
        _number('score_exponent', self.score_exponent, 0.0, None,
                'reference: 0.03; 0 ranks by mean value alone')
        if self.score_ref_epochs is not None:
            _number('score_ref_epochs', self.score_ref_epochs, 0.0, None,
                    'None uses stage_epochs, as the reference does',
                    low_open=True)
        if self.summary is not False and self.summary not in BLENDING_MODES:
            hint = (" (True was the stage summary before 'persistent' "
                    "came; write summary='stage' for that)"
                    if self.summary is True else '')
            raise ValueError(
                f'KCD summary={self.summary!r} must be \'persistent\' (the '
                "reference: blends stay in each sample's image and "
                "accumulate), 'stage' (this stage's pairs only, from raw "
                f'images) or False (prune only){hint}.')
        _integer('summary_terms', self.summary_terms,
                 'original images one blended file-dataset sample may '
                 'combine; 4 by default')
        if self.blend_label not in ('own', 'mix'):
            raise ValueError(
                f'KCD blend_label={self.blend_label!r} must be \'own\' (the '
                'reference: a blended sample keeps its hard label) or '
                "'mix' (its images' labels, in their weights).")
        if self.blend_label == 'mix' and not self.blends:
            raise ValueError(
                "KCD blend_label='mix' labels blended samples, and "
                f'summary={self.summary!r} with strategy={self.strategy!r} '
                "blends none: use strategy='kcd' with summary='persistent' "
                "or 'stage', or drop blend_label.")
        _number('class_min_keep', self.class_min_keep, 0.0, self.theta,
                f'no more of a class can be kept than of the whole set '
                f'(theta={self.theta}); 0 turns balancing off')
        if self.class_min_keep > 0 and not self.selector.balances_classes:
            raise ValueError(
                "KCD class_min_keep applies to strategy='kcd' only, not "
                f'{self.strategy!r}; set class_min_keep=0.')
        _number('infobatch_full_epochs_ratio',
                self.infobatch_full_epochs_ratio, 0.0, 1.0,
                'the fraction of final epochs on all data; InfoBatch: 0.125',
                high_open=True)
        if self.infobatch_ratio is not None:
            _number('infobatch_ratio', self.infobatch_ratio, 0.0, 1.0,
                    "InfoBatch's fraction of the below-mean samples dropped "
                    'each epoch, its paper 0.5; None: planned to spend '
                    "KCD's budget", low_open=True, high_open=True)
            if self.strategy != 'infobatch':
                raise ValueError(
                    f'KCD infobatch_ratio={self.infobatch_ratio} applies to '
                    "strategy='infobatch' only, not "
                    f'{self.strategy!r}; drop it.')
        lam_range = self.lam_range
        if isinstance(lam_range, (str, bytes)) or not hasattr(
                lam_range, '__len__') or len(lam_range) != 2 or not all(
                    _is_real(x) for x in lam_range):
            raise TypeError(
                f'KCD lam_range={lam_range!r} must be two numbers '
                '(lam_min, lam_max); the reference uses (0.7, 1.0).')
        object.__setattr__(self, 'lam_range', check_lam_range(lam_range))

    @property
    def selector(self) -> type:
        """The selector class ``strategy`` names."""
        return SELECTORS.get(self.strategy)

    def changes_from(self, saved: Dict) -> Dict[str, Tuple]:
        """``{name: (saved, now)}`` of the options that differ from a saved
        ``asdict`` (a list and a tuple of equal items do not differ)."""

        def norm(v):
            return tuple(v) if isinstance(v, (list, tuple)) else v

        return {
            k: (saved[k], v)
            for k, v in asdict(self).items()
            if k in saved and norm(saved[k]) != norm(v)
        }

    @property
    def ref_epochs(self) -> float:
        return float(self.score_ref_epochs or self.stage_epochs)

    @property
    def blends(self) -> bool:
        """Summary pairs are formed (only KCD's condensation has them)."""
        return self.summary in BLENDING_MODES and self.selector.forms_pairs


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(name: str, value, why: str) -> None:
    """An int >= 1 (not a bool, a float or a string)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f'KCD {name}={value!r} must be an integer >= 1 '
                        f'({why}).')
    if value < 1:
        raise ValueError(f'KCD {name}={value!r} must be an integer >= 1 '
                         f'({why}).')


def _number(name: str, value, low: float, high: Optional[float], why: str,
            low_open: bool = False, high_open: bool = False) -> None:
    """A finite real number in [low, high] (ends open where asked)."""
    left, right = '(' if low_open else '[', ')' if high_open else ']'
    span = f'{left}{low}, {"inf)" if high is None else f"{high}{right}"}'
    if not _is_real(value):
        raise TypeError(f'KCD {name}={value!r} must be a number in {span} '
                        f'({why}).')
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f'KCD {name}={value!r} must lie in {span} ({why}).')
