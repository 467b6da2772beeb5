"""Edges where KCD used to train wrong or lose work without a word.

Each test drives a real tiny Runner (or KCDState for pure cases) into one
edge and checks that KCD refuses it before any update, with the option
and the fix named, or now handles it correctly.
"""
import json

import pytest
import torch
from mmcv.transforms import BaseTransform
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import TRANSFORMS

from kcd_mm import KCDHook, KCDOptions, KCDState
from kcd_mm.core.diagnostics import degenerate_stage
from kcd_mm.testing import make_image_folder, tiny_kcd_config
from helpers import kcd_hook, load_checkpoint, read_log

N = 24


@TRANSFORMS.register_module()
class RenumberSamples(BaseTransform):
    """Test-only: a pipeline step that changes ``sample_idx``."""

    def __init__(self, mode: str = 'offset') -> None:
        self.mode = mode

    def transform(self, results: dict) -> dict:
        idx = results['sample_idx']
        results['sample_idx'] = idx + 5 if self.mode == 'offset' else (
            N - 1 - idx)
        return results


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('edge_data')
    return make_image_folder(str(root), num_images=N, num_classes=3, size=16)


def _runner(cfg, work_dir):
    cfg = Config(cfg)
    cfg.work_dir = str(work_dir)
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(theta='0.5'), TypeError, "theta='0.5' must be a number"),
    (dict(lam_range=(0.7, 0.8, 1.0)), TypeError, 'must be two numbers'),
    (dict(lam_range=0.7), TypeError, 'must be two numbers'),
    (dict(summary='no'), ValueError, "summary='no' must be 'persistent'"),
    (dict(stage_epochs=2.0), TypeError, 'stage_epochs=2.0 must be an int'),
    (dict(score_exponent=float('nan')), ValueError, 'score_exponent=nan'),
    (dict(score_exponent=float('inf')), ValueError, 'score_exponent=inf'),
    (dict(score_ref_epochs=float('nan')), ValueError, 'score_ref_epochs='),
    (dict(score_ref_epochs=float('inf')), ValueError, 'score_ref_epochs='),
    (dict(class_min_keep=float('nan')), ValueError, 'class_min_keep=nan'),
    (dict(record_file='logs/x.jsonl'), ValueError, 'plain file name'),
    (dict(record_file='/abs/kcd.jsonl'), ValueError, 'plain file name'),
    (dict(record_file='kcd_stages'), ValueError, 'plain file name'),
])
def test_option_types_and_values_are_checked_at_build(
        kwargs, error, message):
    with pytest.raises(error, match=message):
        KCDHook(**kwargs)


@pytest.mark.parametrize('case, message', [
    ('two_hooks', 'holds 2 KCDHooks'),
    ('repeat', 'cannot condense a RepeatDataset'),
    ('class_balanced', 'cannot condense a ClassBalancedDataset'),
    ('drop_last', 'drop_last=True with batch_size=8 would run no iter'),
    ('zero_step', 'drops floor'),
    ('offset_idx', 'sample_idx == position'),
    ('reversed_idx', 'sample_idx == position'),
])
def test_refused_before_any_update(data_root, tmp_path, case, message):
    kwargs = dict(theta=0.5, num_steps=2)
    if case == 'zero_step':
        kwargs = dict(theta=0.9, num_steps=3)  # floor(24 * 0.1 / 3) = 0
    if case == 'drop_last':
        kwargs = dict(theta=0.25, num_steps=1)  # 6 kept < batch 8
    cfg = tiny_kcd_config(data_root, max_epochs=2, summary=False, **kwargs)
    loader = cfg['train_dataloader']
    if case == 'two_hooks':
        cfg['custom_hooks'].append(dict(cfg['custom_hooks'][0]))
    if case in ('repeat', 'class_balanced'):
        wrapper = dict(type='RepeatDataset', times=2) if case == 'repeat' \
            else dict(type='ClassBalancedDataset', oversample_thr=0.5)
        loader['dataset'] = dict(wrapper, dataset=loader['dataset'])
    if case == 'drop_last':
        loader['drop_last'] = True
    if case.endswith('_idx'):
        loader['dataset']['pipeline'].insert(
            -1, dict(type='RenumberSamples', mode=case.split('_')[0]))
    runner = _runner(cfg, tmp_path / 'work')
    with pytest.raises((TypeError, ValueError), match=message):
        runner.train()
    assert runner.iter == 0  # no update was made


def _poison(runner, fill):
    """Make the student's class logits ``fill(logits)`` from now on."""

    def hook(module, args, out):
        return fill(out.clone())

    runner.model.architecture.head.fc.register_forward_hook(
        hook, prepend=True)  # before MMRazor's recorder reads the output


@pytest.mark.slow
def test_masked_class_logits_give_finite_values(data_root, tmp_path):
    """-inf logits (an ignored class): entropy counts 0 log 0 as 0."""
    cfg = tiny_kcd_config(data_root, max_epochs=2, num_steps=2)
    runner = _runner(cfg, tmp_path / 'work')

    def mask_last_class(out):
        out[:, -1] = float('-inf')
        return out

    _poison(runner, mask_last_class)
    runner.train()
    record = kcd_hook(runner).state.records[0]
    assert record.values_skipped == 0 and record.values_recorded == N
    assert 0 < record.value_mean <= torch.log(torch.tensor(2.0))


def test_an_estep_without_finite_values_refuses(data_root, tmp_path):
    cfg = tiny_kcd_config(data_root, max_epochs=2, num_steps=2)
    runner = _runner(cfg, tmp_path / 'work')
    _poison(runner, lambda out: out.fill_(float('nan')))
    with pytest.raises(RuntimeError, match='every knowledge value'):
        runner.train()
    assert kcd_hook(runner).state.stage == 0  # nothing was condensed


def test_ties_are_broken_by_a_seeded_permutation_not_by_index():
    """All-equal values on class-sorted data: the kept half still holds
    every class (by index it would be classes 0 and 1 only)."""
    labels = torch.arange(4).repeat_interleave(25)  # sorted, 4 classes
    kept = []
    for seed in (0, 1):
        state = KCDState(100, KCDOptions(stage_epochs=1, theta=0.5,
                                         num_steps=1), seed=seed,
                         max_epochs=3)
        state.bank.record(torch.arange(100), torch.ones(100))
        state.merge()
        state.estep(1)
        kept.append(state.kept)
        assert set(labels[state.kept].tolist()) == {0, 1, 2, 3}
    assert not torch.equal(torch.sort(kept[0]).values,
                           torch.sort(kept[1]).values)


@pytest.mark.slow
def test_resume_under_another_strategy_drops_infobatch_weights(
        data_root, tmp_path):
    work = tmp_path / 'infobatch'
    # theta .8: KCD's budget leaves InfoBatch r < 1, so it up-weights.
    cfg = tiny_kcd_config(data_root, max_epochs=4, summary=False,
                          theta=0.8, strategy='infobatch')
    _runner(cfg, work).train()
    ckpt = load_checkpoint(str(work / 'epoch_2.pth'))
    assert ckpt['kcd_state']['selector']['state']['upweighted'] is not None
    cfg = tiny_kcd_config(data_root, max_epochs=4, summary=False,
                          stage_epochs=1, theta=0.5, num_steps=2)
    cfg.update(resume=True, load_from=str(work / 'epoch_2.pth'))
    runner = _runner(cfg, tmp_path / 'kcd')
    runner.train()
    assert kcd_hook(runner).state.sample_weights(torch.arange(N)) is None
    assert "written with strategy='infobatch'" in read_log(tmp_path / 'kcd')
    # The resumed run's checkpoints carry none of InfoBatch's state.
    saved = load_checkpoint(str(tmp_path / 'kcd' / 'epoch_4.pth'))['kcd_state']
    assert saved['selector'] == dict(type='kcd', state={})
    assert 'upweighted' not in saved and 'latest' not in saved['bank']


@pytest.mark.slow
def test_resume_messages_name_what_changed(data_root, tmp_path):
    work = tmp_path / 'first'
    _runner(tiny_kcd_config(data_root, max_epochs=3, stage_epochs=2,
                            theta=0.5, num_steps=2), work).train()
    # Resume after epoch 1 with stage_epochs=1 and another value measure:
    # epoch 1 is now a boundary (no shorter run was extended).
    cfg = tiny_kcd_config(data_root, max_epochs=3, stage_epochs=1,
                          theta=0.5, num_steps=2, value='ce')
    cfg.update(resume=True, load_from=str(work / 'epoch_1.pth'))
    resumed = tmp_path / 'resumed'
    _runner(cfg, resumed).train()
    log = read_log(resumed)
    assert 'the current options schedule there' in log
    assert 'shorter run skipped' not in log
    assert "'value': ('entropy', 'ce')" in log
    assert "'stage_epochs': (2, 1)" in log


@pytest.mark.slow
def test_a_stage_that_trains_no_classifier_is_named(data_root, tmp_path):
    """A frozen student head (as in ABLoss stage 1): the E-step warns with
    the likely cause and the record says why; a healthy stage says None."""
    cfg = tiny_kcd_config(data_root, max_epochs=3, num_steps=2)
    runner = _runner(cfg, tmp_path / 'work')
    runner.model.architecture.head.fc.requires_grad_(False)
    runner.train()
    records = kcd_hook(runner).state.records
    assert [r.degenerate for r in records] == [
        'the student classifier did not change during the stage'] * 2
    log = read_log(tmp_path / 'work')
    assert 'a stage that trains no classifier' in log
    assert json.loads(open(str(tmp_path / 'work' / 'kcd_stages.jsonl')
                           ).readline())['degenerate'].startswith('the st')


def test_near_constant_values_are_named():
    assert degenerate_stage(1.0, 0.0005, True).startswith('the values are')
    assert degenerate_stage(1.0, 0.05, True) is None
    assert degenerate_stage(1.0, 0.05, None) is None  # no classifier found
