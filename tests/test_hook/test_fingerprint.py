"""The training-set fingerprint: a resume on other samples of the same
classes and counts is refused; the same samples under another data root
resume."""
import hashlib
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.runner import Runner

from kcd_mm.fingerprint import fingerprint, fingerprint_scheme, same_dataset
from kcd_mm.testing import (make_image_folder, make_imagenet_folder,
                            tiny_kcd_config)
from helpers import load_checkpoint

N = 24
REFUSED = 'another training set of the same size'


def _cfg(data_root, work_dir, max_epochs=2, ann_file=None):
    cfg = tiny_kcd_config(data_root, max_epochs=max_epochs)
    if ann_file is not None:  # ImageNet's layout: train/ listed in meta/
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            dataset = cfg[key]['dataset']
            dataset = dataset.get('dataset', dataset)  # inside the wrapper
            dataset.update(ann_file=ann_file, data_prefix='train')
    cfg = Config(cfg)
    cfg.work_dir = str(work_dir)
    return cfg


def _train(cfg) -> Runner:
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _resume(data_root, base_dir, work_dir, **kwargs) -> Runner:
    """Resume ``base_dir``'s epoch 2 on ``data_root`` for one more epoch."""
    cfg = _cfg(data_root, work_dir, max_epochs=3, **kwargs)
    cfg.resume = True
    cfg.load_from = osp.join(str(base_dir), 'epoch_2.pth')
    return Runner.from_cfg(cfg)


@pytest.fixture(scope='module')
def folder_run(tmp_path_factory):
    """A finished 2-epoch KCD run on a class-folder dataset."""
    root = tmp_path_factory.mktemp('fingerprint')
    data = make_image_folder(str(root / 'data'), N, 3, 8)
    _train(_cfg(data, root / 'work'))
    return data, str(root / 'work')


def _copy(src, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _names(folder):
    return sorted(os.listdir(folder))


@pytest.mark.slow
def test_same_images_under_another_data_root_resume(folder_run, tmp_path):
    data, base = folder_run
    moved = _copy(data, tmp_path / 'elsewhere' / 'data')
    runner = _resume(moved, base, tmp_path / 'work')
    runner.train()
    assert runner.epoch == 3


def test_image_moved_to_another_class_is_refused(folder_run, tmp_path):
    """One image out of class_0, one of class_1 into it: every class keeps
    its count, so the labels in order are unchanged."""
    data, base = folder_run
    other = _copy(data, tmp_path / 'data')
    a = _names(osp.join(other, 'class_0'))[0]
    b = _names(osp.join(other, 'class_1'))[0]
    shutil.move(osp.join(other, 'class_0', a), osp.join(other, 'class_1'))
    shutil.move(osp.join(other, 'class_1', b), osp.join(other, 'class_0'))
    runner = _resume(other, base, tmp_path / 'work')
    labels = runner.train_dataloader.dataset.dataset.get_gt_labels()
    assert (np.bincount(labels) == N // 3).all()
    with pytest.raises(ValueError, match=REFUSED):
        runner.train()


def test_other_images_with_the_same_counts_are_refused(
        folder_run, tmp_path):
    data, base = folder_run
    # Twice the images, every other one removed: 8 a class, other files.
    other = make_image_folder(str(tmp_path / 'data'), 2 * N, 3, 8, seed=1)
    for c in range(3):
        folder = osp.join(other, f'class_{c}')
        for name in _names(folder)[::2]:
            os.remove(osp.join(folder, name))
    assert sorted(os.listdir(other)) == sorted(os.listdir(data))
    runner = _resume(other, base, tmp_path / 'work')
    with pytest.raises(ValueError, match=REFUSED):
        runner.train()


@pytest.mark.slow
def test_files_swapped_within_a_class_are_refused(tmp_path):
    """ImageNet's layout: the annotation file lists two images of one
    class the other way round; classes and counts stay as they were."""
    data = make_imagenet_folder(str(tmp_path / 'data'), N, 6, 3, 8)
    ann = osp.join(data, 'meta', 'train.txt')
    _train(_cfg(data, tmp_path / 'base', ann_file='meta/train.txt'))
    with open(ann) as f:
        lines = f.readlines()
    same_class = [i for i, line in enumerate(lines)
                  if line.split()[1] == '0']
    i, j = same_class[:2]
    lines[i], lines[j] = lines[j], lines[i]
    with open(osp.join(data, 'meta', 'swapped.txt'), 'w') as f:
        f.writelines(lines)
    runner = _resume(data, tmp_path / 'base', tmp_path / 'work',
                     ann_file='meta/swapped.txt')
    with pytest.raises(ValueError, match=REFUSED):
        runner.train()


@pytest.mark.slow
def test_checkpoint_with_a_labels_only_fingerprint_resumes(folder_run,
                                                           tmp_path):
    """Checkpoints before v2 carry a hash of the labels: a resume on the
    same dataset must not be refused because the scheme changed."""
    data, base = folder_run
    ckpt = load_checkpoint(osp.join(base, 'epoch_2.pth'))
    labels = np.arange(N, dtype=np.int64) // (N // 3)  # class-sorted
    old = hashlib.sha1(labels.tobytes()).hexdigest()[:16]
    assert ckpt['kcd_state']['fingerprint'].startswith('v2:')
    assert ckpt['kcd_state']['fingerprint'].endswith(':' + old)
    ckpt['kcd_state']['fingerprint'] = old
    old_dir = tmp_path / 'old'
    old_dir.mkdir()
    torch.save(ckpt, str(old_dir / 'epoch_2.pth'))
    runner = _resume(data, old_dir, tmp_path / 'work')
    runner.train()
    assert runner.epoch == 3


# ------------------------------------------------- the fingerprint alone
class _InMemory(BaseDataset):
    """Images in the data infos, as mmpretrain's MNIST and CIFAR keep
    them."""

    def __init__(self, images, labels, **kwargs):
        self._images, self._labels = images, labels
        super().__init__(pipeline=[], **kwargs)

    def load_data_list(self):
        return [dict(img=img, gt_label=int(label))
                for img, label in zip(self._images, self._labels)]


@pytest.mark.slow
@pytest.mark.parametrize('serialize', [True, False])
def test_in_memory_images_are_fingerprinted_by_their_bytes(serialize):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    value = fingerprint(_InMemory(images, labels, serialize_data=serialize))
    assert fingerprint_scheme(value) == 'v2'
    assert value == fingerprint(_InMemory(images.copy(), labels))
    swapped = images.copy()
    swapped[[0, 3]] = images[[3, 0]]  # same class, same label order
    assert value != fingerprint(_InMemory(swapped, labels))
    changed = images.copy()
    changed[5, 0, 0, 0] ^= 1
    assert value != fingerprint(_InMemory(changed, labels))
    assert value != fingerprint(_InMemory(images, (labels + 1) % 3))


def test_unserialized_data_infos_are_read_in_place(tmp_path):
    """serialize_data=False: the fingerprint reads ``data_list`` itself,
    not through ``get_data_info``, which deep-copies every info (2.5x the
    serialized pass on ImageNet's 1.28M), and gives the serialized
    value."""
    from mmpretrain.datasets import CustomDataset
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 8)
    serialized = CustomDataset(data_root=data, with_label=True)
    plain = CustomDataset(data_root=data, with_label=True,
                          serialize_data=False)
    calls = []
    copying = plain.get_data_info
    plain.get_data_info = lambda i: calls.append(i) or copying(i)
    assert fingerprint(plain) == fingerprint(serialized)
    assert calls == []
    assert fingerprint_scheme(fingerprint(plain)) == 'v2'


def test_paths_are_relative_to_the_prefix_or_their_common_folder():

    class Paths:  # a wrapper without data_root, infos as the dataset's

        def __init__(self, root, names, labels):
            self.infos = [dict(img_path=f'{root}/{n}', gt_label=label)
                          for n, label in zip(names, labels)]

        def __len__(self):
            return len(self.infos)

        def get_data_info(self, i):
            return dict(self.infos[i])

    names, labels = ['a/1.png', 'a/2.png', 'b/3.png'], [0, 0, 1]
    value = fingerprint(Paths('/data/x', names, labels))
    old = np.asarray(labels, dtype=np.int64)  # the labels-only hash
    assert value.endswith(':' + hashlib.sha1(old.tobytes()).hexdigest()[:16])
    assert value == fingerprint(Paths('/mnt/other/place', names, labels))
    assert value != fingerprint(Paths('/data/x', names[::-1], labels))
    assert value != fingerprint(Paths('/data/x', names, [0, 1, 1]))


def test_labels_only_datasets_keep_the_old_fingerprint_and_schemes():

    class Labelled:

        def __len__(self):
            return 4

        def get_gt_labels(self):
            return np.array([0, 1, 1, 2])

    labels = np.array([0, 1, 1, 2], dtype=np.int64)
    old = hashlib.sha1(labels.tobytes()).hexdigest()[:16]
    assert fingerprint(Labelled()) == old  # as before v2
    assert fingerprint(Labelled(), torch.from_numpy(labels)) == old
    assert fingerprint_scheme(old) == 'v1'
    assert fingerprint_scheme('v2:0123456789abcdef') == 'v2'
    assert fingerprint_scheme(None) is None
    assert same_dataset(old, old) is True
    assert same_dataset('v2:aa:' + old, 'v2:bb:' + old) is False
    # Before v2, against v2: by the labels only, so never True.
    assert same_dataset(old, 'v2:aa:' + old) is None
    other = hashlib.sha1(labels[::-1].tobytes()).hexdigest()[:16]
    assert same_dataset(old, 'v2:aa:' + other) is False
    assert same_dataset(old, 'v2:aa:') is None  # multi-label: no labels
    assert same_dataset(None, 'v2:aa:') is None
