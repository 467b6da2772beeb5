"""kcd_mm: Knowledge Condensation Distillation (ECCV 2022) for MMRazor."""
from . import compat  # noqa: F401  (must run before the OpenMMLab imports)

__version__ = '0.1.0'
