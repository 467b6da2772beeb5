"""What ``tools/train.py`` and ``tools/test.py`` share, besides mmengine.

The tools import this module as a sibling (``python tools/train.py`` puts
``tools/`` first on ``sys.path``), after ``kcd_mm.compat``. Distribution is
mmengine's: the tools set ``cfg.launcher`` and the Runner initialises the
process group (``kcd_mm.compat`` makes that work without CUDA, with gloo).
Here are only

* torch's CPU threads (:mod:`kcd_mm.cpu_threads`; ``KCDHook`` makes the
  same choice in KCD runs that other entry points start);
* the launcher arguments (``--launcher`` and both spellings of the local
  rank: ``torch.distributed.launch`` on torch >= 2 passes ``--local-rank``,
  older launchers ``--local_rank``);
* the work dir, picked the OpenMMLab way (CLI, then config, then
  ``./work_dirs/<config stem>``);
* building the Runner, honouring a custom ``runner_type``;
* tearing the process group down before interpreter exit.

Nothing here imports OpenMMLab at module level.
"""
import argparse
import gc
import os
import os.path as osp
from typing import Optional, Tuple

import torch.distributed as torch_dist

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--launcher`` and ``--local_rank``/``--local-rank`` to a parser.

    Both spellings of the local rank store into ``args.local_rank``.

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
    """
    parser.add_argument(
        '--launcher',
        choices=LAUNCHERS,
        default='none',
        help='job launcher')
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        dest='local_rank',
        type=int,
        default=0,
        help='local rank, passed by torch.distributed.launch; torchrun and '
        'slurm set it through the environment instead')


def cpu_threads(environ, cores: int, load: float,
                local_procs: int = 1) -> Tuple[int, str]:
    """Intra-op threads for a CPU-only run, and why:
    :func:`kcd_mm.cpu_threads.cpu_threads`.

    ``OMP_NUM_THREADS`` wins when set. Otherwise the cores not already
    busy (the 1-minute load average, rounded) are shared among this
    machine's processes of the run: torch's default of one thread per core
    oversubscribes a busy machine (a 2-core machine beside one other job
    ran the demo's teacher at 2.8 s/iter instead of 0.17).
    """
    from kcd_mm.cpu_threads import cpu_threads as choose
    return choose(environ, cores, load, local_procs)


def set_cpu_threads() -> None:
    """On a machine without an accelerator, set torch's intra-op threads
    by :func:`cpu_threads` and log the choice; with one (CUDA, NPU, MLU,
    MUSA: mmengine's ``get_device``), leave torch's.

    :func:`kcd_mm.cpu_threads.set_cpu_threads`, which also records the
    choice, so that a KCD run's ``KCDHook`` does not make it again.
    """
    from kcd_mm.cpu_threads import set_cpu_threads as apply
    apply()


def set_local_rank_env(local_rank: int) -> None:
    """Export ``LOCAL_RANK`` unless the launcher already did.

    Args:
        local_rank (int): The rank given on the command line.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)


def resolve_work_dir(cfg, config_path: str,
                     work_dir: Optional[str] = None) -> str:
    """Set and return ``cfg.work_dir``: CLI first, then config, then default.

    The default is ``./work_dirs/<config file stem>``.

    Args:
        cfg (mmengine.Config): The loaded config; modified in place.
        config_path (str): Path of the config file.
        work_dir (str, optional): ``--work-dir`` from the command line.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        stem = osp.splitext(osp.basename(config_path))[0]
        cfg.work_dir = osp.join('./work_dirs', stem)
    return cfg.work_dir


def build_runner(cfg):
    """Build the Runner from a config, honouring ``runner_type``.

    Without ``runner_type`` this is ``mmengine.runner.Runner.from_cfg``;
    with one, the class is looked up in the RUNNERS registry (under the
    config's ``default_scope``) and its ``from_cfg`` is used, as
    ``RUNNERS.build`` does.

    Args:
        cfg (mmengine.Config): The final config.
    """
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)


def destroy_process_group() -> None:
    """Tear down the default process group, if one was started.

    Call it at the end of a tool, after dropping the Runner. A gloo group
    left to interpreter shutdown can abort the process (``terminate called
    without an active exception``, SIGABRT, seen here in about one 2-process
    run in three): a gloo worker thread still releasing the tensors of the
    last collective needs the GIL while Python finalises (pytorch issue
    190489). Destroying the group while Python is alive joins those threads
    first. The model's DDP wrapper holds the group too, so the Runner must
    be garbage-collected before; this function collects the cycles the
    Runner leaves (hooks and loops point back at it).
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    gc.collect()
    torch_dist.destroy_process_group()
