"""The efficiency test's statistics (benchmarks/verdict.py), the teacher
identity its cache relies on (benchmarks/cache.py), the arms' cache keys
and what a part of a mode writes (benchmarks/run.py): pure functions, on
made-up results and small weight files; nothing trains."""
import json
import math
import os.path as osp

import pytest
import torch

from helpers import repo_root


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks' modules, imported as ``benchmarks/run.py`` does."""
    monkeypatch.syspath_prepend(osp.join(repo_root(), 'benchmarks'))
    import arms
    import cache
    import modes
    import report
    import verdict
    return dict(arms=arms, cache=cache, modes=modes, report=report,
                verdict=verdict)


def test_t_quantiles_match_scipy(bench):
    stats = pytest.importorskip('scipy.stats')
    t975 = bench['verdict'].t975
    for df in bench['verdict'].T975:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
    # Between tabulated values: the smaller df's, a wider interval.
    assert t975(20) == t975(19) > stats.t.ppf(0.975, 20)
    with pytest.raises(ValueError):
        t975(0)


def test_interval_by_hand(bench):
    ci = bench['verdict'].interval([0.1, 0.3, -0.2, 0.4, 0.0])
    mean, sd = 0.12, math.sqrt(0.228 / 4)  # sum of squares about the mean
    half = 2.776 * sd / math.sqrt(5)
    assert ci['n'] == 5
    assert ci['mean'] == pytest.approx(mean)
    assert ci['sd'] == pytest.approx(sd)
    assert ci['low'] == pytest.approx(mean - half)
    assert ci['high'] == pytest.approx(mean + half)
    one = bench['verdict'].interval([0.5])
    assert one['low'] is None and one['mean'] == 0.5


def _run(arm, seed, top1, budget=None, teacher='t', start=0.0, secs=100.0,
         share=1.0):
    return dict(name=f'{arm}_s{seed}', arm=arm, seed=seed, budget=budget,
                variant='', test_top1_best=top1, holdout_best=top1,
                teacher_weights_sha256=teacher, started_at=start,
                train_seconds=secs, seconds_per_iter=secs / 1000,
                samples_vs_kd=share)


def test_verdicts_follow_the_rule(bench):
    v = bench['verdict']
    kd = [90.0, 90.5, 89.8, 90.2, 90.1]
    results = [_run('kd_60k', s, x) for s, x in enumerate(kd)]
    # KCD at 87.5%: +0.2 +- 0.05 over KD (better and non-inferior).
    results += [_run('kcd_60k', s, x + 0.2 + 0.05 * (-1) ** s, share=0.875)
                for s, x in enumerate(kd)]
    # per-epoch random: -0.2 +- 0.3: not non-inferior to KD (lower bound
    # below -0.3), and KCD does not beat it by more than the noise.
    pe = [-0.2, 0.2, -0.6, 0.1, -0.5]
    results += [_run('per_epoch_random_60k', s, x + d)
                for s, (x, d) in enumerate(zip(kd, pe))]
    rows = {r['claim']: r for r in v.verdicts(results, [None])}
    assert rows['KCD is better than KD']['verdict'] == 'holds'
    assert rows['KCD is non-inferior to KD']['verdict'] == 'holds'
    assert rows['KCD is better than KD']['mean'] == pytest.approx(0.21)
    assert (rows['per-epoch random is non-inferior to KD']['verdict']
            == 'not shown')
    assert rows['KCD\'s ranking beats random (per stage)']['verdict'] == (
        'not run')
    results.append(_run('random_60k', 0, 90.1))
    rows = {r['claim']: r for r in v.verdicts(results, [None, 0.6])
            if r['budget'] is None}
    assert rows['KCD\'s ranking beats random (per stage)']['verdict'] == (
        'interim, 1 of 5 seeds')
    # A seed whose KCD run had another teacher is not paired.
    results[5]['teacher_weights_sha256'] = 'other'
    row = next(r for r in v.verdicts(results, [None])
               if r['claim'] == 'KCD is better than KD')
    assert row['seeds'] == [1, 2, 3, 4]
    # Four seeds decide nothing, however clear their interval.
    assert row['low'] > 0 and row['verdict'] == 'interim, 4 of 5 seeds'
    lines = '\n'.join(v.verdict_lines(results, [None, 0.6]))
    assert '| 0.875 | KCD is better than KD | [1, 2, 3, 4] |' in lines
    assert '| 0.600 | KCD is better than KD | [] | - | n/a |' in lines


def test_wallclock_pairs_are_runs_started_together(bench):
    v = bench['verdict']
    results = [
        _run('kd_60k', 0, 90, start=0, secs=1000),
        _run('kcd_60k', 0, 90, start=30, secs=880, share=0.875),
        _run('kd_60k', 1, 90, start=2000, secs=1100),
        _run('kcd_60k', 1, 90, budget=0.6, start=2010, secs=700, share=0.6),
        # Started long after every KD run: no partner.
        _run('kcd_60k', 2, 90, start=9000, secs=900, share=0.875),
    ]
    clock = v.wallclock(results)
    assert [g['budget'] for g in clock] == [None, 0.6]
    assert clock[0]['pairs'] == [('kd_60k_s0', 'kcd_60k_s0')]
    assert clock[0]['ratios'] == [pytest.approx(0.88)]
    assert clock[1]['ratios'] == [pytest.approx(700 / 1100)]
    lines = '\n'.join(v.verdict_lines(results, [None, 0.6]))
    assert '| 0.875 | 1 | 0.880 | 0.880 |' in lines
    assert lines.count('| yes |') == 1 and lines.count('| no |') == 1


def test_weights_hash_ignores_the_files_meta(bench, tmp_path):
    sha = bench['cache'].weights_sha256
    state = {'conv.weight': torch.randn(4, 3), 'bn.num_batches_tracked':
             torch.tensor(7)}
    a, b, c = (str(tmp_path / f'{n}.pth') for n in 'abc')
    torch.save({'state_dict': state, 'meta': {'time': '20261203_1'}}, a)
    torch.save({'state_dict': dict(state), 'meta': {'time': '20261203_2'}},
               b)
    changed = dict(state, **{'conv.weight': state['conv.weight'] + 1e-7})
    torch.save({'state_dict': changed}, c)
    assert sha(a) == sha(b) != sha(c)
    assert sha(str(tmp_path / 'missing.pth')) is None


def test_cache_keys_of_committed_runs_are_unchanged(bench):
    """A refactor of the arms must not change the options an arm runs
    with: they are the key under which earlier sessions' runs are
    reused."""
    with open(osp.join(repo_root(), 'benchmarks', 'results',
                       'bench_paper.json')) as f:
        committed = {r['name']: r['cfg_options']
                     for r in json.load(f)['arms']}
    mode = bench['modes'].MODES['paper']
    planned = {a.name: bench['arms'].cfg_options(a, mode)
               for a in bench['arms'].plan_arms(mode)}
    assert set(committed) <= set(planned)
    for name, opts in committed.items():
        assert planned[name] == opts, name


def test_efficiency_arms_distil_from_the_committed_teacher(bench):
    mode = bench['modes'].MODES['efficiency']
    teacher = bench['modes'].TEACHER_60K
    plan = bench['arms'].plan_arms(mode)
    names = {a.name for a in plan}
    # Every arm named by the wall-clock pairs of docs/results.md.
    for name in ('kd_60k_s4', 'kcd_60k_s4', 'kcd_60k_b60_s3',
                 'kd_60k_wall_s0', 'per_epoch_random_60k_b60_s4',
                 'infobatch_60k_s0'):
        assert name in names
    for arm in plan:
        opts = bench['arms'].cfg_options(arm, mode)
        assert f'model.teacher_ckpt={teacher}' in opts, arm.name
    assert osp.isfile(osp.join(repo_root(), teacher))


def test_a_part_of_a_mode_keeps_the_other_parts_results(bench, tmp_path):
    """``run.py --names X`` writes the mode's json with every finished arm,
    not only X: a later part never drops an earlier part's results."""
    import run
    mode = bench['modes'].MODES['quick']
    plan = bench['arms'].plan_arms(mode)
    earlier, now = plan[1], plan[3]
    work = tmp_path / earlier.name
    work.mkdir()
    (work / 'bench_result.json').write_text(json.dumps(dict(
        name=earlier.name,
        cfg_options=bench['arms'].cfg_options(earlier, mode))))
    stale = tmp_path / plan[2].name  # ran with other options: not counted
    stale.mkdir()
    (stale / 'bench_result.json').write_text(json.dumps(dict(
        name=plan[2].name, cfg_options=['randomness.seed=9'])))
    out = run.with_finished([dict(name=now.name)], mode, str(tmp_path))
    assert [r['name'] for r in out] == [earlier.name, now.name]
    assert out[0]['reused'] is True


def test_matched_budget_arm_is_planned_and_compared(bench):
    """KCD at the samples InfoBatch reached: planned on that budget's
    schedule, compared with InfoBatch seed by seed, and a matched budget
    that rounds onto a planned one is refused (one work dir an arm)."""
    import dataclasses
    arms, v = bench['arms'], bench['verdict']
    mode = bench['modes'].MODES['efficiency']
    plan = {a.name: a for a in arms.plan_arms(mode)}
    assert len(plan) == 46  # the protocol's runs, InfoBatch seeds 1-4 included
    kcd = plan['kcd_60k_b70_s0']
    assert kcd.budget == 0.698 and kcd.config.endswith('kcd_fashionmnist_'
                                                       '500pc.py')
    assert (kcd.hook['theta'], kcd.hook['num_steps']) == (0.396, 5)
    clash = dataclasses.replace(
        mode, matched=(('kcd_60k', 0.6, (0, ), 'infobatch_60k'), ))
    with pytest.raises(ValueError, match='kcd_60k_b60_s0'):
        arms.plan_arms(clash)
    results = [_run('infobatch_60k', 0, 89.75, share=0.698),
               _run('kcd_60k', 0, 90.5, budget=0.698, share=0.698),
               _run('kcd_60k', 1, 90.6, budget=0.698, share=0.698)]
    lines = v.matched_lines(results, mode.matched, arms.LABELS)
    row = lines[-1]
    assert '| 0.698 |' in row and '| [0] | +0.75 | +0.75 (1 seed) |' in row
    assert v.matched_lines(results[1:], mode.matched, arms.LABELS) == []


def test_fixed_ratio_infobatch_reports_no_kcd_schedule(bench):
    """InfoBatch at its own r spends what r gives: its row names r, not
    the theta and K of a schedule it never planned (the committed
    efficiency results, aggregated as the run does)."""
    with open(osp.join(repo_root(), 'benchmarks', 'results',
                       'bench_efficiency.json')) as f:
        results = json.load(f)['arms']
    rows = {(r['arm'], r['budget']): r
            for r in bench['report'].aggregate(results)}
    infobatch, kcd = rows[('infobatch_60k', None)], rows[('kcd_60k', None)]
    assert (infobatch['theta'], infobatch['num_steps']) == (None, None)
    assert infobatch['infobatch_ratio'] == 0.5
    assert (kcd['theta'], kcd['num_steps'], kcd['infobatch_ratio']) == (
        0.7, 6, None)
    assert rows[('kd_60k', None)]['theta'] is None
