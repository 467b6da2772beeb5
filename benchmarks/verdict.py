"""The efficiency test's verdicts and wall-clock pairs (issue 21).

The rule is docs/results.md's "The efficiency test (issue 21): protocol,
fixed before its runs": per budget, paired test-set differences (best
held-out checkpoint) over seeds, a 95% interval from Student's t with
n - 1 degrees of freedom, and claims decided by the interval's lower
bound against 0 or against the non-inferiority margin. Pure functions of
the results :func:`arms.run_arm` writes; ``report.py`` renders them.
"""
import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple, Union

# Student's t, 0.975 quantile, by degrees of freedom (two-sided 95%).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
        7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179,
        13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}
MARGIN = 0.3  # the non-inferiority margin, in top-1 points (fixed)
SEEDS = 5  # the rule decides on this many paired seeds, not fewer
# (claim, arm, base arm, bound): holds when the lower 95% bound of
# arm - base exceeds the bound. Arms are those of one budget.
CLAIMS = (
    ('KCD is non-inferior to KD', 'kcd_60k', 'kd_60k', -MARGIN),
    ('KCD is better than KD', 'kcd_60k', 'kd_60k', 0.0),
    ('KCD\'s ranking beats random (per stage)', 'kcd_60k', 'random_60k',
     0.0),
    ('KCD\'s ranking beats per-epoch random', 'kcd_60k',
     'per_epoch_random_60k', 0.0),
    ('KCD is no worse than per-epoch random', 'kcd_60k',
     'per_epoch_random_60k', -MARGIN),
    ('per-epoch random is non-inferior to KD', 'per_epoch_random_60k',
     'kd_60k', -MARGIN),
)
# KD has no budget: its runs are the base at every budget.
NO_BUDGET = ('kd_60k', )


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom
    (the next tabulated smaller ``df`` where it is not tabulated: a wider
    interval, never a narrower one)."""
    if df < 1:
        raise ValueError(f'df must be >= 1, got {df}')
    return T975[max(d for d in T975 if d <= df)]


def interval(diffs: Sequence[float]) -> Dict:
    """Mean, std and 95% t interval of paired differences.

    Returns:
        dict: ``n``, ``mean``, ``sd``, ``low``, ``high`` (``low`` and
        ``high`` None for fewer than 2 differences).
    """
    n = len(diffs)
    mean = statistics.mean(diffs) if n else math.nan
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else None
    return dict(n=n, mean=mean, sd=sd,
                low=None if half is None else mean - half,
                high=None if half is None else mean + half)


def _by_seed(results: List[Dict], arm: str,
             budget: Optional[float]) -> Dict[int, Dict]:
    """The main (non-ablation) runs of ``arm`` at ``budget``, by seed."""
    return {r['seed']: r for r in results
            if r['arm'] == arm and not r.get('variant') and
            (arm in NO_BUDGET or r['budget'] == budget)}


def budget_of(results: List[Dict], budget: Optional[float],
              arm: str = 'kcd_60k') -> float:
    """The fraction of KD's samples the runs of ``arm`` at ``budget``
    trained on (KCD's main arms, None: 0.875)."""
    runs = _by_seed(results, arm, budget)
    return (statistics.mean(r['samples_vs_kd'] for r in runs.values())
            if runs else math.nan)


def compare(results: List[Dict], arm: str, base: str,
            budget: Optional[float], key: str = 'test_top1_best',
            base_budget: Union[float, None, str] = 'same') -> Dict:
    """``arm - base`` at ``budget`` (``base`` at ``base_budget``, by
    default the same), paired by seed and by teacher: a seed counts only
    where both runs name the same teacher weights."""
    a = _by_seed(results, arm, budget)
    b = _by_seed(results, base,
                 budget if base_budget == 'same' else base_budget)
    seeds = sorted(s for s in a if s in b and a[s].get(
        'teacher_weights_sha256') == b[s].get('teacher_weights_sha256'))
    diffs = [a[s][key] - b[s][key] for s in seeds]
    return dict(interval(diffs), seeds=seeds, diffs=diffs)


def verdicts(results: List[Dict],
             budgets: Sequence[Optional[float]]) -> List[Dict]:
    """Every claim of :data:`CLAIMS` at every budget, decided.

    Returns:
        list[dict]: per (budget, claim): ``budget``, ``claim``, ``arm``,
        ``base``, :func:`compare`'s figures and ``verdict``: ``'holds'``,
        ``'not shown'``, ``'interim, n of 5 seeds'`` (fewer pairs than
        the rule decides on: an early look would be a chance to stop when
        the interval happens to look good) or ``'not run'``.
    """
    out = []
    for budget in budgets:
        for claim, arm, base, bound in CLAIMS:
            c = compare(results, arm, base, budget)
            verdict = ('not run' if not c['n'] else
                       f'interim, {c["n"]} of {SEEDS} seeds'
                       if c['n'] < SEEDS else
                       'holds' if c['low'] > bound else 'not shown')
            out.append(dict(c, budget=budget, claim=claim, arm=arm,
                            base=base, bound=bound, verdict=verdict))
    return out


def wallclock_pairs(results: List[Dict], within: float = 120.0
                    ) -> List[Tuple[Dict, Dict]]:
    """(KD run, KCD run) pairs that started together: within ``within``
    seconds of each other, the protocol's side-by-side pairs (started by
    ``benchmarks/run.py --in-step``)."""
    kd = [r for r in results if r['arm'] in ('kd_60k', 'kd_60k_wall') and
          r.get('started_at') is not None]
    kcd = [r for r in results if r['arm'] == 'kcd_60k' and
           not r.get('variant') and r.get('started_at') is not None]
    return [(d, c) for d in kd for c in kcd
            if abs(d['started_at'] - c['started_at']) <= within]


def wallclock(results: List[Dict]) -> List[Dict]:
    """Per KCD budget: each side-by-side pair's whole-run ratio KCD / KD,
    and both runs' median s/iter.

    Returns:
        list[dict]: ``budget``, ``samples_vs_kd``, ``ratios``,
        ``kd_s_iter``, ``kcd_s_iter``, ``pairs`` (``(kd name, kcd
        name)``), sorted by budget (None, the main arms, first).
    """
    groups: Dict[Optional[float], Dict] = {}
    for kd, kcd in wallclock_pairs(results):
        g = groups.setdefault(kcd['budget'], dict(
            budget=kcd['budget'], samples_vs_kd=kcd['samples_vs_kd'],
            ratios=[], kd_s_iter=[], kcd_s_iter=[], pairs=[]))
        g['ratios'].append(kcd['train_seconds'] / kd['train_seconds'])
        g['kd_s_iter'].append(kd['seconds_per_iter'])
        g['kcd_s_iter'].append(kcd['seconds_per_iter'])
        g['pairs'].append((kd['name'], kcd['name']))
    return sorted(groups.values(),
                  key=lambda g: -1 if g['budget'] is None else g['budget'])


def _ci(c: Dict) -> str:
    if c['low'] is None:
        return ('n/a' if not c['n'] else f'{c["mean"]:+.2f} (1 seed)')
    return (f'{c["mean"]:+.2f} ± {c["sd"]:.2f}, 95% CI '
            f'{c["low"]:+.2f}..{c["high"]:+.2f}')


def matched_lines(results: List[Dict],
                  matched: Sequence[Tuple[str, float, Sequence[int], str]],
                  labels: Dict[str, str]) -> List[str]:
    """``Mode.matched``'s comparisons as markdown lines: each arm at the
    samples its rival (a main arm) reached, minus the rival, by seed."""
    lines = []
    for arm, budget, _, rival in matched:
        c = compare(results, arm, rival, budget, base_budget=None)
        if not c['n']:
            continue
        if not lines:
            lines = ['', 'At the samples another method reached (reported, '
                     'not judged: no rule was fixed for it), paired by seed '
                     'and teacher, test top-1 of the best held-out '
                     'checkpoint:', '',
                     '| arm | its samples | minus | seeds | per seed | '
                     'mean ± std, 95% CI |', '|---|---|---|---|---|---|']
        share = budget_of(results, budget, arm)
        per_seed = ' '.join(f'{d:+.2f}' for d in c['diffs'])
        lines.append(f'| {labels[arm]} | {share:.3f} | {labels[rival]} | '
                     f'{c["seeds"]} | {per_seed} | {_ci(c)} |')
    return lines


def verdict_lines(results: List[Dict],
                  budgets: Sequence[Optional[float]]) -> List[str]:
    """The verdict table and the wall-clock table, as markdown lines."""
    rows = verdicts(results, budgets)
    if not any(r['n'] for r in rows):
        return []
    lines = ['', 'Verdicts by the pre-registered rule (test top-1 of the '
             'best held-out checkpoint, arm minus base paired by seed and '
             f'teacher; 95% t interval, n - 1 df; margin {MARGIN}):', '',
             '| budget (KCD\'s samples) | claim | seeds | per seed | mean ± '
             'std, 95% CI | rule: lower bound > | verdict |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        share = budget_of(results, r['budget'])
        where = (f'{share:.3f}' if not math.isnan(share) else
                 f'{r["budget"]:.3f}' if r['budget'] else 'main arms')
        per_seed = ' '.join(f'{d:+.2f}' for d in r['diffs']) or '-'
        lines.append(
            f'| {where} | {r["claim"]} | {r["seeds"]} | {per_seed} | '
            f'{_ci(r)} | {r["bound"]:+.1f} | {r["verdict"]} |')
    clock = wallclock(results)
    if clock:
        lines += ['', 'Whole-run wall-clock, KD and KCD started together '
                  '(one thread each on the two cores; target: ratio <= '
                  'the sample budget + 0.02):', '',
                  '| KCD\'s samples | pairs | KCD / KD, each pair | median '
                  '| KD s/iter | KCD s/iter | target met |',
                  '|---|---|---|---|---|---|---|']
        for g in clock:
            med = statistics.median(g['ratios'])
            lines.append(
                f'| {g["samples_vs_kd"]:.3f} | {len(g["ratios"])} | '
                + ' '.join(f'{x:.3f}' for x in g['ratios']) +
                f' | {med:.3f} | '
                + ' '.join(f'{x:.3f}' for x in g['kd_s_iter']) + ' | '
                + ' '.join(f'{x:.3f}' for x in g['kcd_s_iter']) + ' | '
                + ('yes' if max(g['ratios']) <= g['samples_vs_kd'] + 0.02
                   else 'no' if min(g['ratios']) > g['samples_vs_kd'] + 0.02
                   else 'in some pairs') + ' |')
    return lines
