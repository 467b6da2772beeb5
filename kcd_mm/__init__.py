"""kcd_mm: Knowledge Condensation Distillation (ECCV 2022) for MMRazor.

``custom_imports = dict(imports=['kcd_mm'])`` registers KCDHook, KCDSampler,
KnowledgeSummaryDataset and ValueWeightedLoss into MMRazor's registries.
"""
from . import compat  # noqa: F401,I001  (must run before OpenMMLab imports)

import mmrazor.models  # noqa: F401,E402  (registers the stock distill losses)

from .dataset import KnowledgeSummaryDataset  # noqa: E402
from .hook import KCDHook  # noqa: E402
from .loss import ValueWeightedLoss  # noqa: E402
from .sampler import KCDSampler  # noqa: E402
from .state import KCDOptions, KCDState  # noqa: E402

__version__ = '0.1.0'
__all__ = [
    'KCDHook', 'KCDSampler', 'KnowledgeSummaryDataset', 'ValueWeightedLoss',
    'KCDOptions', 'KCDState'
]
