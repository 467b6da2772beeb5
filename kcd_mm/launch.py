"""Launch helpers shared by ``tools/train.py`` and ``tools/test.py``.

The tools stay thin: they parse arguments, load the config and call the
functions here, which

* add the launcher arguments (``--launcher`` and both spellings of the
  local rank: ``torch.distributed.launch`` on torch >= 2 passes
  ``--local-rank``, older launchers ``--local_rank``);
* pick the work dir the OpenMMLab way (CLI, then config, then
  ``./work_dirs/<config stem>``);
* make a distributed launch work on machines without CUDA. mmengine
  0.10.7's launchers call ``torch.cuda.set_device`` unconditionally and its
  Runner wraps the model with ``device_ids=[LOCAL_RANK]``, which DDP
  rejects for a CPU module. With no CUDA, :func:`setup_launcher` starts a
  gloo process group itself (the Runner then skips ``init_dist`` because
  one already exists, and reads rank and world size from it), sets the
  config's ``dist_cfg`` backend to gloo, and gives the Runner a
  ``model_wrapper_cfg`` with ``device_ids=None``. With CUDA nothing is
  changed and mmengine launches as usual;
* build the Runner, honouring a custom ``runner_type``.

Nothing here imports OpenMMLab at module level, so the tools can import
``kcd_mm.compat`` first and this module afterwards.
"""
import argparse
import datetime
import gc
import os
import os.path as osp
import re
import subprocess
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as torch_dist

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
DEFAULT_MASTER_PORT = '29500'


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


def needs_cpu_fallback(launcher: str) -> bool:
    """Whether a distributed launch must avoid mmengine's CUDA-only path.

    Args:
        launcher (str): One of :data:`LAUNCHERS`.

    Returns:
        bool: True for a real launcher on a machine without CUDA.
    """
    return launcher != 'none' and not torch.cuda.is_available()


def first_slurm_host(node_list: str) -> str:
    """Return the first host name of a slurm node list.

    Uses ``scontrol show hostname`` like mmengine does; where scontrol is
    missing, expands the first entry of the compact form itself
    (``node[03-05,9]`` -> ``node03``).

    Args:
        node_list (str): ``SLURM_NODELIST``/``SLURM_JOB_NODELIST``.
    """
    try:
        out = subprocess.run(['scontrol', 'show', 'hostname', node_list],
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL,
                             text=True,
                             timeout=30)
        hosts = out.stdout.split()
        if out.returncode == 0 and hosts:
            return hosts[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # First comma-separated entry that is not inside brackets.
    first = re.split(r',(?![^\[]*\])', node_list.strip())[0]
    match = re.match(r'^([^\[]*)\[([^\]]*)\](.*)$', first)
    if match is None:
        return first
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(',')[0].split('-')[0] + suffix


def slurm_dist_env(environ: Optional[Mapping[str, str]] = None,
                   port: Optional[int] = None) -> Dict[str, str]:
    """Derive the torch.distributed variables from slurm's, as mmengine does.

    ``RANK`` from ``SLURM_PROCID``, ``WORLD_SIZE`` from ``SLURM_NTASKS``,
    ``LOCAL_RANK`` from ``SLURM_LOCALID``, ``MASTER_ADDR`` (unless already
    set) from the first host of ``SLURM_NODELIST``, ``MASTER_PORT`` from
    ``port``, else the environment, else 29500.

    Args:
        environ (Mapping, optional): Environment to read; ``os.environ``
            when None.
        port (int, optional): Master port (``dist_cfg.port``).

    Returns:
        dict: The five variables as strings.
    """
    env = os.environ if environ is None else environ
    proc_id = int(env['SLURM_PROCID'])
    if 'SLURM_LOCALID' in env:
        local_rank = int(env['SLURM_LOCALID'])
    else:
        per_node = env.get('SLURM_NTASKS_PER_NODE', '').split('(')[0]
        local_rank = proc_id % int(per_node) if per_node.isdigit() else 0
    if port is not None:
        master_port = str(port)
    else:
        master_port = env.get('MASTER_PORT', DEFAULT_MASTER_PORT)
    master_addr = env.get('MASTER_ADDR') or first_slurm_host(
        env.get('SLURM_NODELIST') or env['SLURM_JOB_NODELIST'])
    return dict(
        RANK=str(proc_id),
        WORLD_SIZE=str(int(env['SLURM_NTASKS'])),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=master_port)


def mpi_dist_env(
        environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Derive the torch.distributed variables from Open MPI's.

    ``MASTER_ADDR`` must be set (as mmengine requires); ``MASTER_PORT``
    defaults to 29500.

    Args:
        environ (Mapping, optional): Environment to read; ``os.environ``
            when None.

    Returns:
        dict: The five variables as strings.
    """
    env = os.environ if environ is None else environ
    if 'MASTER_ADDR' not in env:
        raise KeyError('The environment variable MASTER_ADDR is not set')
    return dict(
        RANK=env['OMPI_COMM_WORLD_RANK'],
        WORLD_SIZE=env['OMPI_COMM_WORLD_SIZE'],
        LOCAL_RANK=env['OMPI_COMM_WORLD_LOCAL_RANK'],
        MASTER_ADDR=env['MASTER_ADDR'],
        MASTER_PORT=env.get('MASTER_PORT', DEFAULT_MASTER_PORT))


def pytorch_dist_env(
        environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Read the variables torchrun / torch.distributed.launch export.

    Args:
        environ (Mapping, optional): Environment to read; ``os.environ``
            when None.

    Returns:
        dict: The five variables as strings.
    """
    env = os.environ if environ is None else environ
    missing = [
        k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
        if k not in env
    ]
    if missing:
        raise KeyError(f'--launcher pytorch needs {", ".join(missing)} in '
                       'the environment; start the tool with torchrun '
                       '(tools/dist_train.sh) or --launcher none')
    return dict(
        RANK=env['RANK'],
        WORLD_SIZE=env['WORLD_SIZE'],
        LOCAL_RANK=env.get('LOCAL_RANK', '0'),
        MASTER_ADDR=env['MASTER_ADDR'],
        MASTER_PORT=env['MASTER_PORT'])


def dist_env(launcher: str,
             environ: Optional[Mapping[str, str]] = None,
             port: Optional[int] = None) -> Dict[str, str]:
    """Return ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` for a launcher.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        environ (Mapping, optional): Environment to read; ``os.environ``
            when None.
        port (int, optional): Master port override (slurm only, like
            mmengine's ``dist_cfg.port``).
    """
    if launcher == 'pytorch':
        return pytorch_dist_env(environ)
    if launcher == 'slurm':
        return slurm_dist_env(environ, port)
    if launcher == 'mpi':
        return mpi_dist_env(environ)
    raise ValueError(f'Invalid launcher type: {launcher}')


def init_cpu_process_group(launcher: str,
                           timeout: Optional[float] = None,
                           port: Optional[int] = None) -> Tuple[int, int]:
    """Start a gloo process group for a CPU-only distributed run.

    Exports the variables from :func:`dist_env` (so code that reads
    ``RANK``/``LOCAL_RANK`` later sees them) and initialises the default
    group with ``init_method='env://'``. Does nothing when a group exists.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        timeout (float, optional): Collective timeout in seconds
            (``dist_cfg.timeout``).
        port (int, optional): Master port override (slurm).

    Returns:
        tuple[int, int]: Rank and world size.
    """
    if torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    env = dist_env(launcher, port=port)
    os.environ.update(env)
    kwargs = dict(
        backend='gloo',
        init_method='env://',
        rank=int(env['RANK']),
        world_size=int(env['WORLD_SIZE']))
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(**kwargs)
    return torch_dist.get_rank(), torch_dist.get_world_size()


def _is_ddp_type(wrapper_type) -> Optional[bool]:
    """Whether a model-wrapper type is a DistributedDataParallel subclass.

    Returns None when the type cannot be resolved from the registry.
    """
    from torch.nn.parallel import DistributedDataParallel

    from mmengine.registry import MODEL_WRAPPERS
    if isinstance(wrapper_type, str):
        try:
            wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
        except Exception:  # an unknown scope prefix raises, not returns
            wrapper_type = None
    if not isinstance(wrapper_type, type):
        return None
    return issubclass(wrapper_type, DistributedDataParallel)


def cpu_model_wrapper_cfg(cfg) -> Dict:
    """Return a ``model_wrapper_cfg`` that wraps a CPU model for DDP.

    Without one the Runner builds ``MMDistributedDataParallel`` with
    ``device_ids=[LOCAL_RANK]``; with one it still adds that default unless
    the config names ``device_ids`` itself, so ``device_ids=None`` is set
    explicitly. A config's own wrapper is kept, with ``device_ids=None``
    added unless its type resolves to a class that is not a
    DistributedDataParallel subclass (an unresolvable type is assumed to be
    one, the common case).

    Args:
        cfg (mmengine.Config): The loaded config.
    """
    own = cfg.get('model_wrapper_cfg', None)
    if own is None:
        return dict(
            type='MMDistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
            device_ids=None)
    wrapper = dict(own)
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if _is_ddp_type(wrapper['type']) is not False:
        wrapper['device_ids'] = None
    return wrapper


def setup_launcher(cfg, launcher: str) -> Tuple[int, int]:
    """Record the launcher in the config; on a CPU-only launch, start gloo.

    With ``launcher='none'``, or with CUDA available, only
    ``cfg.launcher`` is set and mmengine initialises distribution itself.
    Otherwise this starts a gloo process group from the launcher's
    environment (honouring ``env_cfg.dist_cfg.timeout`` and, for slurm,
    ``port``), sets ``env_cfg.dist_cfg.backend='gloo'`` and
    ``cfg.model_wrapper_cfg`` from :func:`cpu_model_wrapper_cfg`. The
    Runner then sees a distributed run with the group's rank and world
    size. Call it before building the Runner.

    Args:
        cfg (mmengine.Config): The loaded config; modified in place.
        launcher (str): One of :data:`LAUNCHERS`.

    Returns:
        tuple[int, int]: Rank and world size (0 and 1 when not yet known,
        i.e. without a launcher or when mmengine will start the group).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, '
                         f'got {launcher!r}')
    cfg.launcher = launcher
    if not needs_cpu_fallback(launcher):
        return 0, 1
    env_cfg = cfg.get('env_cfg', None) or {}
    dist_cfg = dict(env_cfg.get('dist_cfg', None) or {})
    rank, world_size = init_cpu_process_group(
        launcher,
        timeout=dist_cfg.get('timeout', None),
        port=dist_cfg.get('port', None) if launcher == 'slurm' else None)
    cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
    cfg.model_wrapper_cfg = cpu_model_wrapper_cfg(cfg)
    print(f'kcd_mm.launch: CUDA is not available; rank {rank}/{world_size} '
          f'joined a gloo process group ({launcher} launcher, '
          f'LOCAL_RANK={os.environ.get("LOCAL_RANK")}); the model is wrapped '
          'for CPU DDP without device_ids.', flush=True)
    return rank, world_size


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
