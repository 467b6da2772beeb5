"""Real tiny KCD runs through mmengine's Runner and tools/train.py."""
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from kcd_mm.testing import make_image_folder, tiny_kcd_config, write_config
from helpers import load_checkpoint, read_log, run_tool, stage_records

N, BATCH = 60, 8


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('kcd_data')
    return make_image_folder(str(root), num_images=N, num_classes=3, size=16)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_train_tool_condenses_at_every_boundary(data_root, tmp_path):
    cfg = write_config(tiny_kcd_config(data_root), str(tmp_path / 'kcd.py'))
    work_dir = str(tmp_path / 'work')
    out = run_tool(['tools/train.py', cfg, '--work-dir', work_dir]).stdout
    stages = stage_records(work_dir)
    # theta .5, K 3: step floor(60 * .5 / 3) = 10 per stage, floor 30.
    assert [s['stage'] for s in stages] == [1, 2, 3]
    assert [s['epoch'] for s in stages] == [1, 2, 3]
    assert [s['kept'] for s in stages] == [50, 40, 30]
    assert [s['blended'] for s in stages] == [10, 10, 10]
    assert [s['dropped'] for s in stages] == [10, 20, 30]
    assert [s['sample_iters'] for s in stages] == [60, 110, 150]
    assert [s['full_kd_sample_iters'] for s in stages] == [60, 120, 180]
    assert [s['values_recorded'] for s in stages] == [60, 50, 40]
    for s in stages:
        assert s['num_samples'] == N and s['values_skipped'] == 0
        assert 0 < s['value_mean'] <= math.log(3) and s['value_std'] >= 0
        assert 0 <= s['estep_seconds'] < 1
    assert 'KCD stage 3 after epoch 3: kept 30/60 (50.0%)' in out
    # Training went on after the last condensation, on 30 samples.
    ckpt = load_checkpoint(osp.join(work_dir, 'epoch_4.pth'))
    state = ckpt['kcd_state']
    assert state['stage'] == 3 and state['sample_iters'] == 180
    assert state['kept'].numel() == 30
    assert int(state['bank']['visits'].sum()) == 180
    assert ckpt['meta']['iter'] == sum(
        math.ceil(n / BATCH) for n in (60, 50, 40, 30))


@pytest.mark.slow
def test_runner_eta_and_sampler_follow_the_schedule(data_root, tmp_path):
    """In-process: max_iters (the logger's ETA) is the real total."""
    cfg = Config(tiny_kcd_config(data_root, theta=0.7, summary=False))
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.train_loop.max_iters == runner.iter
    # theta .7, K 3: step floor(60 * .3 / 3) = 6, floor 42.
    assert [s['kept'] for s in stage_records(cfg.work_dir)] == [54, 48, 42]
    assert [s['blended'] for s in stage_records(cfg.work_dir)] == [0, 0, 0]
    sampler = runner.train_dataloader.sampler
    assert sampler.kept_size == 42 and len(runner.train_dataloader) == 6


@pytest.mark.slow
def test_the_log_ends_with_the_run_share_of_kd(data_root, tmp_path):
    """The last E-step's line gives the share so far (after epoch 3);
    the run's last KCD line gives the whole run's, epoch 4 included."""
    cfg = Config(tiny_kcd_config(data_root, theta=0.7, summary=False))
    cfg.work_dir = str(tmp_path / 'work')
    Runner.from_cfg(cfg).train()
    # kept 60, 54, 48, 42 over the four epochs; KD trains 4 x 60.
    kcd_lines = [line.split(' - ')[-1] for line in
                 read_log(cfg.work_dir).splitlines() if ' - KCD' in line]
    assert 'samples trained 162 = 0.900 of KD' in kcd_lines[-2]
    assert kcd_lines[-1] == ('KCD run done: 204 samples trained = 0.850 of '
                             "KD's 240 over 4 epochs.")


@pytest.mark.slow
def test_cpu_threads_are_chosen_once_per_process(data_root, tmp_path,
                                                 monkeypatch):
    """Without OMP_NUM_THREADS, KCDHook gives torch a thread per idle
    core, unless the process already chose (kcd_mm's tools do)."""
    from kcd_mm import cpu_threads
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(cpu_threads, '_chosen', None)
    lines = []
    try:
        for run in ('first', 'second'):
            cfg = Config(tiny_kcd_config(data_root, max_epochs=2,
                                         summary=False))
            cfg.work_dir = str(tmp_path / run)
            Runner.from_cfg(cfg).train()
            lines.append([line for line in read_log(cfg.work_dir).split(
                '\n') if 'CPU run:' in line])
            if run == 'first':
                assert cpu_threads.chosen() == torch.get_num_threads()
    finally:
        torch.set_num_threads(1)  # conftest's, for the tests that follow
    assert len(lines[0]) == 1 and 'torch thread(s) (' in lines[0][0]
    assert lines[1] == []


@pytest.mark.parametrize('broken, message', [
    (dict(sampler='DefaultSampler'), 'KCDSampler'),
    (dict(unwrapped=True), 'KnowledgeSummaryDataset'),
    (dict(stage_epochs=9), 'stage_epochs=9 exceeds'),
    # Unwrapped, KCD reads the classifier: one that gives no logits stops.
    (dict(plain_loss=True, classifier='neck'), "classifier='head.fc'"),
])
@pytest.mark.slow
def test_misconfiguration_stops_before_training(data_root, tmp_path, broken,
                                                message):
    cfg = tiny_kcd_config(data_root, stage_epochs=broken.get('stage_epochs',
                                                             1))
    if 'sampler' in broken:
        cfg['train_dataloader']['sampler'] = dict(type='DefaultSampler')
    if 'unwrapped' in broken:
        loader = cfg['train_dataloader']
        loader['dataset'] = loader['dataset']['dataset']
    if 'plain_loss' in broken:
        losses = cfg['model']['distiller']['distill_losses']
        losses['loss_kl'] = losses['loss_kl']['loss']
    if 'classifier' in broken:
        cfg['custom_hooks'][0]['classifier'] = broken['classifier']
    cfg = Config(cfg)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    with pytest.raises((TypeError, ValueError), match=message):
        runner.train()
    assert runner.iter == 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_restores_state_and_keeps_one_record_per_stage(
        data_root, tmp_path):
    cfg = tiny_kcd_config(data_root)
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    work_dir = str(tmp_path / 'work')
    run_tool(['tools/train.py', path, '--work-dir', work_dir])
    full = stage_records(work_dir)
    snapshots = sorted(os.listdir(osp.join(work_dir, 'kcd_stages')))
    assert snapshots == ['stage_001.npz', 'stage_002.npz', 'stage_003.npz']
    stage2 = np.load(osp.join(work_dir, 'kcd_stages', 'stage_002.npz'))
    assert len(stage2['kept']) == 40 and len(stage2['scores']) == N
    # Resume from epoch 2, in the same work dir, as after a crash there.
    out = run_tool(['tools/train.py', path, '--work-dir', work_dir,
                    '--resume', osp.join(work_dir, 'epoch_2.pth')]).stdout
    assert 'KCD resumed at stage 2: kept 40/60' in out
    resumed = stage_records(work_dir)
    assert [s['stage'] for s in resumed] == [1, 2, 3]  # no duplicate
    assert resumed[:2] == full[:2]
    assert resumed[2]['sample_iters'] == 150 and resumed[2]['kept'] == 30
    ckpt = load_checkpoint(osp.join(work_dir, 'epoch_4.pth'))
    assert ckpt['kcd_state']['sample_iters'] == 180


def _two_epoch_run(data_root, tmp_path) -> str:
    """A finished 2-epoch KCD run; returns its work dir."""
    path = write_config(tiny_kcd_config(data_root, max_epochs=2),
                        str(tmp_path / 'kcd.py'))
    work_dir = str(tmp_path / 'work')
    run_tool(['tools/train.py', path, '--work-dir', work_dir])
    return work_dir


def _resume_on(data_root, tmp_path, work_dir, name, check=True):
    """Resume ``work_dir``'s epoch 2 for 3 epochs on ``data_root``."""
    path = write_config(tiny_kcd_config(data_root, max_epochs=3),
                        str(tmp_path / f'{name}.py'))
    return run_tool(['tools/train.py', path, '--work-dir', work_dir,
                     '--resume', osp.join(work_dir, 'epoch_2.pth')],
                    check=check)


@pytest.mark.slow
@pytest.mark.parametrize('images, classes, message', [
    (N + 6, 3, f'training set of {N} samples, this run\'s has {N + 6}'),
    # Same size, other labels: a size check alone would miss it.
    (N, 2, 'another training set of the same size'),
])
def test_resume_with_another_dataset_is_refused(data_root, tmp_path, images,
                                                classes, message):
    work_dir = _two_epoch_run(data_root, tmp_path)
    other = make_image_folder(str(tmp_path / 'other'), images, classes, 16)
    proc = _resume_on(other, tmp_path, work_dir, 'other', check=False)
    assert proc.returncode != 0
    assert message in proc.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tensorboard_shows_stage_scalars_and_value_histograms(
        data_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import \
        EventAccumulator
    cfg = tiny_kcd_config(data_root)
    cfg['visualizer'] = dict(
        type='mmpretrain.UniversalVisualizer',
        vis_backends=[dict(type='TensorboardVisBackend')])
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    work_dir = str(tmp_path / 'work')
    run_tool(['tools/train.py', path, '--work-dir', work_dir])
    events = [
        osp.join(root, f) for root, _, files in os.walk(work_dir)
        for f in files if f.startswith('events.out.tfevents')
    ]
    assert len(events) == 1
    acc = EventAccumulator(events[0], size_guidance={'histograms': 0})
    acc.Reload()
    kept = acc.Scalars('kcd/kept')
    assert [(e.step, e.value) for e in kept] == [(1, 50), (2, 40), (3, 30)]
    stages = stage_records(work_dir)
    means = [e.value for e in acc.Scalars('kcd/value_mean')]
    assert means == pytest.approx([s['value_mean'] for s in stages])
    dropped = acc.Histograms('kcd/value_dropped')
    assert [h.step for h in dropped] == [1, 2, 3]
    assert [h.histogram_value.num for h in dropped] == [10, 20, 30]
    assert [h.histogram_value.num
            for h in acc.Histograms('kcd/value_kept')] == [50, 40, 30]


@pytest.mark.slow
def test_class_min_keep_protects_every_class(data_root, tmp_path):
    """theta .5 with a class floor of .5: each class keeps >= 10 of 20."""
    cfg = Config(tiny_kcd_config(data_root, summary=False,
                                 class_min_keep=0.5))
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    labels = torch.tensor(runner.train_dataloader.dataset.get_gt_labels())
    for name in sorted(os.listdir(osp.join(cfg.work_dir, 'kcd_stages'))):
        kept = np.load(osp.join(cfg.work_dir, 'kcd_stages', name))['kept']
        per_class = torch.bincount(labels[torch.from_numpy(kept).long()],
                                   minlength=3)
        assert per_class.min() >= 10, (name, per_class)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_load_from_starts_kcd_afresh_and_extension_runs_skipped_estep(
        data_root, tmp_path):
    work_dir = _two_epoch_run(data_root, tmp_path)
    assert [s['epoch'] for s in stage_records(work_dir)] == [1]
    # Extend the finished run to 4 epochs: epoch 2 is a boundary now.
    longer = write_config(tiny_kcd_config(data_root, max_epochs=4),
                          str(tmp_path / 'kcd4.py'))
    out = run_tool(['tools/train.py', longer, '--work-dir', work_dir,
                    '--resume', osp.join(work_dir, 'epoch_2.pth')]).stdout
    assert 'E-step after epoch 2 that the shorter run skipped' in out
    stages = stage_records(work_dir)
    assert [s['epoch'] for s in stages] == [1, 2, 3]
    assert [s['kept'] for s in stages] == [50, 40, 30]
    # load_from: the weights only; KCD starts afresh on another dataset.
    smaller = make_image_folder(str(tmp_path / 'smaller'), 48, 3, 16)
    fresh = tiny_kcd_config(smaller, max_epochs=2)
    fresh['load_from'] = osp.join(work_dir, 'epoch_4.pth')
    fresh_path = write_config(fresh, str(tmp_path / 'fresh.py'))
    fresh_dir = str(tmp_path / 'fresh')
    run_tool(['tools/train.py', fresh_path, '--work-dir', fresh_dir])
    assert [(s['stage'], s['num_samples'], s['kept'])
            for s in stage_records(fresh_dir)] == [(1, 48, 40)]
