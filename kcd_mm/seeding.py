"""EpochSeedingHook: every epoch's randomness a function of (seed, epoch).

mmengine seeds the global RNGs once, at start-up, and does not checkpoint
them: a run resumed from an epoch checkpoint draws other augmentations
and dropout masks than the uninterrupted run did, so its knowledge
values, kept sets and weights drift apart. Reseeding python, numpy and
torch at each epoch start from (run seed, epoch) makes the resumed run
repeat the uninterrupted one exactly. ``KCDHook(epoch_seeding=True)``
(the default) runs it; any other run can add the hook itself.
"""
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmrazor.registry import HOOKS


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return (int(seed) + 1_000_003 * int(epoch)) % 2**32


def reseed(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@HOOKS.register_module()
class EpochSeedingHook(Hook):
    """Reseed the global RNGs from (run seed, epoch) at each epoch start.

    Does nothing when the run has no seed (``randomness.seed=None``).
    """

    priority = 'NORMAL'

    def before_train_epoch(self, runner) -> None:
        if runner.seed is not None:
            reseed(epoch_seed(runner.seed, runner.epoch))
