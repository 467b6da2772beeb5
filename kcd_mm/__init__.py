"""kcd_mm: Knowledge Condensation Distillation (ECCV 2022) for MMRazor.

``custom_imports = dict(imports=['kcd_mm'])`` registers KCDHook, KCDSampler,
KnowledgeSummaryDataset, ValueWeightedLoss and EpochSeedingHook into
MMRazor's registries, with AtomicCheckpointHook and CPUBF16AmpOptimWrapper
for the runs that name them. Importing it changes nothing for code that
does not use them (docs/architecture.md, "A guest in every process", which
also maps the package).
"""
import sys  # noqa: I001  isort:skip

from . import compat  # noqa: F401  isort:skip  (before any OpenMMLab import)

import mmrazor.models  # noqa: F401,E402  (registers the stock distill losses)

from .compat.cpu_amp import CPUBF16AmpOptimWrapper  # noqa: E402
from .compat.mmengine_checkpoints import AtomicCheckpointHook  # noqa: E402
from .core import per_sample, values  # noqa: E402,F401  (extension points)
from .core.options import KCDOptions  # noqa: E402
from .core.state import KCDState  # noqa: E402
from .dataset import KnowledgeSummaryDataset  # noqa: E402
from .hook import KCDHook  # noqa: E402
from .loss import ValueWeightedLoss  # noqa: E402
from .sampler import KCDSampler  # noqa: E402
from .seeding import EpochSeedingHook  # noqa: E402

# Their import paths from before kcd_mm.core: ``import kcd_mm.per_sample``,
# ``from kcd_mm.values import value_measure`` (the documented ways to add a
# per-sample rule or a value measure).
sys.modules.setdefault(__name__ + '.per_sample', per_sample)
sys.modules.setdefault(__name__ + '.values', values)

__version__ = '0.1.0'
__all__ = [
    'KCDHook', 'KCDSampler', 'KnowledgeSummaryDataset', 'ValueWeightedLoss',
    'EpochSeedingHook', 'KCDOptions', 'KCDState', 'AtomicCheckpointHook',
    'CPUBF16AmpOptimWrapper'
]
