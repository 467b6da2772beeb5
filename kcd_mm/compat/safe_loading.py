"""Safe loading: mmengine 0.10.7's checkpoints under torch's weights-only
load, and the user's own ``torch.load`` untouched.

``Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``: torch
>= 2.6 loads with ``weights_only=True`` by default and mmengine 0.10.7
passes no argument, so resuming from a Runner checkpoint, or loading a
teacher the Runner saved, fails. Rather than turning the safe loader off (a
checkpoint is a pickle that can run code), the few plain-data types a Runner
checkpoint holds are allowed, and only inside :func:`checkpoint_globals`:
its message hub's HistoryBuffer (with its statistics methods, pickled as
``builtins.getattr(HistoryBuffer, 'min')``), 1-D float64/int64 numpy arrays
and numpy float64 scalars.

numpy's own globals are not allowed as they are: with them a file can give
a float dtype object flags, fields or a subarray (numpy's
``dtype.__setstate__`` takes any), and numpy then copies raw bytes into an
array that claims to hold object pointers (a segfault where numpy follows
them). The names ``numpy.dtype``, ``numpy.ndarray``, numpy's
``_reconstruct`` and ``scalar`` (numpy 2 and numpy 1 module paths) and
``builtins.getattr`` resolve to stand-ins that build numeric arrays and
scalars from exactly numpy's pickled states and HistoryBuffer's own
methods; anything else is refused with ``UnpicklingError: ... kcd_mm:
refusing ...``. Arrays come out of :func:`load` as plain ndarrays.

:func:`apply` registers :func:`load_from_local` as mmengine's loader of
local paths (``CheckpointLoader.register_scheme``, mmengine's own extension
point), so every mmengine load of a local file (``Runner.resume``,
``load_checkpoint``, a distiller's ``teacher_ckpt``) runs inside the
context; kcd_mm's tools call :func:`load`. Outside those calls torch's
allow-list is the user's: kcd_mm never adds to it for good, and where the
user allowed numpy's types themselves, their choice stands inside the
context too. (torch's allow-list is process-wide: a user's ``torch.load``
in another thread at the very moment of such a load sees the stand-ins.)
"""
import contextlib
import os.path as osp
import pickle
import threading
import types

import numpy as np
import torch

try:
    from numpy._core.multiarray import scalar as _NUMPY_SCALAR
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _NUMPY_SCALAR


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
    numpy copies the bytes in. It pickles as a plain ndarray, and
    :func:`load` turns it back into one."""

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


def _history_buffer_getattr(obj, name, *default):
    """Stands for ``builtins.getattr``: HistoryBuffer's own public methods,
    which its ``__getstate__`` pickles, and nothing else (allowing
    ``getattr`` itself would reach any module)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    value = None
    if obj is HistoryBuffer and isinstance(name, str):
        value = HistoryBuffer.__dict__.get(name)
    if not isinstance(value, types.FunctionType) or name.startswith('_'):
        raise pickle.UnpicklingError(
            f'kcd_mm: refusing getattr({obj!r}, {name!r}) in a '
            'weights-only checkpoint load')
    return value


def _stand_ins() -> list:
    """Torch allow-list entries for a Runner checkpoint: (object, name)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    safe = [(HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
            (_CheckedDType, 'numpy.dtype'), (_NumpyNdarray, 'numpy.ndarray'),
            (_CheckedArray, 'kcd_mm.compat.safe_loading._CheckedArray'),
            (_history_buffer_getattr, 'builtins.getattr')]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        safe += [(_checked_reconstruct, f'{module}._reconstruct'),
                 (_checked_scalar, f'{module}.scalar')]
    return safe


def _global_name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


_LOCK = threading.RLock()  # one block at a time; nested blocks share it
_DEPTH = [0]


def _missing_stand_ins(saved: list) -> list:
    """The stand-ins the user's allow-list does not name. Where the user
    allowed any of numpy's types under the names the stand-ins take (the
    real ``numpy.dtype``, ``_reconstruct``, ...), numpy is left entirely to
    their entries: two objects under one name would make the outcome
    depend on set order."""
    names = {_global_name(g) for g in saved}
    ours = [(obj, name) for obj, name in _stand_ins() if name not in names]
    if any(name.startswith('numpy') for name in names
           & {name for _, name in _stand_ins()}):
        ours = [(obj, name) for obj, name in ours
                if not name.startswith(('numpy', 'kcd_mm'))]
    return ours


@contextlib.contextmanager
def checkpoint_globals():
    """Allow a Runner checkpoint's types (the stand-ins) in weights-only
    loads inside the block; the allow-list is restored on exit. Blocks in
    several threads run one at a time (the allow-list is process-wide)."""
    with _LOCK:
        if _DEPTH[0]:
            _DEPTH[0] += 1
            try:
                yield
            finally:
                _DEPTH[0] -= 1
            return
        serialization = torch.serialization
        saved = serialization.get_safe_globals()
        serialization.add_safe_globals(_missing_stand_ins(saved))
        _DEPTH[0] = 1
        try:
            yield
        finally:
            _DEPTH[0] = 0
            serialization.clear_safe_globals()
            serialization.add_safe_globals(saved)


def _plain_arrays(obj, seen: set):
    """``obj`` with every checked array a plain ndarray again (in dicts,
    lists, tuples and HistoryBuffers, where a Runner checkpoint has them)."""
    if type(obj) is _CheckedArray:
        return obj.view(np.ndarray)
    if isinstance(obj, (torch.Tensor, str, bytes, int, float)) or \
            obj is None or id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _plain_arrays(value, seen)
    elif isinstance(obj, list):
        obj[:] = [_plain_arrays(value, seen) for value in obj]
    elif type(obj) is tuple:
        return tuple(_plain_arrays(value, seen) for value in obj)
    elif isinstance(getattr(obj, '__dict__', None), dict):
        _plain_arrays(obj.__dict__, seen)
    return obj


def load(path, map_location=None, **kwargs):
    """``torch.load(path, map_location, **kwargs)`` with a Runner
    checkpoint's types allowed for this load only. Without
    ``weights_only`` in ``kwargs``, as mmengine calls it, the torch default
    (or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) decides."""
    with checkpoint_globals():
        checkpoint = torch.load(path, map_location=map_location, **kwargs)
    return _plain_arrays(checkpoint, set())


def load_from_local(filename, map_location=None):
    """mmengine's loader of local paths (``CheckpointLoader`` scheme
    ``''``): as mmengine 0.10.7's own, through :func:`load`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load(filename, map_location)


def apply() -> None:
    """Make mmengine load local checkpoints through :func:`load`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
