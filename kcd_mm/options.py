"""KCDOptions: the E-step's options, checked once, before any training."""
from dataclasses import dataclass
from typing import Optional, Tuple

from . import selection  # noqa: F401  (registers the built-in selectors)
from .condensation import check_lam_range
from .registry import SELECTORS


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
        summary: blend dropped samples into the tail (False: prune only).
        class_min_keep: keep at least this fraction of every class (0: off,
            the reference); needs the samples' labels.
        strategy: the registered selector that chooses the kept set:
            ``'kcd'`` (the method), ``'random'`` or ``'infobatch'``
            (comparisons at KCD's sample budget, see
            :mod:`kcd_mm.selection`).
        infobatch_full_epochs_ratio: with ``'infobatch'``, the last
            ``ceil(ratio * max_epochs)`` epochs train on all data.
    """
    stage_epochs: int = 40
    theta: float = 0.7
    num_steps: int = 6
    score_exponent: float = 0.03
    score_ref_epochs: Optional[float] = None
    lam_range: Tuple[float, float] = (0.7, 1.0)
    summary: bool = True
    class_min_keep: float = 0.0
    strategy: str = 'kcd'
    infobatch_full_epochs_ratio: float = 0.125

    def __post_init__(self):
        if self.strategy not in SELECTORS:
            raise ValueError(
                f'KCD strategy={self.strategy!r} is unknown: choose one of '
                f'{tuple(SELECTORS.module_dict)} (kcd: value-ranked '
                "condensation, the method; random: random subsets of KCD's "
                "sizes; infobatch: InfoBatch pruning at KCD's sample "
                'budget).')
        if not isinstance(self.stage_epochs, int) or self.stage_epochs < 1:
            raise ValueError(
                f'KCD stage_epochs={self.stage_epochs!r} must be an integer '
                '>= 1 (epochs between two condensations; reference: 40).')
        if not 0.0 < float(self.theta) <= 1.0:
            raise ValueError(
                f'KCD theta={self.theta!r} must lie in (0, 1]: it is the '
                'fraction of the training set kept at the end (reference: '
                '0.7; 1.0 keeps everything).')
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(
                f'KCD num_steps={self.num_steps!r} must be an integer >= 1 '
                '(condensations from N down to theta*N; reference: 6).')
        if self.score_exponent < 0:
            raise ValueError(
                f'KCD score_exponent={self.score_exponent!r} must be >= 0 '
                '(reference: 0.03; 0 ranks by mean value alone).')
        if self.score_ref_epochs is not None and self.score_ref_epochs <= 0:
            raise ValueError(
                f'KCD score_ref_epochs={self.score_ref_epochs!r} must be > 0 '
                'or None (None uses stage_epochs, as the reference does).')
        if not 0.0 <= self.class_min_keep <= self.theta:
            raise ValueError(
                f'KCD class_min_keep={self.class_min_keep!r} must lie in '
                f'[0, theta={self.theta}]: no more of a class can be kept '
                'than of the whole set (0 turns balancing off).')
        if self.class_min_keep > 0 and not self.selector.balances_classes:
            raise ValueError(
                "KCD class_min_keep applies to strategy='kcd' only, not "
                f'{self.strategy!r}; set class_min_keep=0.')
        if not 0.0 <= self.infobatch_full_epochs_ratio < 1.0:
            raise ValueError(
                'KCD infobatch_full_epochs_ratio='
                f'{self.infobatch_full_epochs_ratio!r} must lie in [0, 1): '
                'the fraction of final epochs on all data (InfoBatch: '
                '0.125).')
        object.__setattr__(self, 'lam_range', check_lam_range(self.lam_range))

    @property
    def selector(self) -> type:
        """The selector class ``strategy`` names."""
        return SELECTORS.get(self.strategy)

    @property
    def ref_epochs(self) -> float:
        return float(self.score_ref_epochs or self.stage_epochs)

    @property
    def blends(self) -> bool:
        """Summary pairs are formed (only KCD's condensation has them)."""
        return self.summary and self.selector.forms_pairs
