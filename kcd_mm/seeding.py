"""EpochSeedingHook: every epoch's randomness a function of (seed, epoch).

mmengine seeds the global RNGs once, at start-up, and does not checkpoint
them: a run resumed from an epoch checkpoint draws other augmentations
and dropout masks than the uninterrupted run did, so its knowledge
values, kept sets and weights drift apart. Reseeding python, numpy and
torch at each epoch start from (run seed, epoch) makes the resumed run
repeat the uninterrupted one exactly. ``KCDHook(epoch_seeding=True)``
(the default) runs it; any other run can add the hook itself.

Augmentations drawn in dataloader workers need the same: mmengine seeds
each worker once, when it starts, from (seed, rank, worker id), so
persistent workers carry their RNGs from epoch to epoch (a resumed run's
fresh workers draw others) and non-persistent workers repeat one stream
every epoch. The hook therefore also wraps the training loader's
``worker_init_fn`` in a :class:`WorkerSeeder`, which reseeds every worker
from (seed, epoch, rank, worker id) at the start of every epoch:
persistent workers through the shim
:func:`kcd_mm.compat._worker_epoch_start`, fresh ones when they start.
"""
import random
from typing import Callable, Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS

from .compat import workers_hear_epoch_start


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return (int(seed) + 1_000_003 * int(epoch)) % 2**32


def reseed_worker(seed: int, rank: int, worker_id: int,
                  rerun: int = 0) -> None:
    """Seed a dataloader worker's python, numpy and torch RNGs for an epoch
    seeded ``seed``: apart for every (seed, rank, worker, rerun) and,
    unlike :func:`reseed`, apart from one another (numpy's legacy and
    torch's CPU generators are both MT19937: one integer seed would give
    them one stream)."""
    words = np.random.SeedSequence(
        [int(seed), int(rank), int(worker_id), int(rerun)]).generate_state(4)
    torch.manual_seed(int(words[0]))
    random.seed(int(words[1]))
    np.random.seed(words[2:])


def reseed(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class WorkerSeeder:
    """A loader's ``worker_init_fn`` that also reseeds at each epoch start.

    Runs the wrapped ``init_fn`` (mmengine's, say), then reseeds the
    worker from (epoch seed, rank, worker id). The epoch seed lives in
    shared memory, so :meth:`set_epoch_seed` in the main process reaches
    live (persistent) workers too: they reseed in :meth:`epoch_start`,
    which the shim :func:`kcd_mm.compat._worker_epoch_start` calls when
    torch starts the loader's next pass. A persistent worker's second
    pass under one seed (an iteration-based loop cycling its loader)
    counts as a rerun and draws afresh.

    Args:
        init_fn (callable, optional): the loader's own ``worker_init_fn``.
        rank (int): this process's rank.
    """

    def __init__(self, init_fn: Optional[Callable[[int], None]],
                 rank: int) -> None:
        self.init_fn = init_fn
        self.rank = int(rank)
        self._seed = torch.zeros((), dtype=torch.int64).share_memory_()
        self._last: Optional[int] = None  # worker-local from here on
        self._rerun = 0

    def set_epoch_seed(self, seed: int) -> None:
        """Main process, before the epoch's ``iter(loader)``."""
        self._seed.fill_(int(seed))

    def epoch_start(self, worker_id: int) -> None:
        """Worker process: reseed for the pass that starts now."""
        seed = int(self._seed)
        self._rerun = self._rerun + 1 if seed == self._last else 0
        self._last = seed
        reseed_worker(seed, self.rank, worker_id, self._rerun)

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        self.epoch_start(worker_id)


def seed_workers(loader, seed: int) -> None:
    """Make ``loader``'s workers, fresh or persistent, draw from ``seed``
    (with their rank and id) in the pass that starts next; a loader
    without workers is left alone."""
    if not getattr(loader, 'num_workers', 0):
        return
    seeder = loader.worker_init_fn
    if not isinstance(seeder, WorkerSeeder) or not (
            workers_hear_epoch_start()):
        # Live persistent workers started without a seeder (or on a torch
        # the shim does not fit) cannot be reseeded: the next pass starts
        # new ones (the old ones shut down when their iterator is dropped).
        loader._iterator = None
    if not isinstance(seeder, WorkerSeeder):
        seeder = WorkerSeeder(seeder, get_rank())
        loader.worker_init_fn = seeder
    seeder.set_epoch_seed(seed)


@HOOKS.register_module()
class EpochSeedingHook(Hook):
    """Reseed the RNGs from (run seed, epoch) at each epoch start: the main
    process's, and those of the training loader's workers.

    Does nothing when the run has no seed (``randomness.seed=None``).
    """

    priority = 'NORMAL'

    def before_train_epoch(self, runner) -> None:
        if runner.seed is None:
            return
        seed = epoch_seed(runner.seed, runner.epoch)
        reseed(seed)
        seed_workers(getattr(runner, 'train_dataloader', None), seed)
