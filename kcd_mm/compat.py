"""Every shim kcd_mm needs to run the pinned OpenMMLab stack on torch 2.x.

Imported first by ``kcd_mm/__init__.py`` and by every tool, before anything
imports torchvision, mmpretrain or mmrazor. Each shim names the symptom it
fixes (see ``docs/troubleshooting.md``) and does nothing where the stack is
already healthy, so a GPU user's working CUDA stack is left alone.
Call :func:`apply` any number of times; it runs once.
"""
import importlib.util
import os
import os.path as osp
import sys
import types

import torch

_APPLIED = False
# torch.library definitions are dropped when their Library object dies.
_TV_LIBRARY = None


def _torchvision_ops() -> None:
    """``RuntimeError: operator torchvision::nms does not exist``.

    The PyPI torchvision 0.28 wheel is a CUDA build whose ``_C.so`` does not
    load next to a CPU torch; its Python part then registers fake kernels for
    two ops nobody defined. Defining just their schemas lets it import;
    compiled ops still raise when called (classification never calls them).
    """
    global _TV_LIBRARY
    spec = importlib.util.find_spec('torchvision')
    if spec is None or 'torchvision' in sys.modules:
        return
    pkg_dir = list(spec.submodule_search_locations)[0]
    so_files = [f for f in os.listdir(pkg_dir) if f.startswith('_C.')]
    if so_files:
        try:
            torch.ops.load_library(osp.join(pkg_dir, so_files[0]))
            return
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library('torchvision', 'DEF')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    lib.define('qnms(Tensor qdets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    _TV_LIBRARY = lib


def _mmrazor_quantization() -> None:
    """``ImportError: `torch>=1.13` is not installed properly, plz check.``

    torch 2 renamed ``reverse2``/``reverse3`` to private names and dropped
    ``reverse_sequential_wrapper2``; mmrazor 1.0.0 imports all three, then
    builds quantization backend configs eagerly with torch-1.13-only APIs.
    Distillation never uses quantization, so the configs are stubbed to the
    ``None`` entries mmrazor itself uses on old torch.
    """
    from torch.ao.quantization import fuser_method_mappings as fmm
    if not hasattr(fmm, 'reverse2') and hasattr(fmm, '_reverse2'):
        fmm.reverse2 = fmm._reverse2
    if not hasattr(fmm, 'reverse3') and hasattr(fmm, '_reverse3'):
        fmm.reverse3 = fmm._reverse3
    if not hasattr(fmm, 'reverse_sequential_wrapper2'):

        def reverse_sequential_wrapper2(sequential):

            def fuser_method(is_qat, m1, m2):
                return sequential(m2, m1)

            return fuser_method

        fmm.reverse_sequential_wrapper2 = reverse_sequential_wrapper2
    name = 'mmrazor.structures.quantization.backend_config.mapping'
    if name not in sys.modules and importlib.util.find_spec('mmrazor'):
        stub = types.ModuleType(name)
        stub.__doc__ = 'kcd_mm stub: quantization backends unused here.'
        stub.BackendConfigs = dict.fromkeys(
            ('academic', 'native', 'tensorrt', 'openvino'))
        sys.modules[name] = stub


def _safe_checkpoint_globals() -> None:
    """``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``.

    torch >= 2.6 loads with ``weights_only=True`` and mmengine 0.10.7 passes
    no argument. Rather than turning the safe loader off (a checkpoint is a
    pickle that can run code), allow the few plain-data types an mmengine
    Runner checkpoint holds: its message hub's HistoryBuffer and numpy
    arrays and scalars. Anything else is still refused.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    safe = [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype]
    safe += [type(np.dtype(t)) for t in
             ('bool', 'int8', 'uint8', 'int16', 'int32', 'int64', 'float16',
              'float32', 'float64')]
    torch.serialization.add_safe_globals(safe)


def _history_buffer_methods() -> None:
    """``Unsupported global: GLOBAL getattr was not an allowed global``.

    Seen loading any Runner checkpoint (``--resume``, ``tools/test.py``,
    a teacher checkpoint) once :func:`_safe_checkpoint_globals` has allowed
    HistoryBuffer: ``HistoryBuffer.__getstate__`` also saves its statistics
    methods (``HistoryBuffer.min``/``max``/``current``/``mean``), which
    pickle writes as ``builtins.getattr(HistoryBuffer, 'min')``. Allowing
    ``getattr`` itself would reopen the safe loader to arbitrary code
    (attribute chains reach any module), so a stand-in registered under the
    name ``builtins.getattr`` answers only for plain functions defined on
    HistoryBuffer and refuses every other lookup.
    """
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    def history_buffer_getattr(obj, name, *default):
        value = None
        if obj is HistoryBuffer and isinstance(name, str):
            value = HistoryBuffer.__dict__.get(name)
        if not isinstance(value, types.FunctionType) or name.startswith('_'):
            raise pickle.UnpicklingError(
                f'kcd_mm: refusing getattr({obj!r}, {name!r}) in a '
                'weights-only checkpoint load')
        return value

    torch.serialization.add_safe_globals([(history_buffer_getattr,
                                           'builtins.getattr')])


def _mmcls_config_paths() -> None:
    """mmengine tries to ``pip install mmcls`` for a ``mmcls::`` path.

    MMRazor's shipped configs name ``mmcls::`` bases and ``cfg_path`` models;
    mmcls is gone, and its configs live on in mmpretrain under the same
    relative paths. Rewrite the prefix where mmengine resolves it.
    """
    from mmengine import hub
    from mmengine.config import Config

    def rewrite(path):
        if isinstance(path, str) and path.startswith('mmcls::'):
            return 'mmpretrain::' + path[len('mmcls::'):]
        return path

    original = Config._get_cfg_path
    if getattr(original, '_kcd_rewrites', False):
        return

    def _get_cfg_path(cfg_path, filename):
        return original(rewrite(cfg_path), filename)

    _get_cfg_path._kcd_rewrites = True
    Config._get_cfg_path = staticmethod(_get_cfg_path)
    for fn_name in ('get_config', 'get_model'):
        fn = getattr(hub, fn_name)

        def wrapped(cfg_path, *args, _fn=fn, **kwargs):
            return _fn(rewrite(cfg_path), *args, **kwargs)

        wrapped.__doc__ = fn.__doc__
        setattr(hub, fn_name, wrapped)
        setattr(sys.modules['mmengine.hub.hub'], fn_name, wrapped)


def _amp_bf16_on_cpu() -> None:
    """``AssertionError: ``AmpOptimizerWrapper`` is only available training
    on gpu, npu, mlu or musa``.

    mmengine 0.10.7's AmpOptimWrapper refuses to be built without an
    accelerator, although mmengine's own ``autocast`` supports CPU bfloat16
    (measured here: a ResNet-18 step runs 2.5x faster under CPU bf16
    autocast). On a machine with no accelerator only, and only for
    ``dtype='bfloat16'`` (the one dtype CPU autocast takes), build the
    wrapper without the assertion and with a disabled CPU GradScaler: bf16
    keeps fp32's exponent range, so loss scaling is not needed. Any other
    dtype, or any machine with an accelerator, goes through mmengine's
    original constructor unchanged. ``tools/train.py --amp`` on CPU selects
    this path.
    """
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    original = AmpOptimWrapper.__init__
    if getattr(original, '_kcd_cpu_bf16', False):
        return

    def __init__(self, loss_scale='dynamic', dtype=None, use_fsdp=False,
                 **kwargs):
        accelerated = (is_cuda_available() or is_npu_available()
                       or is_mlu_available() or is_musa_available())
        if accelerated or dtype not in ('bfloat16', torch.bfloat16):
            original(self, loss_scale=loss_scale, dtype=dtype,
                     use_fsdp=use_fsdp, **kwargs)
            return
        if use_fsdp:
            raise ValueError('AmpOptimWrapper(use_fsdp=True) needs a GPU')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

    __init__._kcd_cpu_bf16 = True
    __init__.__doc__ = original.__doc__
    AmpOptimWrapper.__init__ = __init__


def _without_accelerator() -> bool:
    """Whether mmengine finds no CUDA, NPU, MLU or MUSA device here."""
    from mmengine.device import (is_cuda_available, is_mlu_available,
                                 is_musa_available, is_npu_available)
    return not (is_cuda_available() or is_npu_available()
                or is_mlu_available() or is_musa_available())


def _first_slurm_host(node_list: str) -> str:
    """The first host of a compact slurm node list, as ``scontrol show
    hostname`` prints it: ``node[03-05,9],gpu1`` -> ``node03``."""
    import re
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
    import functools
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
            if not _without_accelerator():
                return original(backend, *args, **kwargs)
            if backend == 'nccl':
                backend = 'gloo'
            if prepare is not None:
                prepare()
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
    """``ValueError: DistributedDataParallel device_ids and output_device
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
    import functools
    import inspect

    from torch.nn.parallel import DistributedDataParallel
    original = DistributedDataParallel.__init__
    if getattr(original, '_kcd_cpu_ddp', False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        module = bound.arguments.get('module')
        if (isinstance(module, torch.nn.Module) and _without_accelerator()
                and {p.device.type for p in module.parameters()} == {'cpu'}):
            for key in ('device_ids', 'output_device'):
                if key in bound.arguments:
                    bound.arguments[key] = None
        original(*bound.args, **bound.kwargs)

    __init__._kcd_cpu_ddp = True
    DistributedDataParallel.__init__ = __init__


def set_max_iters(loop, max_iters: int) -> None:
    """Re-plan ``EpochBasedTrainLoop.max_iters``: the ETA follows KCD.

    Not applied at import: KCDHook calls it whenever its schedule is
    known. mmengine 0.10.7 fixes ``max_iters`` once, as ``max_epochs *
    len(dataloader)``, and offers no setter, so the logger's ETA and
    ``[iter/max_iters]`` would count full epochs that KCD never runs.
    """
    loop._max_iters = int(max_iters)


def apply() -> None:
    """Apply every shim once, in dependency order."""
    global _APPLIED
    if _APPLIED:
        return
    _torchvision_ops()
    _mmrazor_quantization()
    _safe_checkpoint_globals()
    _history_buffer_methods()
    _mmcls_config_paths()
    _amp_bf16_on_cpu()
    _gloo_init_dist_on_cpu()
    _cpu_ddp_device_ids()
    _APPLIED = True


apply()
