"""summary='persistent' in real runs: the reference's images, trained on,
checkpointed and resumed; the file-dataset version close to them."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from kcd_mm.core.condensation import Condensation
from kcd_mm.core.summary import ImageSummary
from kcd_mm.records import CKPT_KEY, read_snapshots
from kcd_mm.testing import (add_kcd, make_image_folder, make_mnist_folder,
                            tiny_kcd_config, tiny_kd_config, use_mnist)
from helpers import kcd_hook, load_checkpoint, read_log

N = 60


class InputProbe(Hook):
    """Counts the training inputs of samples with a persistent image that
    show exactly that image (or its horizontal flip, the one augmentation
    of the tiny pipeline)."""
    priority = 'LOW'

    def __init__(self):
        self.same = self.other = 0

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        images = kcd_hook(runner).state.summary.images
        for img, sample in zip(data_batch['inputs'],
                               data_batch['data_samples']):
            want = images.get(sample.sample_idx)
            if want is None:
                continue
            got = img[0].numpy()
            if np.array_equal(got, want) or np.array_equal(got, want[:, ::-1]):
                self.same += 1
            else:
                self.other += 1


def _mnist_cfg(data, work_dir, max_epochs=4, **kwargs):
    cfg = add_kcd(tiny_kd_config(data, num_classes=3, in_channels=1,
                                 max_epochs=max_epochs, batch_size=8),
                  theta=0.5, num_steps=3, summary='persistent', **kwargs)
    cfg['train_cfg']['val_interval'] = max_epochs
    cfg['default_hooks']['logger']['interval'] = 50
    use_mnist(cfg, data)
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    return cfg


def _idx_images(data):
    with open(osp.join(data, 'train-images-idx3-ubyte'), 'rb') as f:
        raw = f.read()
    n, h, w = np.frombuffer(raw[4:16], '>i4')
    return np.frombuffer(raw[16:], np.uint8).reshape(n, h, w)


def _replay(images, work_dir, stages):
    """The reference's rule over the stage snapshots, from the originals."""
    data = torch.from_numpy(images.copy())
    snapshots = read_snapshots(work_dir)
    assert [s.stage for s in snapshots] == list(range(1, stages + 1))
    for snap in snapshots:
        tail, lost = snap.tail.tolist(), snap.lost.tolist()
        num = len(tail)
        k = torch.arange(num)
        rate = (1 - 0.7) * ((num * torch.ones(num) - k) / num) + 0.7
        mixed = [data[t].unsqueeze(0) * rate[i] + data[s].unsqueeze(0) *
                 (1 - rate[i]) for i, (t, s) in enumerate(zip(tail, lost))]
        data[tail] = torch.tensor(torch.cat(mixed), dtype=torch.uint8)
    return data.numpy()


def _saved_images(path):
    saved = load_checkpoint(path)[CKPT_KEY]['summary']
    assert saved['kind'] == 'images'
    return dict(zip(saved['indices'].tolist(), saved['images'].numpy()))


@pytest.fixture(scope='module')
def mnist(tmp_path_factory):
    return make_mnist_folder(str(tmp_path_factory.mktemp('mnist')), N, 3, 16)


@pytest.mark.slow
def test_persistent_images_are_the_reference_and_trained_on(mnist, tmp_path):
    work = str(tmp_path / 'run')
    cfg = _mnist_cfg(mnist, work)
    probe = InputProbe()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(probe)
    runner.train()
    saved = _saved_images(osp.join(work, 'epoch_4.pth'))
    replay = _replay(_idx_images(mnist), work, 3)
    # Blends accumulate: later stages blend samples blended before.
    assert len(saved) > 10
    for i in range(N):
        assert np.array_equal(saved.get(i, replay[i]), replay[i]), i
    changed = [i for i in range(N)
               if not np.array_equal(replay[i], _idx_images(mnist)[i])]
    assert set(changed) <= set(saved)  # lam 1.0 may leave one unchanged
    assert probe.same > 0 and probe.other == 0
    stages = [r.summary for r in kcd_hook(runner).state.records]
    assert [s['mode'] for s in stages] == ['persistent'] * 3
    assert stages[-1]['ever_blended'] == len(saved)
    assert 'persistent summary' in read_log(work)


@pytest.mark.slow
def test_persistent_images_survive_a_resume(mnist, tmp_path):
    full = str(tmp_path / 'full')
    Runner.from_cfg(_mnist_cfg(mnist, full)).train()
    resumed = str(tmp_path / 'resumed')
    cfg = _mnist_cfg(mnist, resumed)
    cfg.resume, cfg.load_from = True, osp.join(full, 'epoch_2.pth')
    Runner.from_cfg(cfg).train()
    want = _saved_images(osp.join(full, 'epoch_4.pth'))
    got = _saved_images(osp.join(resumed, 'epoch_4.pth'))
    assert want.keys() == got.keys()
    assert all(np.array_equal(want[i], got[i]) for i in want)


@pytest.mark.slow
def test_file_dataset_terms_match_the_in_memory_images(tmp_path):
    """The same images as PNG files: each persistent sample, as the
    wrapper loads it from its terms, within the bound of the exact uint8
    replay of the same pairs."""
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16, channels=1)
    work = str(tmp_path / 'run')
    cfg = Config(tiny_kcd_config(data, summary='persistent', num_steps=3))
    cfg.work_dir = work
    runner = Runner.from_cfg(cfg)
    runner.train()
    state = kcd_hook(runner).state
    dataset = runner.train_dataloader.dataset
    originals = [dataset._loaded(i)['img'] for i in range(N)]
    exact = ImageSummary((0.7, 1.0))
    worst = 0.0
    for snap, record in zip(read_snapshots(work), state.records):
        pairs = Condensation(*(torch.from_numpy(a) for a in (
            snap.kept, snap.tail, snap.lost, snap.lam)))
        exact.update(pairs, lambda idx: [originals[i] for i in idx])
        worst = max(worst, record.summary['max_weight_dropped'])
    terms = state.summary.terms
    assert terms.keys() == exact.images.keys() and len(terms) > 10
    for i, t in terms.items():
        got = dataset._combined(i, t)[0]['img']
        diff = np.abs(got.astype(int) - exact.images[i].astype(int)).max()
        assert diff <= 3 + 2 * 255 * worst, i
    record = state.records[-1].summary
    assert record['loads_per_sample'] > 1.0
