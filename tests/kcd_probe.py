"""A test-only hook that writes what each rank's KCD run saw, per epoch.

Imported by subprocess runs through ``custom_imports`` (tests/ is put on
PYTHONPATH), so a test can compare ranks after a real multi-process run.
``PauseHook``, ``CheckpointKillHook`` and ``SnapshotKillHook`` stop a run at
a chosen point (the last two SIGKILL it halfway through a write).
"""
import hashlib
import json
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS

from helpers import kcd_hook, upweighted_mask


def _upweighted(state):
    """InfoBatch's up-weighted samples, as a list (None if there are none)."""
    mask = upweighted_mask(state)
    return None if mask is None else torch.nonzero(mask).flatten().tolist()


def _key(item):
    """A sampler key as JSON: the index, then the payload (a persistent
    summary's image or terms as a digest)."""
    if isinstance(item, int):
        return item
    if len(item) == 2:
        return [item[0], hashlib.sha256(repr(
            item[1].tolist() if hasattr(item[1], 'tolist') else item[1]
        ).encode()).hexdigest()[:16]]
    return list(item)


def _summary_digest(state):
    """A digest of the persistent summary's saved state (None without)."""
    saved = state.state_dict()['summary']
    if saved is None:
        return None
    digest = hashlib.sha256()
    for key in sorted(saved):
        value = saved[key]
        if isinstance(value, torch.Tensor):
            value = value.numpy().tobytes()
        elif isinstance(value, list):
            value = b''.join(t.numpy().tobytes() for t in value)
        digest.update(key.encode() + (value if isinstance(value, bytes) else
                                      repr(value).encode()))
    return digest.hexdigest()


@HOOKS.register_module()
class KCDProbeHook(Hook):
    """Per rank: the epoch's shard, the kept set and pairs, final weights."""
    priority = 'LOW'  # after KCDHook

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _write(self, record: dict) -> None:
        path = osp.join(self.out_dir, f'probe_rank{get_rank()}.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def before_train_epoch(self, runner) -> None:
        sampler = runner.train_dataloader.sampler
        sampler.set_epoch(runner.epoch)  # as the loop does before iterating
        self._shard = [_key(i) for i in sampler]

    def after_train_epoch(self, runner) -> None:
        state = kcd_hook(runner).state
        pairs = state.pairs
        self._write(
            dict(
                epoch=runner.epoch + 1,
                shard=self._shard,
                kept=None if state.kept is None else sorted(
                    state.kept.tolist()),
                tail=None if pairs is None else pairs.tail.tolist(),
                lost=None if pairs is None else pairs.lost.tolist(),
                visits=state.bank.visits.tolist(),
                upweighted=_upweighted(state),
                summary=_summary_digest(state),
                sample_iters=state.sample_iters))

    def after_train(self, runner) -> None:
        """Parameters only: BN running stats are per rank in mmengine's DDP
        (broadcast_buffers=False), as in any mmengine run."""
        digest = hashlib.sha256()
        for name, tensor in sorted(runner.model.named_parameters()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self._write(dict(final_weights=digest.hexdigest()))


@HOOKS.register_module()
class PauseHook(Hook):
    """Marks (a file) and pauses a run at one iteration, to kill it there."""

    def __init__(self, epoch: int, batch_idx: int, marker: str,
                 seconds: float = 60.0) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx
        self.marker, self.seconds = marker, seconds

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if runner.epoch + 1 == self.epoch and batch_idx == self.batch_idx:
            open(self.marker, 'w').close()
            import time
            time.sleep(self.seconds)


@HOOKS.register_module()
class BlendProbeHook(Hook):
    """Counts, per epoch, batch images that show the summary's image.

    The pipeline must be deterministic (no augmentation): then each sample
    arrives as the main process's dataset gives it for the key the summary
    hands the sampler (blended where the key carries a blend, plain
    otherwise), whether it was loaded in the main process or in a worker.
    ``wrong`` counts the images that do not.
    """
    priority = 'LOW'

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def before_train_epoch(self, runner) -> None:
        self._blended = self._plain = self._wrong = 0
        self._payloads = kcd_hook(runner).state.sampler_args()[1]

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        dataset = runner.train_dataloader.dataset
        for img, sample in zip(data_batch['inputs'],
                               data_batch['data_samples']):
            idx = sample.metainfo['sample_idx']
            plain = dataset[idx]['inputs']
            want = plain
            if idx in self._payloads:
                want = dataset[(idx, ) + self._payloads[idx]]['inputs']
            if not bool((img == want).all()):
                self._wrong += 1
            elif bool((want == plain).all()):
                self._plain += 1
            else:
                self._blended += 1

    def after_train_epoch(self, runner) -> None:
        path = osp.join(self.out_dir, 'blend_probe.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(dict(epoch=runner.epoch + 1,
                                    blended=self._blended, plain=self._plain,
                                    wrong=self._wrong)) + '\n')


def _die_writing(f, data: bytes) -> None:
    """Write the first half of ``data`` to the open file ``f``, make it
    durable, then SIGKILL this process: a kill in the middle of a write."""
    import os
    import signal
    f.write(data[:len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class CheckpointKillHook(Hook):
    """SIGKILLs the run halfway through writing epoch ``epoch``'s checkpoint
    to disk, wherever mmengine (or a shim) writes it: a ``torch.save`` into
    a real file, or mmengine's ``LocalBackend.put`` of the bytes. ``skip``
    lets that many of the epoch's saves pass first (with ``save_best``:
    the epoch's checkpoint, the best one, then the checkpoint saved again).
    """

    def __init__(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        import io
        import os

        from mmengine.fileio import LocalBackend
        if checkpoint['meta'].get('epoch') != self.epoch:
            return
        if self.skip:
            self.skip -= 1
            return
        name = f'epoch_{self.epoch}.pth'
        torch_save, put = torch.save, LocalBackend.put

        def save(obj, f, *args, **kwargs):
            if obj is not checkpoint or isinstance(f, io.BytesIO):
                return torch_save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            torch_save(obj, buf, *args, **kwargs)
            if isinstance(f, (str, os.PathLike)):
                f = open(f, 'wb')
            _die_writing(f, buf.getvalue())

        def put_(backend, obj, filepath):
            if osp.basename(str(filepath)) not in (name, name + '.tmp'):
                return put(backend, obj, filepath)
            with open(filepath, 'wb') as f:
                _die_writing(f, obj)

        torch.save, LocalBackend.put = save, put_


@HOOKS.register_module()
class SnapshotKillHook(Hook):
    """SIGKILLs the run halfway through writing stage ``stage``'s snapshot
    (``kcd_stages/stage_NNN.npz``, through ``numpy.savez``)."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    def before_train(self, runner) -> None:
        import io

        import numpy as np
        savez, name = np.savez, f'stage_{self.stage:03d}.npz'

        def kill_savez(file, *args, **kwargs):
            if name not in osp.basename(str(getattr(file, 'name', file))):
                return savez(file, *args, **kwargs)
            buf = io.BytesIO()
            savez(buf, *args, **kwargs)
            if not hasattr(file, 'write'):
                file = open(file, 'wb')
            _die_writing(file, buf.getvalue())

        np.savez = kill_savez
