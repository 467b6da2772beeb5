"""Torch's intra-op threads for a run on a machine without an accelerator.

torch's default, one thread per core, oversubscribes a machine that is
doing anything else: a 2-core machine beside one other job ran the demo's
teacher at 2.8 s/iter instead of 0.17, and MMRazor's own
``tools/train.py`` a KCD run 10x slower per iteration than kcd_mm's
``tools/train.py``. :func:`set_cpu_threads` gives torch one thread per
idle core instead and logs the choice as
``CPU run: N torch thread(s) (...)``.

Who applies it, once per process:

* kcd_mm's ``tools/train.py`` and ``tools/test.py``, for every run they
  start (through ``tools/tool_utils.py``);
* :class:`KCDHook`, in ``before_run``, for a KCD run started by any other
  entry point (MMRazor's ``tools/train.py``, ``mim train``, the user's own
  script), unless ``OMP_NUM_THREADS`` is set or the choice was already
  made in this process. A run without ``KCDHook`` keeps torch's threads
  (the guest rule, docs/architecture.md).

Importing this module changes nothing; torch and mmengine are imported
only when a choice is made.
"""
import os
from typing import Callable, Mapping, Optional, Tuple

# The threads chosen in this process (None: no choice made yet).
_chosen: Optional[int] = None


def cpu_threads(environ: Mapping[str, str], cores: int, load: float,
                local_procs: int = 1) -> Tuple[int, str]:
    """Intra-op threads for a CPU-only run, and why.

    ``OMP_NUM_THREADS`` wins when set. Otherwise the cores not already
    busy (the 1-minute load average, rounded) are shared among this
    machine's processes of the run.

    Args:
        environ (Mapping): the environment.
        cores (int): cores this process may use.
        load (float): the 1-minute load average.
        local_procs (int): processes of this run on the machine
            (torchrun's ``LOCAL_WORLD_SIZE``).
    """
    value = environ.get('OMP_NUM_THREADS', '')
    if value.isdigit() and int(value) > 0:
        return int(value), 'OMP_NUM_THREADS'
    free = max(1, cores - int(round(load)))
    threads = max(1, free // max(1, local_procs))
    return threads, (f'{cores} cores, load {load:.1f}, {local_procs} '
                     'process(es) of this run here; set OMP_NUM_THREADS to '
                     'choose')


def without_accelerator() -> bool:
    """Whether mmengine finds no CUDA, NPU, MLU or MUSA device here (the
    one test of both this module and ``compat.cpu_launch``)."""
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    return not (is_cuda_available() or is_npu_available()
                or is_mlu_available() or is_musa_available())


def _print_log(message: str) -> None:
    from mmengine.logging import print_log
    print_log(message, logger='current')


def chosen() -> Optional[int]:
    """The threads :func:`set_cpu_threads` chose in this process, or None."""
    return _chosen


def set_cpu_threads(
        log: Callable[[str], None] = _print_log) -> Optional[int]:
    """On a machine without an accelerator, set torch's intra-op threads
    by :func:`cpu_threads` and log the choice; with one (CUDA, NPU, MLU,
    MUSA: :func:`without_accelerator`), leave torch's.

    Args:
        log (callable): takes the ``CPU run: ...`` line. Defaults to
            mmengine's current logger.

    Returns:
        int | None: the threads set; None with an accelerator.
    """
    global _chosen
    import torch
    if not without_accelerator():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(
        os, 'sched_getaffinity') else (os.cpu_count() or 1)
    threads, why = cpu_threads(os.environ, cores, os.getloadavg()[0],
                               int(os.environ.get('LOCAL_WORLD_SIZE', 1)))
    torch.set_num_threads(threads)
    _chosen = threads
    log(f'CPU run: {threads} torch thread(s) ({why}).')
    return threads


def set_cpu_threads_for_kcd_run(
        log: Callable[[str], None] = _print_log) -> Optional[int]:
    """:func:`set_cpu_threads` for a KCD run whose threads nobody chose:
    not ``OMP_NUM_THREADS`` (torch already follows it) and not an earlier
    call in this process (kcd_mm's tools).

    Returns:
        int | None: the threads set; None when it left torch's.
    """
    if _chosen is not None or os.environ.get('OMP_NUM_THREADS'):
        return None
    return set_cpu_threads(log)
