"""The KCD benchmark on real Fashion-MNIST, in one command.

    python benchmarks/run.py --mode quick   # < 10 min on 2 CPU cores
    python benchmarks/run.py --mode full    # < 2 h on 2 CPU cores
        [--jobs 2] [--work-dir work_dirs/bench_MODE] [--force] [--no-docs]
        [--docs-only] [--report] [--seeds S ...] [--arms A ...]
        [--names NAME ...] [--main-only] [--no-micro] [--in-step]
    python benchmarks/run.py --mode paper   # ~7 h at 2 jobs: run it in parts
    python benchmarks/run.py --mode paper --seeds 0 --main-only  # ~2 h
    python benchmarks/run.py --mode efficiency  # issue 21, ~7 h: in parts
    python benchmarks/run.py --mode efficiency --in-step --names \
        kd_60k_s0 kcd_60k_s0 ...   # its side-by-side wall-clock pairs

Needs the data and the demo's teacher: the first run calls
``bash tools/run_demo.sh --teacher-only`` (prepares data/fashion_mnist,
trains configs/teachers/resnet18_w16_fashionmnist.py once, keeps its
weights in work_dirs/demo_teacher/teacher.pth; about 8 min on 2 cores) and
later runs reuse it. Every arm is ``tools/train.py`` on a shipped config
with ``--cfg-options``, then ``tools/test.py`` on its last checkpoint:

====  ==============  ===============================================
arm   name            config and options
====  ==============  ===============================================
1     student         configs/students/resnet18_w4_fashionmnist.py
2     kd              configs/kd/kd_demo_fashionmnist.py
3     kcd             configs/kcd/kcd_demo_fashionmnist.py
4     kcd_prune       the same, ``custom_hooks.0.summary=False``
5     random          the same, ``custom_hooks.0.strategy=random``
6     infobatch       the same, ``custom_hooks.0.strategy=infobatch``
====  ==============  ===============================================

Arms 3-6 share KCDHook's schedule options (stage_epochs, theta,
num_steps), so 5 and 6 spend exactly KCD's samples. The budget curve
(full mode) runs KCD, random and InfoBatch at 50/60/75% of KD's
sample-iterations, with theta and num_steps picked per budget by
``modes.choose_schedule`` (``keep_schedule`` arithmetic, no accuracy
involved); the 87.5% point is the main arms.

The full mode also validates every 3 epochs, keeps the held-out best
checkpoint beside the last one and tests both, and runs the ablations of
``Mode.ablations`` (other value measures, summary off, shorter stages) at
the 50% budget.

Held-out data: settings are judged on the last ``--holdout`` (10,000)
images of the *training* file, never on the test set. Arms train on the
first ``n_train`` training images (``indices=n_train``: a prefix, so
mmengine's ``sample_idx``, the position in the subset, equals the image's
index in the file and KCD's records name the file's images) and validate
on ``indices=-holdout`` with the test pipeline (``test_mode=False``: that
is how mmpretrain 1.2.0's FashionMNIST reads the training file). The test
set is evaluated at the end, on the last checkpoint and on the held-out
best one, reported, and used for nothing.

Each arm runs in its own process with one OpenMP thread, ``--jobs`` at a
time; a finished arm (``bench_result.json`` in its work dir, or, in the
paper and efficiency modes, the same arm with the same options in a
committed ``benchmarks/results/bench_*.json`` from an earlier session) is
not run again unless ``--force`` or its options changed. Also runs
benchmarks/bench_estep.py and benchmarks/bench_overhead.py. Writes
benchmarks/results/bench_MODE.json, docs/img/bench_MODE_*.png, and the
MODE section of docs/results.md.

The modes are in ``modes.py``, the arms and running them in ``arms.py``,
the tables and docs/results.md in ``report.py``, the plots in
``plots.py``; this file is the command line.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Dict, List

from arms import (Arm, ensure_teacher, eval_teacher, finished, plan_arms,
                  run_arm, tool_env)
from modes import MODES, ROOT, Mode
from plots import plot
from report import aggregate, markdown, write_docs


def run_micro(mode: Mode, mode_name: str) -> Dict:
    """E-step scaling and per-iteration overhead, by their own scripts.

    Args:
        mode (Mode): The benchmark setting (``estep_sizes``,
            ``overhead_args``).
        mode_name (str): Results go to ``benchmarks/results/MODE/``.

    Returns:
        dict: ``estep`` and ``overhead``: the json each script wrote.
    """
    out = osp.join('benchmarks', 'results', mode_name)  # from ROOT
    results = {}
    for name, args in (
            ('estep', ['--sizes', *map(str, mode.estep_sizes)]),
            ('overhead', list(mode.overhead_args))):
        path = osp.join(out, f'{name}.json')
        subprocess.run([sys.executable, f'benchmarks/bench_{name}.py',
                        *args, '--out', path], cwd=ROOT, env=tool_env(),
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(osp.join(ROOT, path)) as f:
            results[name] = json.load(f)
    return results


def main() -> None:
    """Run (or reuse) every arm of ``--mode``, then write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mode', choices=sorted(MODES), default='quick')
    parser.add_argument('--jobs', type=int, default=2,
                        help='arms trained at once (one thread each)')
    parser.add_argument('--work-dir', help='default work_dirs/bench_MODE')
    parser.add_argument('--force', action='store_true',
                        help='run arms again even when finished')
    parser.add_argument('--no-docs', action='store_true',
                        help='do not touch docs/results.md and docs/img')
    parser.add_argument('--seeds', type=int, nargs='+',
                        help='run only the arms of these seeds (the rest '
                        'of the mode in a later invocation; the report '
                        'covers every arm run so far)')
    parser.add_argument('--arms', nargs='+',
                        help='run only these arms (keys of arms.ARMS), in '
                        'this order')
    parser.add_argument('--names', nargs='+',
                        help='run only the arms of these work-dir names '
                        '(e.g. kcd_b50_s0), in this order')
    parser.add_argument('--main-only', action='store_true',
                        help='only the main arms (no budget curve, no '
                        'ablations)')
    parser.add_argument('--in-step', action='store_true',
                        help='start the arms --jobs at a time and wait for '
                        'the whole group before starting the next: the '
                        'side-by-side pairs of the efficiency mode\'s '
                        'wall-clock test (with --names, in that order)')
    parser.add_argument('--no-micro', action='store_true',
                        help='skip the E-step and overhead micro-benchmarks')
    parser.add_argument('--docs-only', action='store_true',
                        help='rewrite the docs from the last results json')
    parser.add_argument('--report', action='store_true',
                        help='train nothing: report every arm of the mode '
                        'that has finished, keeping the last json\'s '
                        'micro-benchmarks')
    args = parser.parse_args()
    mode = MODES[args.mode]
    out = osp.join(ROOT, 'benchmarks', 'results', f'bench_{args.mode}.json')
    if args.docs_only:
        with open(out) as f:
            summary = json.load(f)
        rows = aggregate(summary['arms'])  # the tables of today's code
        plots = plot(summary['arms'], rows, mode, args.mode)
        write_docs(markdown(summary, rows, mode, args.mode, plots),
                   args.mode)
        return
    root = osp.abspath(args.work_dir or
                       osp.join(ROOT, 'work_dirs', f'bench_{args.mode}'))
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    arms = sorted(plan_arms(mode), key=lambda a: -a.cost)
    if args.seeds is not None:
        arms = [a for a in arms if a.seed in args.seeds]
    if args.main_only:
        arms = [a for a in arms if a.budget is None and not a.variant]
    if args.arms:
        arms = sorted((a for a in arms if a.arm in args.arms),
                      key=lambda a: args.arms.index(a.arm))
    if args.names:
        arms = sorted((a for a in arms if a.name in args.names),
                      key=lambda a: args.names.index(a.name))
    if args.report:
        arms = [a for a in arms if finished(a, mode, root)]
    else:
        ensure_teacher(mode, arms)
    print(f'{len(arms)} arms, {args.jobs} at a time, in {root}')

    def one(arm: Arm) -> Dict:
        t = time.perf_counter()
        result = run_arm(arm, mode, root, args.force)
        print(f'  {arm.name:<18} held-out {result["holdout_top1"]:.2f}  '
              f'test {result["test_top1"]:.2f}  samples '
              f'{result["samples_vs_kd"]:.3f} of KD  '
              f'({time.perf_counter() - t:.0f} s)', flush=True)
        return result

    teacher_test = eval_teacher(root, mode, arms)
    micro = {}
    if osp.isfile(out):  # kept until this run measures its own
        with open(out) as f:
            micro = json.load(f).get('micro') or {}

    def write(results: List[Dict], docs: bool) -> Dict:
        """The mode's json: this run's arms and every other finished one
        (a part of the mode never drops an earlier part's results)."""
        results = with_finished(results, mode, root)
        rows = aggregate(results)
        summary = dict(
            mode=args.mode, settings=asdict(mode), jobs=args.jobs,
            date=time.strftime('%Y-%m-%d %H:%M'),
            wall_seconds=round(time.perf_counter() - start, 1),
            load_start=round(load_start, 2),
            load_end=round(os.getloadavg()[0], 2), micro=micro, table=rows,
            teacher_test_top1=teacher_test,
            reused=sum(bool(r.get('reused')) for r in results),
            arms=[{k: v for k, v in r.items() if k != 'reused'}
                  for r in results])
        with open(out + '.tmp', 'w') as f:
            json.dump(summary, f, indent=1)
        os.replace(out + '.tmp', out)
        if docs:
            plots = plot(results, rows, mode, args.mode)
            write_docs(markdown(summary, rows, mode, args.mode, plots),
                       args.mode)
        return summary

    step = args.jobs if args.in_step else max(len(arms), 1)
    results: List[Dict] = []
    for i in range(0, len(arms), step):
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results += pool.map(one, arms[i:i + step])
        if i + step < len(arms):
            write(results, docs=False)  # a killed session loses no arm
    if not (args.report or args.no_micro):
        micro = run_micro(mode, args.mode)
    summary = write(results, docs=not args.no_docs)
    print(f'done in {summary["wall_seconds"] / 60:.1f} min: {out}')


def with_finished(results: List[Dict], mode: Mode, root: str) -> List[Dict]:
    """``results`` and every other finished arm of ``mode`` (its work dir,
    or a committed json's), in the mode's order."""
    ran = {r['name']: r for r in results}
    out = []
    for arm in plan_arms(mode):
        result = ran.pop(arm.name, None) or finished(arm, mode, root)
        if result is not None:
            out.append(result)
    return out + list(ran.values())


if __name__ == '__main__':
    main()
