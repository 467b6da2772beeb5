"""KCD across 2 real processes (torchrun, gloo on CPU)."""
import os.path as osp

import pytest

from kcd_mm.testing import (add_kcd, make_image_folder, make_mnist_folder,
                            tiny_kcd_config, tiny_kd_config, use_mnist,
                            write_config)
from helpers import free_port, probe_env, read_jsonl, run_tool


def _probed_2_rank_run(cfg, tmp_path):
    """Train ``cfg`` on 2 gloo ranks with KCDProbeHook; return each rank's
    probe records (per-epoch ones, then the final one)."""
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(
        dict(type='mmrazor.KCDProbeHook', out_dir=str(tmp_path)))
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    work_dir = str(tmp_path / 'work')
    env = probe_env(PORT=str(free_port()))
    run_tool(['tools/dist_train.sh', path, '2', '--work-dir', work_dir],
             env=env)
    return [read_jsonl(osp.join(tmp_path, f'probe_rank{r}.jsonl'))
            for r in (0, 1)]


def _same_on_both_ranks(ranks, keys, epochs):
    """The per-epoch records of both ranks, checked equal on ``keys``."""
    per_epoch = [[r for r in lines if 'epoch' in r] for lines in ranks]
    assert len(per_epoch[0]) == len(per_epoch[1]) == epochs
    for a, b in zip(*per_epoch):
        for key in keys:
            assert a[key] == b[key], f'{key} differs at epoch {a["epoch"]}'
    return per_epoch


@pytest.mark.slow
def test_two_ranks_share_one_kcd_state(tmp_path):
    n = 60  # 3 classes, batch 8, 30 per rank: 4 iterations each
    data = make_image_folder(str(tmp_path / 'data'), n, 3, 16)
    ranks = _probed_2_rank_run(tiny_kcd_config(data, max_epochs=4),
                               tmp_path)
    work_dir = str(tmp_path / 'work')
    stages = read_jsonl(osp.join(work_dir, 'kcd_stages.jsonl'))
    assert [s['stage'] for s in stages] == [1, 2, 3]  # written once
    assert [s['kept'] for s in stages] == [50, 40, 30]
    # Both ranks' samples and values reached the E-step.
    assert [s['sample_iters'] for s in stages] == [60, 110, 150]
    assert [s['values_recorded'] for s in stages] == [60, 50, 40]

    epochs = _same_on_both_ranks(ranks, ('kept', 'tail', 'lost', 'visits'),
                                 4)
    for a, b in zip(*epochs):
        # The two shards cover the epoch's kept set, padding aside.
        shard_ids = {x if isinstance(x, int) else x[0]
                     for x in a['shard'] + b['shard']}
        kept_before = (set(range(n)) if a['epoch'] == 1 else set(
            epochs[0][a['epoch'] - 2]['kept']))
        assert shard_ids == kept_before
        assert len(a['shard']) == len(b['shard'])
    # Every visit on either rank was banked once.
    assert sum(epochs[0][-1]['visits']) == 60 + 50 + 40 + 30
    assert ranks[0][-1]['final_weights'] == ranks[1][-1]['final_weights']


@pytest.mark.slow
@pytest.mark.parametrize('strategy, diff_rank_seed', [('random', False),
                                                      ('infobatch', False),
                                                      ('per_epoch_random',
                                                       False),
                                                      ('random', True)])
def test_two_ranks_agree_on_comparison_strategies(strategy, diff_rank_seed,
                                                  tmp_path):
    """random and InfoBatch choose the same samples (and InfoBatch the same
    up-weighted ones) on every rank, from values merged over both; also
    when each rank seeds its RNGs differently (diff_rank_seed)."""
    n = 60
    data = make_image_folder(str(tmp_path / 'data'), n, 3, 16)
    # A mild schedule InfoBatch can meet (it drops below-mean samples only).
    cfg = tiny_kcd_config(data, max_epochs=4, theta=0.9, num_steps=1,
                          strategy=strategy, summary=False)
    cfg['randomness'] = dict(seed=0, diff_rank_seed=diff_rank_seed)
    ranks = _probed_2_rank_run(cfg, tmp_path)
    epochs = _same_on_both_ranks(
        ranks, ('kept', 'upweighted', 'visits', 'sample_iters'), 4)
    pruned = [e for e in epochs[0] if e['kept'] and len(e['kept']) < n]
    assert pruned, 'the strategy never pruned'
    if strategy == 'infobatch':
        assert any(e['upweighted'] for e in epochs[0])
    # KCD's budget, 60 + 55 + 54 + 54, with at most one padded sample an
    # epoch (an odd kept set split over 2 ranks).
    assert 223 <= epochs[0][-1]['sample_iters'] <= 227
    assert ranks[0][-1]['final_weights'] == ranks[1][-1]['final_weights']


@pytest.mark.slow
@pytest.mark.multiprocess
def test_round_up_false_on_two_ranks_is_refused(tmp_path):
    """Uneven shards would hang or abort the ranks' collectives."""
    data = make_image_folder(str(tmp_path / 'data'), 17, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=2, summary=False, num_steps=2)
    cfg['train_dataloader']['sampler']['round_up'] = False
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    out = run_tool(['tools/dist_train.sh', path, '2', '--work-dir',
                    str(tmp_path / 'work')],
                   env=dict(PORT=str(free_port())), timeout=120,
                   check=False)
    assert out.returncode != 0
    assert 'KCDSampler(round_up=False) on several ranks' in out.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize('summary', ['stage', 'persistent'])
def test_summary_blends_in_persistent_workers(tmp_path, summary):
    """Pairs (stage) and terms (persistent, a file dataset) set by the hook
    in the main process reach the worker copies."""
    data = make_image_folder(str(tmp_path / 'data'), 60, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=3, summary=summary)
    loader = cfg['train_dataloader']
    loader.update(num_workers=2, persistent_workers=True)
    inner = loader['dataset']['dataset']
    inner['pipeline'] = [p for p in inner['pipeline']
                         if p['type'] != 'RandomFlip']  # deterministic
    cfg['custom_imports']['imports'].append('kcd_probe')
    cfg['custom_hooks'].append(
        dict(type='mmrazor.BlendProbeHook', out_dir=str(tmp_path)))
    path = write_config(cfg, str(tmp_path / 'kcd.py'))
    env = probe_env()
    run_tool(['tools/train.py', path, '--work-dir', str(tmp_path / 'w')],
             env=env)
    epochs = read_jsonl(osp.join(tmp_path, 'blend_probe.jsonl'))
    counts = [(e['blended'], e['plain'], e['wrong']) for e in epochs]
    if summary == 'stage':
        # Epoch 1: no pairs yet. Epochs 2, 3: 10 pairs, one with lam = 1.0.
        assert counts == [(0, 60, 0), (9, 41, 0), (9, 31, 0)]
    else:
        # Epoch 3 also carries epoch 2's blends that are still kept.
        assert counts[0] == (0, 60, 0)
        assert [sum(c) for c in counts] == [60, 50, 40]
        assert all(w == 0 for _, _, w in counts)
        assert 9 <= counts[1][0] and counts[2][0] > 9


@pytest.mark.slow
def test_two_ranks_share_one_persistent_summary(tmp_path):
    """summary='persistent' on an in-memory dataset: both ranks hold the
    same blended images after every E-step, and hand out the same keys;
    the values come from the student classifier (no loss wrapper) inside
    DDP."""
    data = make_mnist_folder(str(tmp_path / 'data'), 60, 3, 16)
    cfg = add_kcd(tiny_kd_config(data, num_classes=3, in_channels=1,
                                 max_epochs=4, batch_size=8),
                  theta=0.5, num_steps=3, summary='persistent',
                  wrap_losses=False)
    cfg['train_cfg']['val_interval'] = 4
    use_mnist(cfg, data)
    ranks = _probed_2_rank_run(cfg, tmp_path)
    epochs = _same_on_both_ranks(ranks, ('kept', 'tail', 'lost', 'summary'),
                                 4)
    assert epochs[0][0]['summary'] is not None
    # New images at each of the 3 E-steps (none after the last epoch).
    assert len({e['summary'] for e in epochs[0]}) == 3
    # Persistent keys (index, image digest) reached the shards.
    assert any(isinstance(k, list) and len(k) == 2
               for e in epochs[0][1:] for k in e['shard'])
    # Both ranks' classifier values reached every E-step.
    stages = read_jsonl(osp.join(str(tmp_path / 'work'), 'kcd_stages.jsonl'))
    assert [s['values_recorded'] for s in stages] == [60, 50, 40]
