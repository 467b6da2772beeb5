"""KCD's math, free of mmengine's Runner: tensors in, tensors out.

The knowledge bank (:mod:`.bank`), the arithmetic of condensing for KCD
and the strategies it is compared with (schedule, ranking, partition,
pairing, random orders, InfoBatch's pruning: :mod:`.condensation`), the
selectors that use it, one class a strategy (:mod:`.selection`), the
summary (:mod:`.summary`), the options (:mod:`.options`), value measures
(:mod:`.values`), per-sample loss rules (:mod:`.per_sample`), and the one
owner of KCD's saved state (:mod:`.state`). Nothing here imports
mmengine's runner, hooks, datasets or ``mmengine.dist``
(tests/test_core/test_runner_free.py holds that); the glue in ``kcd_mm/``
does.
"""
from .bank import KnowledgeBank
from .options import KCDOptions
from .state import KCDState

__all__ = ['KnowledgeBank', 'KCDOptions', 'KCDState']
