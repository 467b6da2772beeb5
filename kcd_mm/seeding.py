"""EpochSeedingHook: every epoch's randomness a function of (seed, epoch).

mmengine seeds the global RNGs once, at start-up, and does not checkpoint
them: a run resumed from an epoch checkpoint draws other augmentations
and dropout masks than the uninterrupted run did, so its knowledge
values, kept sets and weights drift apart. Reseeding python, numpy and
torch at each epoch start from (run seed, epoch) makes the resumed run
repeat the uninterrupted one exactly. ``KCDHook(epoch_seeding=True)``
(the default) runs it; any other run can add the hook itself.

Augmentations drawn in dataloader workers need the same: mmengine seeds
each worker once, when it starts, so persistent workers carry their RNGs
from epoch to epoch (a resumed run's fresh workers draw others). With a
:class:`~kcd_mm.KnowledgeSummaryDataset` the hook hands the epoch seed to
the dataset, which seeds each sample's load and augmentation from (epoch
seed, sample index) in the workers (:class:`SampleSeeding`): the draws are
then the same whatever ``num_workers > 0``, persistent or not, and
whichever worker loads the sample, with no hook into torch's workers
(``num_workers=0`` draws from the main stream, reseeded each epoch). Any
other dataset gets a
:class:`WorkerSeeder` as ``worker_init_fn`` (fresh workers reseeded from
(epoch seed, rank, worker id)), and its persistent workers are restarted
at each epoch so that they start from the new seed.
"""
import hashlib
import random
from typing import Callable, Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return (int(seed) + 1_000_003 * int(epoch)) % 2**32


def _seed_apart(*words: int) -> None:
    """Seed python's, numpy's and torch's CPU generators from ``words``,
    apart from one another (numpy's legacy and torch's CPU generators are
    both MT19937: one integer seed would give them one stream): three
    words of one hash, about 8 us, so it can run for every sample (a
    SeedSequence and ``torch.manual_seed``, which also visits every
    accelerator's generators, cost 100 us; benchmarks/
    bench_sample_seeding.py)."""
    digest = hashlib.blake2b(' '.join(str(int(w)) for w in words).encode(),
                             digest_size=12).digest()
    torch.default_generator.manual_seed(int.from_bytes(digest[:4], 'little'))
    random.seed(int.from_bytes(digest[4:8], 'little'))
    np.random.seed(int.from_bytes(digest[8:], 'little'))


def reseed_worker(seed: int, rank: int, worker_id: int) -> None:
    """Seed a dataloader worker's RNGs for an epoch seeded ``seed``: apart
    for every (seed, rank, worker)."""
    _seed_apart(seed, rank, worker_id)


def reseed(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class SampleSeeding:
    """Each sample's randomness in a worker from (epoch seed, index).

    The epoch seed lives in shared memory, so :meth:`set_epoch_seed` in
    the main process reaches the dataset's copies in live (persistent)
    workers too: the hook sets it before the epoch's ``iter(loader)``,
    before any worker is sent an index of that epoch. :meth:`seeded` then
    seeds a worker's python, numpy and torch for one sample: the draws do
    not depend on the worker, on ``num_workers`` or on how long the worker
    has lived. In the main process (``num_workers=0``) it seeds nothing:
    there the samples draw, in order, from the main stream that
    EpochSeedingHook reseeds at each epoch, which a resumed run repeats
    already (and the model's own draws stay where they were; restoring
    numpy's state after each sample would cost 65 us). Unset (-1, a run
    without a seed), it does nothing.
    """

    def __init__(self) -> None:
        self._seed = torch.full((), -1, dtype=torch.int64).share_memory_()

    def set_epoch_seed(self, seed: Optional[int]) -> None:
        """Main process, before the epoch's ``iter(loader)``."""
        self._seed.fill_(-1 if seed is None else int(seed))

    def seeded(self, sample_idx: int, load: Callable):
        """``load()`` with the RNGs seeded for sample ``sample_idx``."""
        seed = int(self._seed)
        if seed >= 0 and torch.utils.data.get_worker_info() is not None:
            _seed_apart(seed, sample_idx)
        return load()


class WorkerSeeder:
    """A loader's ``worker_init_fn`` that also reseeds from the epoch seed.

    Runs the wrapped ``init_fn`` (mmengine's, say), then reseeds the fresh
    worker from (epoch seed, rank, worker id). :func:`seed_workers` sets
    the seed before workers start.

    Args:
        init_fn (callable, optional): the loader's own ``worker_init_fn``.
        rank (int): this process's rank.
    """

    def __init__(self, init_fn: Optional[Callable[[int], None]],
                 rank: int) -> None:
        self.init_fn = init_fn
        self.rank = int(rank)
        self.seed = 0

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        reseed_worker(self.seed, self.rank, worker_id)


def seed_workers(loader, seed: int) -> None:
    """Make ``loader``'s workers draw from ``seed`` in the pass that starts
    next: per sample in a dataset that seeds its samples
    (``set_epoch_seed``), else per worker, restarting persistent workers
    (torch offers no call into a live worker). A loader without workers,
    with a plain dataset, is left alone."""
    dataset = getattr(loader, 'dataset', None)
    if callable(getattr(dataset, 'set_epoch_seed', None)):
        dataset.set_epoch_seed(seed)
        return
    if not getattr(loader, 'num_workers', 0):
        return
    seeder = loader.worker_init_fn
    if not isinstance(seeder, WorkerSeeder):
        seeder = WorkerSeeder(seeder, get_rank())
        loader.worker_init_fn = seeder
    seeder.seed = int(seed)
    if getattr(loader, 'persistent_workers', False):
        # The loader's own iterator holds the live workers; dropping it
        # shuts them down, and the next iter(loader) starts fresh ones.
        loader._iterator = None


@HOOKS.register_module()
class EpochSeedingHook(Hook):
    """Reseed the RNGs from (run seed, epoch) at each epoch start: the main
    process's, and those the training loader draws its samples with.

    Does nothing when the run has no seed (``randomness.seed=None``).
    """

    priority = 'NORMAL'

    def before_train_epoch(self, runner) -> None:
        if runner.seed is None:
            return
        seed = epoch_seed(runner.seed, runner.epoch)
        reseed(seed)
        seed_workers(getattr(runner, 'train_dataloader', None), seed)
