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
    _APPLIED = True


apply()
