"""kcd_mm's own registries: the parts of KCD that a config chooses by name.

The components users write in configs (KCDHook, KCDSampler,
KnowledgeSummaryDataset, ValueWeightedLoss) go into MMRazor's registries.
These three hold KCD's sub-parts, so a new strategy, value measure or
per-sample loss rule is one decorated definition, found by the same name
in options and error messages:

* ``SELECTORS``: how the kept set is chosen (``KCDHook(strategy=...)``);
* ``VALUE_MEASURES``: what a sample's knowledge is worth
  (``ValueWeightedLoss(value=...)``);
* ``PER_SAMPLE_RULES``: the per-sample form of a distill loss, keyed by the
  loss's class name.

Only mmengine's ``Registry`` is used here, no Runner machinery, so the
math modules that register into these stay importable on their own.
"""
from mmengine.registry import Registry

SELECTORS = Registry('kcd selector', scope='kcd_mm')
VALUE_MEASURES = Registry('kcd value measure', scope='kcd_mm')
PER_SAMPLE_RULES = Registry('kcd per-sample loss rule', scope='kcd_mm')
