"""Bad input gets a clear error naming the option, before training."""
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from kcd_mm import KCDHook
from kcd_mm.testing import make_image_folder, tiny_kcd_config, tiny_kd_config


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad_input_data')
    return make_image_folder(str(root), num_images=24, num_classes=3, size=16)


def _runner(cfg, tmp_path):
    cfg = Config(cfg)
    cfg.work_dir = str(tmp_path / 'work')
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('kwargs, message', [
    (dict(theta=0.0), 'theta=0.0 must lie in'),
    (dict(theta=1.5), 'theta=1.5 must lie in'),
    (dict(stage_epochs=0), 'stage_epochs=0 must be'),
    (dict(num_steps=0), 'num_steps=0'),
    (dict(lam_range=(0.9, 0.2)), 'lam_range'),
    (dict(score_exponent=-1), 'score_exponent'),
    (dict(summary=True), "write summary='stage' for that"),
    (dict(summary='stages'), "summary='stages' must be 'persistent'"),
    (dict(summary_terms=0), 'summary_terms=0 must be'),
])
def test_option_errors_at_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KCDHook(**kwargs)


@pytest.mark.parametrize('case, message', [
    ('no_hook', 'KCDSampler is driven by KCDHook'),
    ('empty_kept_set', 'theta=0.01 would keep 0 of 24'),  # 24, 13, 2, 0
    ('no_sample_idx', 'sample_idx'),
    ('concat', 'ConcatDataset'),
    ('bad_value', "value='confidence'"),
    # Two recording wrappers: which values rank the samples is ambiguous.
    ('two_recording_losses', 'one recording ValueWeightedLoss, found 2'),
])
def test_run_errors_before_any_update(data_root, tmp_path, case, message):
    cfg = tiny_kcd_config(data_root, max_epochs=4, summary=False,
                          theta=0.01 if case == 'empty_kept_set' else 0.5,
                          num_steps=2)
    loader = cfg['train_dataloader']
    if case == 'no_hook':
        cfg['custom_hooks'] = []
    if case == 'no_sample_idx':
        loader['dataset']['pipeline'][-1]['meta_keys'] = ('img_path', )
    if case == 'concat':
        loader['dataset'] = dict(type='ConcatDataset',
                                 datasets=[loader['dataset']] * 2)
    if case == 'bad_value':
        cfg['model']['distiller']['distill_losses']['loss_kl'][
            'value'] = 'confidence'
    if case == 'two_recording_losses':
        losses = cfg['model']['distiller']['distill_losses']
        losses['loss_kl2'] = dict(losses['loss_kl'])
        mappings = cfg['model']['distiller']['loss_forward_mappings']
        mappings['loss_kl2'] = dict(mappings['loss_kl'])
    runner = None
    with pytest.raises((TypeError, ValueError, KeyError, RuntimeError),
                       match=message):
        runner = _runner(cfg, tmp_path)  # a bad value fails here
        runner.train()
    assert runner is None or runner.iter == 0  # no update was made


def test_non_finite_values_are_skipped_and_counted(data_root, tmp_path):
    """NaN student logits on one sample a batch: its value is skipped and
    counted; training goes on as plain mmengine would (loss NaN)."""
    cfg = tiny_kcd_config(data_root, max_epochs=2)
    runner = _runner(cfg, tmp_path)

    def poison(module, args, out):
        out = out.clone()
        out[0] = float('nan')  # first sample of every batch
        return out

    # prepend: before MMRazor's recorder hook reads the output
    runner.model.architecture.head.fc.register_forward_hook(
        poison, prepend=True)
    runner.train()
    record = runner.hooks[[type(h) for h in runner.hooks].index(
        KCDHook)].state.records[0]
    assert record.values_skipped == 3  # 3 batches of 8
    assert record.values_recorded == 21


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f'touch {self.marker}', )


def test_malicious_teacher_checkpoint_is_refused(data_root, tmp_path):
    marker = str(tmp_path / 'pwned')
    evil = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': {}, 'meta': _Payload(marker)}, evil,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    cfg = tiny_kd_config(data_root, num_classes=3, teacher_ckpt=evil)
    with pytest.raises(Exception, match='(?i)weights.only|unpickl|global'):
        _runner(cfg, tmp_path)
    assert not osp.exists(marker)
