"""One way to write a file that a kill cannot leave half-written.

Checkpoints (:class:`kcd_mm.compat.mmengine_checkpoints.AtomicCheckpointHook`),
stage records, snapshots and exported weights all go through
:func:`write_atomically` or :func:`commit`. Standard library only.
"""
import os
import os.path as osp
from typing import Callable, Optional


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder cannot be opened everywhere (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str, path: str) -> None:
    """Move the finished file ``tmp`` over ``path`` durably: fsync it,
    rename it (atomic within one file system), fsync the folder."""
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_folder(osp.dirname(osp.abspath(path)))


def write_atomically(path: str, write: Callable, mode: str = 'wb',
                     check: Optional[Callable[[str], None]] = None) -> None:
    """``write(f)`` to ``path`` so that a kill leaves either the old file
    or the whole new one: a temporary ``<path>.tmp`` in the same folder,
    fsynced, checked by ``check(tmp_path)`` if given (an exception keeps
    the old file), renamed over ``path``; then the folder is fsynced."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + '.tmp'
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)
