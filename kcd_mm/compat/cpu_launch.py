"""Distributed launch without an accelerator: mmengine 0.10.7 assumes
CUDA in its launchers and DDP wrapping.

:func:`apply` wraps mmengine's ``_init_dist_pytorch/slurm/mpi``: they act
only where mmengine finds no CUDA, NPU, MLU or MUSA device, which is where
mmengine's own functions raise; there they start a gloo group, and in that
process only DDP's constructor drops the ``device_ids`` torch refuses for a
CPU module (:func:`_cpu_ddp_device_ids`). A process that never launches
mmengine distributed on such a machine runs torch and mmengine unchanged.
"""
import functools
import inspect
import os
import re

import torch

from ..cpu_threads import without_accelerator


def _first_slurm_host(node_list: str) -> str:
    """The first host of a compact slurm node list, as ``scontrol show
    hostname`` prints it: ``node[03-05,9],gpu1`` -> ``node03``."""
    first = re.split(r',(?![^\[]*\])', node_list.strip())[0]
    match = re.match(r'^([^\[]*)\[([^\]]*)\](.*)$', first)
    if match is None:
        return first
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(',')[0].split('-')[0] + suffix


def _gloo_init_dist_on_cpu() -> None:
    """``AttributeError: module 'torch._C' has no attribute
    '_cuda_setDevice'`` (CPU torch; a CUDA build without a GPU raises
    ``Found no NVIDIA driver``) from ``mmengine.dist.init_dist`` when
    ``--launcher pytorch|slurm|mpi`` runs on a machine without CUDA.

    mmengine 0.10.7's ``init_dist`` defaults to nccl, and its
    ``_init_dist_pytorch``/``_init_dist_slurm``/``_init_dist_mpi`` call
    ``torch.cuda.set_device(local_rank)`` unconditionally; the slurm one also
    divides by ``torch.cuda.device_count()`` (0) when ``SLURM_LOCALID`` is
    unset, and takes ``MASTER_ADDR`` from ``scontrol show hostname``, whose
    output is the shell's error message where scontrol is missing.
    ``init_dist`` looks the three up in ``mmengine.dist.utils`` at call time,
    so wrapping them there covers the Runner and mmengine's strategies. On a
    machine with no accelerator only, each wrapper passes gloo instead of
    nccl (another backend named in ``dist_cfg`` is kept) and runs mmengine's
    function with ``torch.cuda.set_device`` a no-op for the duration of the
    call (there it can only raise). mmengine's environment handling is kept
    as it is: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` from the
    launcher's variables, ``dist_cfg`` port and timeout, a ``MASTER_ADDR``
    already set wins. Three gaps are filled first: slurm without
    ``SLURM_LOCALID`` gets ``SLURM_PROCID % SLURM_NTASKS_PER_NODE`` (else 0);
    slurm without ``MASTER_ADDR`` and without scontrol gets the first host of
    ``SLURM_NODELIST``; mpi exports ``LOCAL_RANK`` from
    ``OMPI_COMM_WORLD_LOCAL_RANK`` (mmengine's mpi path sets none). Each rank
    prints one line once it has joined. With an accelerator, mmengine's
    functions run unchanged.
    """
    import shutil

    from mmengine.dist import utils as dist_utils

    def prepare_slurm():
        env = os.environ
        if 'SLURM_LOCALID' not in env and 'SLURM_PROCID' in env:
            per_node = env.get('SLURM_NTASKS_PER_NODE', '').split('(')[0]
            local_rank = 0
            if per_node.isdigit() and int(per_node) > 0:
                local_rank = int(env['SLURM_PROCID']) % int(per_node)
            env['SLURM_LOCALID'] = str(local_rank)
        node_list = env.get('SLURM_NODELIST')
        if ('MASTER_ADDR' not in env and node_list
                and shutil.which('scontrol') is None):
            env['MASTER_ADDR'] = _first_slurm_host(node_list)

    def prepare_mpi():
        if 'OMPI_COMM_WORLD_LOCAL_RANK' in os.environ:
            os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']

    def wrap(launcher, prepare):
        name = f'_init_dist_{launcher}'
        original = getattr(dist_utils, name)
        if getattr(original, '_kcd_gloo_on_cpu', False):
            return

        @functools.wraps(original)
        def init(backend, *args, **kwargs):
            if not without_accelerator():
                return original(backend, *args, **kwargs)
            if backend == 'nccl':
                backend = 'gloo'
            if prepare is not None:
                prepare()
            _cpu_ddp_device_ids()
            set_device = torch.cuda.set_device
            torch.cuda.set_device = lambda device: None
            try:
                original(backend, *args, **kwargs)
            finally:
                torch.cuda.set_device = set_device
            dist = torch.distributed
            if not dist.is_initialized():
                return
            print(f'kcd_mm.compat: no CUDA; rank {dist.get_rank()}/'
                  f'{dist.get_world_size()} joined a {dist.get_backend()} '
                  f'process group ({launcher} launcher, '
                  f'LOCAL_RANK={os.environ.get("LOCAL_RANK")})', flush=True)

        init._kcd_gloo_on_cpu = True
        setattr(dist_utils, name, init)

    wrap('pytorch', None)
    wrap('slurm', prepare_slurm)
    wrap('mpi', prepare_mpi)


def _cpu_ddp_device_ids() -> None:
    """Applied by the CPU launch of :func:`_gloo_init_dist_on_cpu` only.

    ``ValueError: DistributedDataParallel device_ids and output_device
    arguments only work with single-device/multiple-device GPU modules or CPU
    modules, but got device_ids [0], ...`` in ``Runner.wrap_model`` on a
    machine without CUDA.

    mmengine 0.10.7's ``Runner.wrap_model`` (and its ``DDPStrategy``) passes
    ``device_ids=[LOCAL_RANK]`` to the DDP wrapper it builds, with or
    without a ``model_wrapper_cfg``: ``MMDistributedDataParallel`` by
    default, or any configured type that subclasses
    ``DistributedDataParallel`` (mmengine's and mmrazor's wrappers, torch's
    own). torch refuses device ids for a module on the CPU. Every such
    wrapper ends in ``DistributedDataParallel.__init__``, so that is
    wrapped: on a machine with no accelerator, and for a module whose
    parameters are all on the CPU, ``device_ids`` and ``output_device``
    become None before torch sees them; these are exactly the calls torch
    would reject. Any other module, and any machine with an accelerator,
    reaches torch's constructor unchanged.
    """

    from torch.nn.parallel import DistributedDataParallel
    original = DistributedDataParallel.__init__
    if getattr(original, '_kcd_cpu_ddp', False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        module = bound.arguments.get('module')
        if (isinstance(module, torch.nn.Module) and without_accelerator()
                and {p.device.type for p in module.parameters()} == {'cpu'}):
            for key in ('device_ids', 'output_device'):
                if key in bound.arguments:
                    bound.arguments[key] = None
        original(*bound.args, **bound.kwargs)

    __init__._kcd_cpu_ddp = True
    DistributedDataParallel.__init__ = __init__


def apply() -> None:
    """Wrap mmengine's three launchers (once; idempotent)."""
    _gloo_init_dist_on_cpu()
