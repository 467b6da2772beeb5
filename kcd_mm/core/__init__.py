"""KCD's math, free of mmengine's Runner: tensors in, tensors out.

The knowledge bank (:mod:`.bank`), the E-step's schedule, ranking,
partition and pairing (:mod:`.condensation`), the comparison strategies'
math (:mod:`.strategies`) and the selectors that use them
(:mod:`.selection`), the summary (:mod:`.summary`), the options
(:mod:`.options`), value measures (:mod:`.values`), per-sample loss rules
(:mod:`.per_sample`), and the one owner of KCD's saved state
(:mod:`.state`). Nothing here imports mmengine's runner, hooks, datasets
or ``mmengine.dist`` (tests/test_core/test_runner_free.py holds that);
the glue in ``kcd_mm/`` does.
"""
from .bank import KnowledgeBank
from .options import KCDOptions
from .state import KCDState

__all__ = ['KnowledgeBank', 'KCDOptions', 'KCDState']
