"""KnowledgeSummaryDataset seeds each sample in a worker from (epoch
seed, index).

Augmentations are then the same whatever ``num_workers > 0``, persistent
or not, and whichever worker loads a sample: a resumed run (fresh
workers) draws in an epoch what the uninterrupted run (workers alive
since epoch 0) drew there, with no hook into torch's worker loop. With
``num_workers=0`` the main stream, reseeded each epoch, does the same.
"""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmpretrain.datasets import CustomDataset

from kcd_mm import EpochSeedingHook, KnowledgeSummaryDataset
from kcd_mm.testing import make_image_folder


def _dataset(root):
    """A file dataset whose pipeline draws with numpy (RandomCrop's
    padding offsets), python and torch (the probe transform)."""
    base = CustomDataset(
        data_root=root, with_label=True, pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='RandomFlip', prob=0.5, direction='horizontal'),
            dict(type='RandomCrop', crop_size=8, padding=2),
            dict(type='PackInputs')
        ])
    return KnowledgeSummaryDataset(base)


class _Draws(torch.utils.data.Dataset):
    """Wraps the KCD dataset: each item is (index, pixel digest, python,
    numpy and torch draws made right after the sample's pipeline)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def set_epoch_seed(self, seed):
        self.dataset.set_epoch_seed(seed)

    def __getitem__(self, key):

        def load():
            out = self.dataset._item(key)
            return (int(out['data_samples'].sample_idx),
                    int(out['inputs'].long().sum() * 7 +
                        out['inputs'][0, 0].long().sum()),
                    random.getrandbits(31), int(np.random.randint(2**31)),
                    int(torch.randint(2**31, ())))

        return self.dataset._seeding.seeded(int(key), load)


def _epochs(loader, epochs):
    runner = SimpleNamespace(seed=11, epoch=0, train_dataloader=loader)
    hook, out = EpochSeedingHook(), {}
    for epoch in epochs:
        runner.epoch = epoch
        hook.before_train_epoch(runner)
        out[epoch] = sorted(tuple(item) for batch in loader
                            for item in batch)
    return out


@pytest.mark.multiprocess
def test_every_sample_draws_what_seed_epoch_and_index_say(tmp_path):
    root = make_image_folder(str(tmp_path / 'data'), 12, 2, 8)
    dataset = _Draws(_dataset(root))

    def loader(workers, persistent=False):
        return torch.utils.data.DataLoader(
            dataset, batch_size=3, shuffle=True, num_workers=workers,
            persistent_workers=persistent, collate_fn=list)

    whole = _epochs(loader(2, persistent=True), [0, 1, 2])
    assert _epochs(loader(2, persistent=True), [2])[2] == whole[2]
    assert _epochs(loader(1), [1, 2]) == {1: whole[1], 2: whole[2]}
    main = _epochs(loader(0), [0, 1, 2])  # the main stream, per epoch
    assert _epochs(loader(0), [2])[2] == main[2]
    # Epochs and samples draw apart; one epoch covers every sample once.
    assert [i for i, *_ in whole[0]] == list(range(12))
    draws = [d for items in whole.values() for _, _, *ds in items for d in ds]
    assert len(set(draws)) == len(draws)
    assert len({pixels for items in whole.values()
                for _, pixels, *_ in items}) > 12


def test_the_main_process_is_not_reseeded_per_sample(tmp_path):
    """With ``num_workers=0`` the samples draw from the main stream in
    order (what runs with ``num_workers=0`` always drew, so their records
    stay as they were); unset, the dataset seeds nothing anywhere."""
    root = make_image_folder(str(tmp_path / 'data'), 4, 2, 8)
    dataset = _dataset(root)
    dataset.set_epoch_seed(9)
    torch.manual_seed(5)
    np.random.seed(5)
    first = [dataset[1]['inputs'] for _ in range(6)]
    torch.manual_seed(5)
    np.random.seed(5)
    again = [dataset[1]['inputs'] for _ in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(first[0], a) for a in first[1:])
    dataset.set_epoch_seed(None)
    assert int(dataset._seeding._seed) == -1
