"""mmengine checkpoints that a kill cannot lose, for the runs that ask.

``FileNotFoundError: .../epoch_N.pth can not be found.`` (or an ``EOFError``,
or ``PytorchStreamReader failed reading zip archive``) on ``--resume`` after
a run was killed while it saved a checkpoint: mmengine 0.10.7's
CheckpointHook, with ``max_keep_ckpts`` set, deletes the oldest checkpoint
before it writes the new one, and writes the checkpoint and
``last_checkpoint`` in place. Its ``find_latest_checkpoint`` returns
whatever ``last_checkpoint`` holds, an empty string or a truncated file
included.

Both fixes change behaviour, so neither is applied at import:

* :class:`AtomicCheckpointHook`, a registered CheckpointHook
  (``default_hooks.checkpoint.type='mmrazor.AtomicCheckpointHook'``), writes
  each checkpoint and ``last_checkpoint`` atomically and deletes the
  outdated ones only once both are complete. KCDHook makes a run's plain
  CheckpointHook one when the run starts.
* :func:`latest_checkpoint` is mmengine's choice of what to resume, except
  that a ``last_checkpoint`` naming a damaged or missing file (or empty)
  gives the complete ``epoch_N.pth``/``iter_N.pth`` of the highest step
  instead, with a warning. Without ``last_checkpoint`` it is None, as in
  mmengine: a stray checkpoint is not resumed. KCDHook (auto-resume) and
  kcd_mm's ``tools/train.py --resume`` ask it.
"""
import contextlib
import os
import os.path as osp
import re
import zipfile
from typing import Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner
from mmrazor.registry import HOOKS

from ..fileio import commit, write_atomically

_RESUMABLE_NAME = re.compile(r'(epoch|iter)_(\d+)\.pth')


def checkpoint_problem(path: str) -> Optional[str]:
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


def latest_checkpoint(work_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint to resume, warning): what ``last_checkpoint`` in
    ``work_dir`` names, if it is complete (warning None); if it names a
    damaged or missing file, or nothing, the complete ``epoch_N``/``iter_N``
    checkpoint of the highest step in its folder or ``work_dir`` (None if
    there is none), with a warning naming each damaged file. No
    ``last_checkpoint``: (None, None), training starts afresh as in
    mmengine. Paths of other storage (``s3://...``) are returned
    unchecked."""
    save_file = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(save_file):
        return None, None
    with open(save_file) as f:
        recorded = f.read().strip()
    if recorded and '://' in recorded:
        return recorded, None
    problem = checkpoint_problem(recorded) if recorded else None
    if recorded and problem is None:
        return recorded, None
    damaged = [f'{recorded} (named by {save_file}) {problem}'
               if recorded else f'{save_file} is empty']
    folders = [work_dir]
    if recorded and osp.normpath(osp.dirname(recorded) or '.') != \
            osp.normpath(work_dir):
        folders.insert(0, osp.dirname(recorded))
    seen = {osp.realpath(recorded)} if recorded else set()
    candidates = {}
    for folder in folders:
        for name in (os.listdir(folder) if osp.isdir(folder) else ()):
            match = _RESUMABLE_NAME.fullmatch(name)
            full = osp.join(folder, name)
            if match and osp.isfile(full) and osp.realpath(full) not in seen:
                seen.add(osp.realpath(full))
                candidates[full] = int(match.group(2))
    for candidate in sorted(candidates, key=candidates.get, reverse=True):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate, (f'kcd_mm: {"; ".join(damaged)}; resuming '
                               f'from {candidate}, the newest complete '
                               'checkpoint.')
        damaged.append(f'{candidate} {problem}')
    return None, (f'kcd_mm: {"; ".join(damaged)}; no complete checkpoint in '
                  f'{" or ".join(folders)} to resume from: training starts '
                  'from scratch.')


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


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, but a kill never loses a checkpoint.

    Same options and files. On local storage each checkpoint (``epoch_N``,
    ``iter_N``, ``best_*``, and the re-save after a new best) is written as
    ``<name>.tmp`` and renamed into place once complete, ``last_checkpoint``
    likewise, and the checkpoints ``max_keep_ckpts`` drops (and an outdated
    best one) are deleted only after that: a run killed while saving keeps
    its previous checkpoint and a ``last_checkpoint`` naming it.
    """

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        with self._atomic_saves(runner):
            runner.save_checkpoint(
                self.out_dir,
                filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        if not is_main_process():
            return
        last = self.last_ckpt
        write_atomically(
            osp.join(runner.work_dir, 'last_checkpoint'),
            lambda f: f.write(last), mode='w')
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(old))
            if path == self.last_ckpt:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed's folders
                self.file_backend.rmtree(path)

    @contextlib.contextmanager
    def _atomic_saves(self, runner):
        """For the duration of the block, ``runner.save_checkpoint``
        writes ``<name>.tmp`` and renames it into place once complete (an
        attribute of this runner, removed afterwards; nested blocks share
        the outer one). Other storage than local files is left as it is."""
        backend = getattr(self.file_backend, 'backend', self.file_backend)
        if not isinstance(backend, LocalBackend) or \
                'save_checkpoint' in vars(runner):
            yield
            return
        save = runner.save_checkpoint

        def atomic_save(out_dir, filename, *args, **kwargs):
            save(out_dir, filename + '.tmp', *args, **kwargs)
            if is_main_process():  # Runner.save_checkpoint is master-only
                path = osp.join(out_dir, filename)
                commit(path + '.tmp', path)

        runner.save_checkpoint = atomic_save
        try:
            yield
        finally:
            del runner.save_checkpoint

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = getattr(self, 'file_backend', None)
        if backend is None:
            return super()._save_best_checkpoint(runner, metrics)
        deferred = _DeferredRemoval(backend)
        self.file_backend = deferred
        try:
            with self._atomic_saves(runner):
                super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        written = {getattr(self, 'last_ckpt', None),
                   getattr(self, 'best_ckpt_path', None)}
        written.update((getattr(self, 'best_ckpt_path_dict', None)
                        or {}).values())
        for operation, path in deferred.removals:
            if path not in written:
                getattr(backend, operation)(path)


def make_atomic(runner) -> Optional[CheckpointHook]:
    """Turn a Runner's plain CheckpointHook into an
    :class:`AtomicCheckpointHook` (same options and state: the subclass
    adds methods only). Returns the hook changed, or None: no plain one
    (another subclass the config chose is left as it is), or not mmengine's
    ``Runner`` (FlexibleRunner's strategies save folders from every
    rank)."""
    if not isinstance(runner, Runner):
        return None
    for hook in runner.hooks:
        if type(hook) is CheckpointHook:
            hook.__class__ = AtomicCheckpointHook
            return hook
    return None
