"""Every shim kcd_mm needs to run the pinned OpenMMLab stack on torch 2.x.

Why one long module: the project keeps every workaround for the pinned
stack in one place (docs/architecture.md), so a stack upgrade deletes
shims here and nowhere else; each function is one shim.

Imported first by ``kcd_mm/__init__.py`` and by every tool, before anything
imports torchvision, mmpretrain or mmrazor; and, through the
``kcd_mm_mmrazor_hook.pth`` that setup.py installs, by any process the
first time it imports mmrazor (MMRazor's own ``tools/train.py``,
``mim train mmrazor``). Each shim names the symptom it fixes (see
``docs/troubleshooting.md``) and does nothing where the stack is already
healthy, so a GPU user's working CUDA stack is left alone.
Call :func:`apply` any number of times; it runs once.
"""
import functools
import importlib.util
import inspect
import os
import os.path as osp
import pickle
import re
import sys
import types
import zipfile
from typing import Optional

import numpy as np
import torch

from .fileio import write_atomically

try:
    from numpy._core.multiarray import scalar as _NUMPY_SCALAR
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _NUMPY_SCALAR

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


def _numeric_dtype(spec) -> np.dtype:
    """The numpy dtype a checkpoint names, if it is bool, integer, float or
    complex; raises ``pickle.UnpicklingError`` for any other."""
    dtype = None
    if isinstance(spec, str):
        try:
            dtype = np.dtype(spec)
        except (TypeError, ValueError):
            pass
    if (dtype is None or dtype.kind not in 'biufc' or dtype.hasobject
            or dtype.fields is not None or dtype.subdtype is not None
            or dtype.metadata):
        raise pickle.UnpicklingError(
            f'kcd_mm: refusing numpy dtype {spec!r} in a weights-only '
            'checkpoint load: only bool, integer, float and complex arrays '
            'and scalars can be loaded')
    return dtype


class _CheckedDType:
    """Stands for ``numpy.dtype`` in weights-only loads: holds a numeric
    dtype (checked when built) and takes only the state numpy pickles for
    it, so a forged state (object flags, fields) never reaches numpy."""
    __slots__ = ('dtype', )

    def __init__(self, spec, align=False, copy=False):
        self.dtype = _numeric_dtype(spec)

    def __setstate__(self, state):
        canonical = self.resolve().__reduce__()[2]
        if not (isinstance(state, tuple) and len(state) == len(canonical)
                and state[:1] + state[2:] == canonical[:1] + canonical[2:]
                and state[1] in ('<', '>', '|', '=')):
            raise pickle.UnpicklingError(
                f'kcd_mm: refusing the pickled state {state!r} of numpy '
                f'dtype {self.dtype.str!r} in a weights-only checkpoint load '
                f'(numpy writes {canonical!r})')
        if state[1] in ('<', '>'):
            self.dtype = self.dtype.newbyteorder(state[1])

    def resolve(self) -> np.dtype:
        dtype = getattr(self, 'dtype', None)
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(
                'kcd_mm: a numpy dtype in this checkpoint was not built by '
                'numpy.dtype(...)')
        return dtype


def _resolve_dtype(spec) -> np.dtype:
    if not isinstance(spec, _CheckedDType):
        raise pickle.UnpicklingError(
            f'kcd_mm: refusing {spec!r} as a numpy dtype in a weights-only '
            'checkpoint load')
    return spec.resolve()


class _NumpyNdarray:
    """Stands for ``numpy.ndarray`` in weights-only loads: usable only as
    the first argument of numpy's ``_reconstruct``, never built."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(
            'kcd_mm: numpy.ndarray can only be rebuilt through numpy\'s '
            '_reconstruct in a weights-only checkpoint load')


class _CheckedArray(np.ndarray):
    """What numpy's ``_reconstruct`` builds in weights-only loads: an
    ndarray whose state is checked (numeric dtype, exact byte count) before
    numpy copies the bytes in. It pickles as a plain ndarray, and a
    HistoryBuffer turns it back into one when it is loaded."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(
            'kcd_mm: refusing to build a numpy array without numpy\'s '
            '_reconstruct in a weights-only checkpoint load')

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5
                and state[0] == 1):
            raise pickle.UnpicklingError(
                'kcd_mm: refusing a numpy array state that is not numpy\'s '
                '(1, shape, dtype, is_fortran, bytes)')
        _, shape, spec, fortran, raw = state
        dtype = _resolve_dtype(spec)
        if not (isinstance(shape, tuple)
                and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(fortran, bool) and isinstance(raw, bytes)):
            raise pickle.UnpicklingError(
                f'kcd_mm: refusing a numpy array of shape {shape!r} whose '
                'pickled state is not numpy\'s')
        size = dtype.itemsize
        for n in shape:
            size *= n
        if len(raw) != size:
            raise pickle.UnpicklingError(
                f'kcd_mm: refusing a numpy {dtype.str} array of shape '
                f'{shape}: {len(raw)} bytes of data, {size} needed')
        np.ndarray.__setstate__(self, (1, shape, dtype, fortran, raw))

    def __reduce_ex__(self, protocol):
        return self.view(np.ndarray).__reduce_ex__(protocol)


def _checked_reconstruct(subtype, shape, code):
    """Stands for numpy's ``_reconstruct``: plain ndarrays only."""
    if subtype is not _NumpyNdarray:
        raise pickle.UnpicklingError(
            f'kcd_mm: refusing to rebuild {subtype!r} in a weights-only '
            'checkpoint load: plain numpy arrays only')
    return np.ndarray.__new__(_CheckedArray, (0, ), 'b')


def _checked_scalar(spec, data=None):
    """Stands for numpy's ``scalar``: numeric scalars from their bytes."""
    dtype = _resolve_dtype(spec)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(
            f'kcd_mm: refusing a numpy {dtype.str} scalar that is not '
            f'{dtype.itemsize} bytes of data')
    return _NUMPY_SCALAR(dtype, data)


def _safe_checkpoint_globals() -> None:
    """``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``.

    torch >= 2.6 loads with ``weights_only=True`` and mmengine 0.10.7 passes
    no argument. Rather than turning the safe loader off (a checkpoint is a
    pickle that can run code), allow the few plain-data types an mmengine
    Runner checkpoint holds: its message hub's HistoryBuffer with 1-D
    float64/int64 numpy arrays, and numpy float64 scalars (``eta``, metrics).

    numpy's own globals are not allowed as they are: with them a file can
    give a float dtype object flags, fields or a subarray (numpy's
    ``dtype.__setstate__`` takes any), and numpy then copies raw bytes into
    an array that claims to hold object pointers (where numpy follows them,
    a segfault; numpy 2.4 hits internal errors instead, and ``--resume``
    went on with such a forged file). The names
    ``numpy.dtype``, ``numpy.ndarray`` and numpy's ``_reconstruct`` and
    ``scalar`` (numpy 2 and numpy 1 module paths) resolve to stand-ins that
    build bool, integer, float and complex arrays and scalars only, from
    exactly numpy's pickled states; anything else (an object or structured
    dtype, forged dtype flags, a byte count that does not match) is refused
    with ``UnpicklingError: ... kcd_mm: refusing ...``. numpy's real types
    never enter the allowed list. A HistoryBuffer's arrays load as plain
    ndarrays; an array elsewhere loads as a private ndarray subclass that
    pickles as a plain ndarray.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    safe = [HistoryBuffer, (_CheckedDType, 'numpy.dtype'),
            (_NumpyNdarray, 'numpy.ndarray'),
            (_CheckedArray, 'kcd_mm.compat._CheckedArray')]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        safe += [(_checked_reconstruct, f'{module}._reconstruct'),
                 (_checked_scalar, f'{module}.scalar')]
    torch.serialization.add_safe_globals(safe)

    original = HistoryBuffer.__setstate__
    if getattr(original, '_kcd_plain_arrays', False):
        return

    def __setstate__(self, state):
        if isinstance(state, dict):
            for key, value in list(state.items()):
                if type(value) is _CheckedArray:
                    state[key] = value.view(np.ndarray)
        original(self, state)

    __setstate__._kcd_plain_arrays = True
    __setstate__.__doc__ = original.__doc__
    HistoryBuffer.__setstate__ = __setstate__


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


class _AtomicTextFile:
    """What ``open(<work_dir>/last_checkpoint, 'w')`` returns inside
    mmengine's checkpoint hook: the text reaches the file atomically when
    the ``with`` block ends without an error."""

    def __init__(self, path: str) -> None:
        self.path, self.parts = path, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            text = ''.join(self.parts)
            write_atomically(self.path, lambda f: f.write(text), mode='w')
        return False


class _DeferredRemoval:
    """A file backend whose ``remove``/``rmtree`` are only noted."""

    def __init__(self, backend) -> None:
        self.backend, self.removals = backend, []

    def remove(self, path) -> None:
        self.removals.append(('remove', path))

    def rmtree(self, path) -> None:
        self.removals.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self.backend, name)


def _atomic_checkpoints() -> None:
    """``FileNotFoundError: .../epoch_N.pth can not be found.`` (or an
    ``EOFError``, or ``PytorchStreamReader failed reading zip archive``) on
    ``--resume`` after a run was killed while it saved a checkpoint.

    mmengine 0.10.7's CheckpointHook, with ``max_keep_ckpts`` set (the
    teacher and student configs keep 1), deletes the oldest checkpoint
    before it writes the new one, and writes the checkpoint and
    ``last_checkpoint`` in place: a kill in between leaves
    ``last_checkpoint`` naming a deleted file and the new file truncated,
    and the run is lost. Three narrow changes, each a no-op for a run that
    is not killed:

    * ``mmengine.runner.checkpoint.save_checkpoint`` (also under the names
      ``mmengine.runner`` and the Runner imported it as) writes a local file
      atomically: ``<name>.tmp`` in the same folder, fsync, rename. Other
      storage (``backend_args``/``file_client_args``, ``pavi://``) goes to
      mmengine's function unchanged.
    * CheckpointHook's ``_save_checkpoint_with_step`` and
      ``_save_best_checkpoint`` run unchanged, except that the checkpoints
      they delete are deleted when they return: after the new checkpoint
      and ``last_checkpoint`` are complete, never the file just written,
      and not at all if saving failed.
    * ``last_checkpoint`` is written atomically too: the hook module's
      ``open`` answers ``open(<...>/last_checkpoint, 'w')`` (its only
      ``open``) with a file renamed into place when it is closed.
    """
    import builtins

    from mmengine.fileio import LocalBackend, get_file_backend
    from mmengine.hooks import checkpoint_hook
    from mmengine.runner import checkpoint as checkpoint_module

    original = checkpoint_module.save_checkpoint
    if not getattr(original, '_kcd_atomic', False):

        @functools.wraps(original)
        def save_checkpoint(checkpoint, filename, file_client_args=None,
                            backend_args=None):
            name = str(filename)
            if (file_client_args is None and not name.startswith('pavi://')
                    and isinstance(
                        get_file_backend(name, backend_args=backend_args),
                        LocalBackend)):
                write_atomically(name, lambda f: torch.save(checkpoint, f))
                return
            original(checkpoint, filename, file_client_args=file_client_args,
                     backend_args=backend_args)

        save_checkpoint._kcd_atomic = True
        for name in ('mmengine.runner.checkpoint', 'mmengine.runner',
                     'mmengine.runner.runner', 'mmengine._strategy.deepspeed',
                     'mmengine._strategy.colossalai'):
            module = sys.modules.get(name)
            if getattr(module, 'save_checkpoint', None) is original:
                module.save_checkpoint = save_checkpoint

    def deferring(method):
        if getattr(method, '_kcd_deferred', False):
            return method

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            backend = getattr(self, 'file_backend', None)
            if backend is None:
                return method(self, *args, **kwargs)
            deferred = _DeferredRemoval(backend)
            self.file_backend = deferred
            try:
                method(self, *args, **kwargs)
            finally:
                self.file_backend = backend
            written = {getattr(self, 'last_ckpt', None),
                       getattr(self, 'best_ckpt_path', None)}
            written.update((getattr(self, 'best_ckpt_path_dict', None)
                            or {}).values())
            for operation, path in deferred.removals:
                if path not in written:
                    getattr(backend, operation)(path)

        wrapper._kcd_deferred = True
        return wrapper

    hook = checkpoint_hook.CheckpointHook
    for name in ('_save_checkpoint_with_step', '_save_best_checkpoint'):
        setattr(hook, name, deferring(getattr(hook, name)))

    if not getattr(getattr(checkpoint_hook, 'open', None), '_kcd_atomic',
                   False):

        def hook_open(file, mode='r', *args, **kwargs):
            if (mode == 'w' and not args and not kwargs
                    and isinstance(file, str)
                    and osp.basename(file) == 'last_checkpoint'):
                return _AtomicTextFile(file)
            return builtins.open(file, mode, *args, **kwargs)

        hook_open._kcd_atomic = True
        checkpoint_hook.open = hook_open


_RESUMABLE_NAME = re.compile(r'(epoch|iter)_(\d+)\.pth')


def _checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or None if it looks complete:
    a torch checkpoint is a zip file whose directory sits at its end, so a
    truncated one has none."""
    if not osp.exists(path):
        return 'does not exist'
    if osp.isdir(path):  # DeepSpeed's checkpoint folders: not judged here
        return None
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f'is truncated or not a torch checkpoint ({size} bytes: {e})'
    if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
        return 'is a zip file but not a torch checkpoint'
    return None


def _resume_skips_damaged_checkpoints() -> None:
    """``FileNotFoundError: ... can not be found.``, ``EOFError`` or
    ``RuntimeError: PytorchStreamReader failed reading zip archive`` from
    an automatic resume (``tools/train.py --resume`` without a path, or
    ``resume=True`` without ``load_from``).

    mmengine 0.10.7's ``find_latest_checkpoint`` returns whatever
    ``last_checkpoint`` holds: an empty string, a deleted file or a
    truncated one (a run killed while saving, or a full disk), and the
    resume fails. Wrapped (under every name mmengine imported it as): a
    recorded checkpoint that is complete is returned as before; otherwise
    the newest complete ``epoch_N.pth``/``iter_N.pth`` (by modification
    time) in its folder or the work dir is returned, with a warning naming
    each damaged file; with none, None (training starts from scratch, as
    mmengine does without ``last_checkpoint``), also with the warning.
    Paths of other storage backends (``s3://...``) are returned unchecked.
    """
    import logging

    from mmengine.logging import print_log
    from mmengine.runner import checkpoint as checkpoint_module

    original = checkpoint_module.find_latest_checkpoint
    if getattr(original, '_kcd_intact', False):
        return

    def find_latest_checkpoint(path: str) -> Optional[str]:
        save_file = osp.join(path, 'last_checkpoint')
        if not osp.exists(save_file):
            recorded, damaged = None, []
        else:
            with open(save_file) as f:
                recorded = f.read().strip()
            if recorded and '://' in recorded:
                return recorded
            problem = _checkpoint_problem(recorded) if recorded else None
            if recorded and problem is None:
                return recorded
            damaged = [f'{recorded} (named by {save_file}) {problem}'
                       if recorded else f'{save_file} is empty']
        folders = [path]
        if recorded and osp.normpath(osp.dirname(recorded) or '.') != \
                osp.normpath(path):
            folders.insert(0, osp.dirname(recorded))
        seen = {osp.realpath(recorded)} if recorded else set()
        candidates = {}
        for folder in folders:
            if osp.isdir(folder):
                for name in os.listdir(folder):
                    match = _RESUMABLE_NAME.fullmatch(name)
                    full = osp.join(folder, name)
                    real = osp.realpath(full)
                    if match and osp.isfile(full) and real not in seen:
                        seen.add(real)
                        candidates[full] = (os.stat(full).st_mtime_ns,
                                            int(match.group(2)))
        chosen = None
        for candidate in sorted(candidates, key=candidates.get,
                                reverse=True):
            problem = _checkpoint_problem(candidate)
            if problem is None:
                chosen = candidate
                break
            damaged.append(f'{candidate} {problem}')
        if chosen is None and not damaged:
            return original(path)  # nothing there: mmengine's message
        found = '; '.join(damaged) or f'{save_file} does not exist'
        if chosen is None:
            print_log(
                f'kcd_mm: {found}; no complete checkpoint in '
                f'{" or ".join(folders)} to resume from: training starts '
                'from scratch.', logger='current', level=logging.WARNING)
        else:
            print_log(
                f'kcd_mm: {found}; resuming from {chosen}, the newest '
                'complete checkpoint.', logger='current',
                level=logging.WARNING)
        return chosen

    find_latest_checkpoint._kcd_intact = True
    find_latest_checkpoint.__doc__ = original.__doc__
    for name in ('mmengine.runner.checkpoint', 'mmengine.runner',
                 'mmengine.runner.runner', 'mmengine.runner._flexible_runner'):
        module = sys.modules.get(name)
        if getattr(module, 'find_latest_checkpoint', None) is original:
            module.find_latest_checkpoint = find_latest_checkpoint


# mmcls 1.x names that mmpretrain 1.x renamed: registered types (first two)
# and a Python class. Every other mmcls 1.x name that MMRazor 1.0.0's
# configs and code use (ImageClassifier, ClsDataPreprocessor, the
# transforms, losses and heads...) has the same name in mmpretrain.
_MMCLS_RENAMES = {
    'PackClsInputs': 'PackInputs',  # TRANSFORMS, datasets.transforms
    'ClsVisualizer': 'UniversalVisualizer',  # VISUALIZERS, visualization
    'ClsDataSample': 'DataSample',  # structures
}
# mmcls 1.x config files that mmpretrain renamed: the DeiT ones lost their
# ``_pt``/``_ft`` (``deit/deit-base_pt-16xb64_in1k.py`` ->
# ``deit/deit-base_16xb64_in1k.py``, the base of MMRazor's DeiT recipe).
_MMCLS_CONFIG_RENAME = re.compile(r'^(deit/deit-[^/]*?)_(?:pt|ft)-')
_MMCLS_MISSING: Optional[bool] = None  # decided once, before the alias


def _mmcls_missing() -> bool:
    """Whether no real mmcls is installed (kcd_mm's alias aside)."""
    global _MMCLS_MISSING
    if _MMCLS_MISSING is None:
        _MMCLS_MISSING = ('mmcls' not in sys.modules
                          and importlib.util.find_spec('mmcls') is None)
    return _MMCLS_MISSING


def _mmpretrain_config(relative: str) -> str:
    """``relative`` (an mmcls 1.x config path) as mmpretrain names it."""
    renamed = _MMCLS_CONFIG_RENAME.sub(r'\1_', relative)
    if renamed == relative or importlib.util.find_spec('mmpretrain') is None:
        return relative
    from mmengine.utils import get_installed_path
    configs = osp.join(get_installed_path('mmpretrain'), '.mim', 'configs')
    if (not osp.isfile(osp.join(configs, relative))
            and osp.isfile(osp.join(configs, renamed))):
        return renamed
    return relative


def _mmcls_config_paths() -> None:
    """mmengine tries to ``pip install mmcls`` for a ``mmcls::`` path.

    MMRazor's shipped configs name ``mmcls::`` bases and ``cfg_path`` models;
    mmcls is gone, and its configs live on in mmpretrain under the same
    relative paths, except the DeiT ones, which lost ``_pt``/``_ft``
    (``FileNotFoundError: .../mmpretrain/.mim/configs/deit/
    deit-base_pt-16xb64_in1k.py`` for MMRazor's DeiT recipe). Rewrite the
    prefix, and such a name when mmpretrain has only the new one, where
    mmengine resolves config paths.
    """
    from mmengine import hub
    from mmengine.config import Config

    def rewrite(path):
        if isinstance(path, str) and path.startswith('mmcls::'):
            return 'mmpretrain::' + _mmpretrain_config(path[len('mmcls::'):])
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


def _mmpretrain_type(name: str, scoped: bool = False) -> str:
    """The mmpretrain name of the mmcls 1.x type ``name`` (``mmcls.X``):
    ``mmpretrain.X``, or ``X`` when it is built in the mmpretrain scope
    (``scoped``); a renamed class (:data:`_MMCLS_RENAMES`) by its new name.
    """
    module, _, last = name[len('mmcls.'):].rpartition('.')
    last = _MMCLS_RENAMES.get(last, last)
    if scoped and not module:
        return last
    return '.'.join(p for p in ('mmpretrain', module, last) if p)


def _mmcls_registry_names() -> None:
    """``KeyError: 'ImageClassifier is not in the mmengine::model registry'``
    (a dict with ``_scope_='mmcls'``: OFD's WRN models, CRD's datasets,
    DeiT's teacher), ``KeyError: 'mmcls.ImageClassifier is not in the
    mmrazor::model registry'`` (an ``mmcls.X`` type: BYOT, DeiT), then
    ``KeyError: 'ClsDataPreprocessor is not in the mmrazor::model
    registry'`` (BYOT's ``mmcls.ImageClassifier``), and ``KeyError:
    'PackClsInputs is not in the mmpretrain::transform registry'`` (BYOT's
    data) when MMRazor configs written for mmcls 1.x are built.

    mmcls 1.x's registries live on in mmpretrain, under the scope
    ``mmpretrain``. For scope ``mmcls`` mmengine finds no registry, warns,
    and searches the registry it was asked (often mmengine's root), where
    mmpretrain's classes are not; and mmcls 1.x's classes named their own
    defaults ``mmcls.X`` (ImageClassifier's ``mmcls.ClsDataPreprocessor``),
    where mmpretrain's name plain ``X``, found only in the mmpretrain scope.
    Where no real mmcls is installed:

    - a ``DefaultScope`` made with the scope name ``mmcls`` (``_scope_``,
      ``default_scope``, ``init_default_scope``) gets ``mmpretrain``;
    - ``Registry.build`` builds a dict typed ``mmcls.X`` (and no
      ``_scope_``) as ``X`` with ``_scope_='mmpretrain'`` (every plain type
      nested in such a dict in MMRazor 1.0.0's configs is an mmpretrain
      one); ``Registry.get`` reads ``mmcls.X`` as ``mmpretrain.X``;
    - a registry of scope ``mmpretrain`` with nothing under a name that
      mmpretrain renamed (``PackClsInputs``, ``ClsVisualizer``) returns the
      class of the new name (``PackInputs``, ``UniversalVisualizer``).

    Every other build and lookup is mmengine's own; a name found nowhere
    fails as before, with the config's spelling in the message.
    """
    from mmengine.registry import DefaultScope, Registry
    if not _mmcls_missing():
        return
    original_get = Registry.get
    if getattr(original_get, '_kcd_mmcls', False):
        return

    @functools.wraps(original_get)
    def get(self, key):
        if isinstance(key, str) and key.startswith('mmcls.'):
            key = _mmpretrain_type(key)
        found = original_get(self, key)
        if (found is None and key in _MMCLS_RENAMES
                and self.scope == 'mmpretrain'):
            found = original_get(self, _MMCLS_RENAMES[key])
        return found

    get._kcd_mmcls = True
    Registry.get = get

    original_build = Registry.build

    @functools.wraps(original_build)
    def build(self, cfg, *args, **kwargs):
        kind = cfg.get('type') if isinstance(cfg, dict) else None
        if (isinstance(kind, str) and kind.startswith('mmcls.')
                and cfg.get('_scope_') is None
                and get(self, kind) is not None):
            cfg = cfg.copy()
            cfg['type'] = _mmpretrain_type(kind, scoped=True)
            cfg['_scope_'] = 'mmpretrain'
        return original_build(self, cfg, *args, **kwargs)

    Registry.build = build

    original_init = DefaultScope.__init__

    @functools.wraps(original_init)
    def __init__(self, name, scope_name):
        if scope_name == 'mmcls':
            scope_name = 'mmpretrain'
        original_init(self, name, scope_name)

    DefaultScope.__init__ = __init__


class _MmclsModule(types.ModuleType):
    """``mmcls`` or ``mmcls.<sub>`` where mmcls is not installed: a package
    whose attributes are those of ``mmpretrain[.<sub>]``, mmcls 1.x's
    renamed names (:data:`_MMCLS_RENAMES`) under their old names."""

    def __getattr__(self, name):
        target = self.__dict__.get('_kcd_target')
        if target is None or (name.startswith('__')
                              and name not in ('__all__', '__version__')):
            raise AttributeError(name)
        if hasattr(target, name) or name not in _MMCLS_RENAMES:
            return getattr(target, name)
        return getattr(target, _MMCLS_RENAMES[name])


class _MmclsAlias:
    """Meta path finder and loader of :class:`_MmclsModule` modules."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != 'mmcls' and not fullname.startswith('mmcls.'):
            return None
        # Every one a package, so that its submodules come here too; the
        # mmpretrain module is imported (and its absence found) in
        # create_module, outside the import system's global lock.
        return importlib.util.spec_from_loader(fullname, cls, is_package=True)

    @staticmethod
    def create_module(spec):
        real = 'mmpretrain' + spec.name[len('mmcls'):]
        try:
            target = importlib.import_module(real)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f'No module named {spec.name!r} (kcd_mm.compat reads mmcls '
                f'as mmpretrain, and found no {real!r}: {exc})',
                name=spec.name) from None
        module = _MmclsModule(spec.name, getattr(target, '__doc__', None))
        module._kcd_target = target
        return module

    @staticmethod
    def exec_module(module):
        pass


def _mmcls_modules() -> None:
    """``ImportError: `mmcls` is not installed properly, plz check.`` when
    MMRazor builds ``PackCRDClsInputs`` (CRD's data), ``DeiTClsHead``
    (DeiT) or another of its classes made on mmcls.

    mmrazor 1.0.0 derives some classes from mmcls 1.x ones
    (``from mmcls.datasets.transforms.formatting import PackClsInputs``,
    ``from mmcls.models import VisionTransformerClsHead``, ...), and where
    the import fails it uses a placeholder base whose ``__init__`` raises.
    mmcls 1.x's code lives on in mmpretrain, in modules of the same paths.
    Where no real mmcls is installed, a meta path finder (last on
    ``sys.meta_path``) answers ``import mmcls[.X]`` with a module whose
    attributes are ``mmpretrain[.X]``'s, and mmcls 1.x's renamed names
    (``PackClsInputs``, ``ClsDataSample``, ``ClsVisualizer``) give the
    classes of their new names. Applied before mmrazor is imported (kcd_mm
    imports this module first, and kcd_mm's ``.pth`` hook imports kcd_mm
    before mmrazor). The modules have no ``__file__``, so mmengine's
    ``is_installed('mmcls')`` still says False and ``mmcls::`` paths keep
    going through :func:`_mmcls_config_paths`.
    """
    if not _mmcls_missing() or _MmclsAlias in sys.meta_path:
        return
    sys.meta_path.append(_MmclsAlias)


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


class _EpochStartQueue:
    """A worker's index queue that calls ``epoch_start(worker_id)`` when
    torch's ``_ResumeIteration`` (the next pass starts) comes through."""

    def __init__(self, queue, epoch_start, worker_id: int) -> None:
        from torch.utils.data._utils.worker import _ResumeIteration
        self._queue = queue
        self._epoch_start = epoch_start
        self._worker_id = worker_id
        self._resume_type = _ResumeIteration  # looked up once, not per get

    def get(self, *args, **kwargs):
        item = self._queue.get(*args, **kwargs)
        if isinstance(item, self._resume_type):
            self._epoch_start(self._worker_id)
        return item

    def __getattr__(self, name):
        return getattr(self._queue, name)


_TORCH_WORKER_LOOP = None  # torch's own, once _worker_epoch_start wrapped it


def _epoch_start_worker_loop(dataset_kind, dataset, index_queue, data_queue,
                             done_event, auto_collation, collate_fn,
                             drop_last, base_seed, init_fn, worker_id, *args,
                             **kwargs):
    """torch's ``_worker_loop``, its index queue an
    :class:`_EpochStartQueue` when ``init_fn`` has ``epoch_start``.
    Module-level, so spawned workers unpickle it by name."""
    from torch.utils.data._utils import worker
    loop = _TORCH_WORKER_LOOP or worker._worker_loop
    epoch_start = getattr(init_fn, 'epoch_start', None)
    if callable(epoch_start):
        index_queue = _EpochStartQueue(index_queue, epoch_start, worker_id)
    return loop(dataset_kind, dataset, index_queue, data_queue, done_event,
                auto_collation, collate_fn, drop_last, base_seed, init_fn,
                worker_id, *args, **kwargs)


def workers_hear_epoch_start() -> bool:
    """Whether :func:`_worker_epoch_start` is in place (this torch's worker
    loop has the signature it wraps)."""
    return _TORCH_WORKER_LOOP is not None


def _worker_epoch_start() -> None:
    """A run resumed with ``persistent_workers=True`` ends with other
    weights, values and kept sets than the uninterrupted run (augmentations
    drawn in the workers differ).

    Persistent DataLoader workers are seeded once, when they start, and
    carry their RNGs from epoch to epoch; a resumed run's workers start
    fresh. torch tells each live worker that the next pass starts (a
    ``_ResumeIteration`` on its index queue) but, for map-style datasets,
    runs no user code there. This shim adds that one call: a worker whose
    ``worker_init_fn`` has an ``epoch_start(worker_id)`` method
    (:class:`kcd_mm.seeding.WorkerSeeder`, which ``EpochSeedingHook`` puts
    on the training loader) calls it on ``_ResumeIteration``, before the
    pass's first sample. Workers of every other loader run torch's loop
    unchanged. Not applied to a torch whose ``_worker_loop`` has another
    signature; ``EpochSeedingHook`` then restarts persistent workers at
    each epoch instead.
    """
    global _TORCH_WORKER_LOOP
    from torch.utils.data._utils import worker
    if _TORCH_WORKER_LOOP is not None:
        return
    names = ['dataset_kind', 'dataset', 'index_queue', 'data_queue',
             'done_event', 'auto_collation', 'collate_fn', 'drop_last',
             'base_seed', 'init_fn', 'worker_id']
    params = list(inspect.signature(worker._worker_loop).parameters)
    if params[:len(names)] != names:
        return
    _TORCH_WORKER_LOOP = worker._worker_loop
    worker._worker_loop = _epoch_start_worker_loop


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
    _mmcls_modules()
    _mmrazor_quantization()
    _safe_checkpoint_globals()
    _history_buffer_methods()
    _atomic_checkpoints()
    _resume_skips_damaged_checkpoints()
    _mmcls_config_paths()
    _mmcls_registry_names()
    _amp_bf16_on_cpu()
    _gloo_init_dist_on_cpu()
    _cpu_ddp_device_ids()
    _worker_epoch_start()
    _APPLIED = True


apply()
