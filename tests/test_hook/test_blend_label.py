"""blend_label='mix': a blended sample trains on its images' labels.

Unit checks of the compositions the labels come from, then real runs
(in-memory persistent, file-dataset stage and persistent) whose batches
are checked sample by sample against the summary's keys.
"""
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from kcd_mm import KCDHook
from kcd_mm.core.condensation import Condensation
from kcd_mm.core.options import KCDOptions
from kcd_mm.core.sample_key import terms_of
from kcd_mm.core.summary import ImageSummary
from kcd_mm.testing import (add_kcd, make_image_folder, make_mnist_folder,
                            tiny_kcd_config, tiny_kd_config, use_mnist)
from helpers import kcd_hook

N = 60


def _pairs(rng, n, kept_size, num):
    order = torch.from_numpy(rng.permutation(n))
    kept = order[:kept_size]
    return Condensation(kept=kept, tail=kept[-num:].flip(0),
                        lost=order[kept_size:kept_size + num],
                        lam=torch.linspace(1.0, 0.7, num))


def test_image_terms_say_what_each_persistent_image_is_made_of():
    """Across stages of cumulative blends, each stored uint8 image is the
    weighted sum of the originals its terms name, within the truncation
    (under one grey level per blend it went through)."""
    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (40, 6, 6), dtype=np.uint8)
    summary = ImageSummary((0.7, 1.0), track_terms=True)
    for stage in range(5):
        summary.update(_pairs(rng, 40, 30 - 2 * stage, 6),
                       lambda idx: [originals[i] for i in idx])
    assert len(summary.images) > 12
    deep = 0
    for i, img in summary.images.items():
        terms = summary.terms[i]
        assert abs(sum(w for _, w in terms) - 1.0) < 1e-9
        exact = sum(w * originals[j].astype(np.float64) for j, w in terms)
        assert np.abs(img - exact).max() < 5, i  # <= 5 blends, < 1 each
        deep += len(terms) > 2
    assert deep > 0  # some partners carried earlier blends
    state = summary.state_dict()
    again = ImageSummary((0.7, 1.0), track_terms=True)
    again.load_state_dict(state)
    assert again.terms == summary.terms
    assert again.payloads(None).keys() == summary.payloads(None).keys()
    own = ImageSummary((0.7, 1.0))
    own.load_state_dict(state)  # 'own' ignores the terms
    assert own.terms is None
    del state['term_index'], state['term_weight']
    with pytest.raises(ValueError, match="blend_label='own'"):
        ImageSummary((0.7, 1.0), track_terms=True).load_state_dict(state)


def test_key_terms_of_every_key_form():
    assert terms_of(3, ()) == ((3, 1.0), )
    assert terms_of(3, (7, 0.75)) == ((3, 0.75), (7, 0.25))
    img = np.zeros((2, 2), np.uint8)
    assert terms_of(3, (img, ((3, 0.8), (9, 0.2)))) == ((3, 0.8), (9, 0.2))
    assert terms_of(3, (((3, 0.6), (1, 0.4)), )) == ((3, 0.6), (1, 0.4))
    with pytest.raises(ValueError, match='composition'):
        terms_of(3, (img, ))


def test_bad_blend_label_is_refused_before_training():
    with pytest.raises(ValueError, match="blend_label='soft'"):
        KCDOptions(blend_label='soft')
    with pytest.raises(ValueError, match='blends none'):
        KCDOptions(blend_label='mix', summary=False)
    with pytest.raises(ValueError, match='blends none'):
        KCDHook(blend_label='mix', strategy='random')


class ScoreProbe(Hook):
    """Checks every training sample's gt_score against its sampler key:
    one-hot at its own label when plain, the labels of its images in their
    weights when the summary blends it."""
    priority = 'LOW'

    def __init__(self):
        self.mixed = self.plain = 0

    def before_train_epoch(self, runner):
        self._payloads = kcd_hook(runner).state.sampler_args()[1]

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        dataset = runner.train_dataloader.dataset
        for sample in data_batch['data_samples']:
            idx = sample.sample_idx
            terms = terms_of(idx, self._payloads.get(idx, ()))
            want = torch.zeros(3)
            for j, w in terms:
                want[dataset._label_of(j)] += w
            assert torch.allclose(sample.gt_score, want, atol=1e-6), (
                idx, sample.gt_score, want)
            assert int(sample.gt_label) == dataset._label_of(idx)
            if float(want.max()) < 1.0:
                self.mixed += 1
            else:
                self.plain += 1


def _run(cfg, work_dir):
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    runner = Runner.from_cfg(cfg)
    probe = ScoreProbe()
    runner.register_hook(probe)
    runner.train()
    return runner, probe


@pytest.mark.slow
def test_persistent_in_memory_run_trains_on_mixed_labels(tmp_path):
    data = make_mnist_folder(str(tmp_path / 'mnist'), N, 3, 16)
    cfg = add_kcd(tiny_kd_config(data, num_classes=3, in_channels=1,
                                 max_epochs=4, batch_size=8),
                  theta=0.5, num_steps=3, summary='persistent',
                  blend_label='mix', wrap_losses=False)
    cfg['train_cfg']['val_interval'] = 4
    use_mnist(cfg, data)
    runner, probe = _run(cfg, str(tmp_path / 'run'))
    summary = kcd_hook(runner).state.summary
    assert set(summary.terms) == set(summary.images)
    assert probe.mixed > 0 and probe.plain > 0


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize('summary,workers', [('stage', 1),
                                             ('persistent', 0)])
def test_file_dataset_run_trains_on_mixed_labels(tmp_path, summary, workers):
    """Also in a persistent worker: the mixing is the dataset's, set
    before the loader starts its workers."""
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16, channels=1)
    cfg = tiny_kcd_config(data, summary=summary, num_steps=3,
                          blend_label='mix', wrap_losses=False)
    if workers:
        cfg['train_dataloader'].update(num_workers=workers,
                                       persistent_workers=True)
    runner, probe = _run(cfg, str(tmp_path / 'run'))
    assert probe.mixed > 0 and probe.plain > 0
    assert kcd_hook(runner).state.records[-1].blended > 0
