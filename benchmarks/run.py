"""The KCD benchmark on real Fashion-MNIST, in one command.

    python benchmarks/run.py --mode quick   # < 10 min on 2 CPU cores
    python benchmarks/run.py --mode full    # < 2 h on 2 CPU cores
        [--jobs 2] [--work-dir work_dirs/bench_MODE] [--force] [--no-docs]
        [--docs-only]

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
:func:`choose_schedule` (``keep_schedule`` arithmetic, no accuracy
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
time; a finished arm (``bench_result.json`` in its work dir) is not run
again unless ``--force`` or its options changed. Also runs
benchmarks/bench_estep.py and benchmarks/bench_overhead.py. Writes
benchmarks/results/bench_MODE.json, docs/img/bench_MODE_*.png, and the
MODE section of docs/results.md.
"""
import argparse
import functools
import glob
import json
import math
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from kcd_mm import analysis  # noqa: E402
from kcd_mm.condensation import boundary_epochs, keep_schedule  # noqa: E402

# Where tools/run_demo.sh keeps the teacher (it honours TEACHER_DIR too).
TEACHER = osp.join(os.environ.get('TEACHER_DIR', 'work_dirs/demo_teacher'),
                   'teacher.pth')
CONFIGS = dict(
    student='configs/students/resnet18_w4_fashionmnist.py',
    kd='configs/kd/kd_demo_fashionmnist.py',
    kcd='configs/kcd/kcd_demo_fashionmnist.py')
# arm -> (config, KCDHook options beyond the schedule)
ARMS = dict(
    student=('student', {}),
    kd=('kd', {}),
    kcd=('kcd', {}),
    kcd_prune=('kcd', dict(summary=False)),
    random=('kcd', dict(strategy='random')),
    infobatch=('kcd', dict(strategy='infobatch')))
LABELS = dict(
    student='1 student alone', kd='2 KD', kcd='3 KD+KCD',
    kcd_prune='4 KCD prune-only', random='5 random, KCD budget',
    infobatch='6 InfoBatch, KCD budget')
REFERENCE = dict(theta=0.7, num_steps=6)  # the configs' (reference) values
# Ablations drawn on an arm's line in the accuracy plot.
PLOTTED_AS = {'summary=False': 'kcd_prune'}


@dataclass
class Mode:
    """One benchmark setting.

    Attributes:
        n_train: training images (the first of the training file).
        holdout: held-out images (the last of the training file).
        epochs: epochs of every arm.
        stage_epochs: KCD's T.
        seeds: arm -> seeds (arms not listed run seed 0 only).
        budgets: fractions of KD's samples for the budget curve.
        budget_seeds: budget -> seeds of its KCD and random arms (others:
            seed 0 only).
        estep_sizes: N for benchmarks/bench_estep.py.
        overhead_args: arguments of benchmarks/bench_overhead.py.
        val_every: epochs between held-out validations (0: only at the
            end); the best of them picks the "best" checkpoint.
        ablations: (variant, budget, cfg-options) of extra KCD runs on
            the budget's schedule: what else was tried.
        ablation_seeds: variant -> seeds (others: seed 0 only).
    """
    n_train: int
    holdout: int
    epochs: int
    stage_epochs: int
    seeds: Dict[str, Sequence[int]] = field(default_factory=dict)
    budgets: Sequence[float] = ()
    budget_seeds: Dict[float, Sequence[int]] = field(default_factory=dict)
    estep_sizes: Sequence[int] = (50000, 1281167)
    overhead_args: Sequence[str] = ()
    val_every: int = 0
    ablations: Sequence[Tuple[str, float, Dict[str, str]]] = ()
    ablation_seeds: Dict[str, Sequence[int]] = field(default_factory=dict)


_LOSS = 'model.distiller.distill_losses.loss_kl'
MODES = dict(
    # 10k images, 6 epochs in 1-epoch stages (the demo's schedule), 1 seed:
    # 4.0 min on an idle 2-core machine, ~8 beside another job.
    quick=Mode(n_train=10000, holdout=10000, epochs=6, stage_epochs=1,
               overhead_args=('--rounds', '1', '--epochs', '2', '--images',
                              '1024')),
    # 20k images, 18 epochs in 3-epoch stages (the reference's 6 stages),
    # 3 seeds for KD, KCD, prune-only and random, the budget curve (3 seeds
    # for KCD and random) and 5 ablations (2 with 3 seeds): 44 runs worth
    # 30 KD runs of 2,826 iterations, two at a time; ~5.5 min a KD run on
    # an idle 2-core machine: ~82 min, ~90 with start-ups and the
    # micro-benchmarks.
    full=Mode(n_train=20000, holdout=10000, epochs=18, stage_epochs=3,
              seeds=dict(kd=(0, 1, 2), kcd=(0, 1, 2), random=(0, 1, 2),
                         kcd_prune=(0, 1, 2)),
              # KCD and random: 3 seeds at every budget.
              budget_seeds={b: (0, 1, 2) for b in (0.5, 0.6, 0.75)},
              budgets=(0.5, 0.6, 0.75),
              estep_sizes=(50000, 1281167, 14197122), val_every=3,
              # At the lowest budget, where choosing matters most: the
              # other value measures, and the summary switched off.
              ablations=(
                  ('value=teacher_kl', 0.5, {f'{_LOSS}.value': 'teacher_kl'}),
                  ('value=ce', 0.5, {f'{_LOSS}.value': 'ce'}),
                  ('value=margin', 0.5, {f'{_LOSS}.value': 'margin'}),
                  ('summary=False', 0.5,
                   {'custom_hooks.0.summary': 'False'}),
                  # Shorter stages: a more gradual schedule for the budget.
                  ('stage_epochs=1', 0.5,
                   {'custom_hooks.0.stage_epochs': '1'})),
              # The two that came closest to KD at 50% with seed 0.
              ablation_seeds={'summary=False': (0, 1, 2),
                              'stage_epochs=1': (0, 1, 2)}))


# ------------------------------------------------------------ schedules
def budget_ratio(n: int, theta: float, num_steps: int, stage_epochs: int,
                 epochs: int) -> float:
    """KCD's samples over KD's for one schedule."""
    return sum(keep_schedule(n, theta, num_steps, stage_epochs,
                             epochs)) / (n * epochs)


@functools.lru_cache(maxsize=None)  # plan_arms asks again per arm
def choose_schedule(n: int, epochs: int, stage_epochs: int, target: float,
                    min_theta: float = 0.25,
                    tol: float = 0.005) -> Tuple[float, int, float]:
    """(theta, num_steps, ratio) giving ``target`` of KD's samples.

    The most gradual schedule that meets the budget: the largest K (at
    most one condensation per E-step, as the reference's K = 6 over 6
    stages) for which a floor theta >= ``min_theta`` lands within ``tol``;
    otherwise the closest of all.
    """
    steps = max(len(boundary_epochs(stage_epochs, epochs)), 1)
    thetas = [round(min_theta + 0.001 * i, 3)
              for i in range(int(round((1 - min_theta) / 0.001)) + 1)]
    best = None
    for k in range(steps, 0, -1):
        err, theta, ratio = min(
            (abs(r - target), t, r)
            for t, r in ((t, budget_ratio(n, t, k, stage_epochs, epochs))
                         for t in thetas))
        if err <= tol:
            return theta, k, ratio
        if best is None or err < best[0]:
            best = (err, theta, k, ratio)
    return best[1:]


# ----------------------------------------------------------------- arms
@dataclass
class Arm:
    name: str  # work dir name, e.g. kcd_s0, random_b50_s0
    arm: str  # key of ARMS
    seed: int
    budget: Optional[float] = None  # None: the main arms' schedule
    hook: Dict = field(default_factory=dict)  # KCDHook options
    variant: str = ''  # an ablation's name
    cfg: Dict = field(default_factory=dict)  # its extra --cfg-options

    @property
    def config(self) -> str:
        return CONFIGS[ARMS[self.arm][0]]

    @property
    def cost(self) -> float:
        """Relative run time, for scheduling the longest first."""
        if self.arm == 'student':
            return 0.7
        return 1.0 if self.arm == 'kd' else (self.budget or 0.875)


def plan_arms(mode: Mode) -> List[Arm]:
    arms = []
    for arm, (_, extra) in ARMS.items():
        for seed in mode.seeds.get(arm, (0, )):
            hook = {}
            if ARMS[arm][0] == 'kcd':
                hook = dict(stage_epochs=mode.stage_epochs, **extra)
            arms.append(Arm(f'{arm}_s{seed}', arm, seed, None, hook))
    for budget in mode.budgets:
        theta, steps, _ = choose_schedule(mode.n_train, mode.epochs,
                                          mode.stage_epochs, budget)
        for arm in ('kcd', 'random', 'infobatch'):
            hook = dict(stage_epochs=mode.stage_epochs, theta=theta,
                        num_steps=steps, **ARMS[arm][1])
            seeds = (mode.budget_seeds.get(budget, (0, ))
                     if arm != 'infobatch' else (0, ))
            for seed in seeds:
                arms.append(
                    Arm(f'{arm}_b{round(100 * budget)}_s{seed}', arm, seed,
                        budget, hook))
    for variant, budget, cfg in mode.ablations:
        stage_epochs = int(cfg.get('custom_hooks.0.stage_epochs',
                                   mode.stage_epochs))
        theta, steps, _ = choose_schedule(mode.n_train, mode.epochs,
                                          stage_epochs, budget)
        slug = ''.join(c if c.isalnum() else '_' for c in variant)
        for seed in mode.ablation_seeds.get(variant, (0, )):
            arms.append(
                Arm(f'kcd_b{round(100 * budget)}_{slug}_s{seed}', 'kcd',
                    seed, budget,
                    dict(stage_epochs=stage_epochs, theta=theta,
                         num_steps=steps), variant, dict(cfg)))
    return arms


def cfg_options(arm: Arm, mode: Mode) -> List[str]:
    """--cfg-options of an arm: data split, schedule, seed, teacher, KCD."""
    wrapped = ARMS[arm.arm][0] == 'kcd'  # in KnowledgeSummaryDataset
    train_ds = 'train_dataloader.dataset' + ('.dataset' if wrapped else '')
    opts = {
        f'{train_ds}.indices': mode.n_train,
        'val_dataloader.dataset.split': 'train',
        'val_dataloader.dataset.test_mode': False,
        'val_dataloader.dataset.indices': -mode.holdout,
        'train_cfg.max_epochs': mode.epochs,
        'train_cfg.val_interval': mode.val_every or mode.epochs,
        # The held-out pick of the "best" checkpoint (kept beside the last).
        'default_hooks.checkpoint.save_best': 'accuracy/top1',
        'default_hooks.checkpoint.rule': 'greater',
        'param_scheduler.T_max': mode.epochs,
        'randomness.seed': arm.seed,
    }
    if arm.arm != 'student':
        opts['model.teacher_ckpt'] = TEACHER
        # The student only: the distill val loop would also evaluate the
        # (fixed) teacher at every validation; it is evaluated once apart.
        opts['val_cfg.type'] = 'ValLoop'
    for key, value in arm.hook.items():
        opts[f'custom_hooks.0.{key}'] = value
    opts.update(arm.cfg)
    return [f'{k}={v}' for k, v in opts.items()]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    # One thread a process: two spinning OpenMP pools on a busy 2-core
    # machine slow a run down ~10x (measured with the teacher here).
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _scalars(work_dir: str) -> List[Dict]:
    """The logged scalars of the newest run in ``work_dir``: training's
    vis_data/scalars.json, or the metrics json a test run writes."""
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    paths = paths or sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    if not paths:
        return []
    with open(paths[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def _top1(rows: List[Dict]) -> Optional[float]:
    hits = [r['accuracy/top1'] for r in rows if 'accuracy/top1' in r]
    return hits[-1] if hits else None


def run_arm(arm: Arm, mode: Mode, root: str, force: bool) -> Dict:
    """Train, test and summarise one arm (cached in its work dir)."""
    work = osp.join(root, arm.name)
    result_path = osp.join(work, 'bench_result.json')
    opts = cfg_options(arm, mode)
    if osp.isfile(result_path) and not force:
        with open(result_path) as f:
            cached = json.load(f)
        if cached['cfg_options'] == opts:  # else the mode's settings changed
            return dict(cached, reused=True)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    python = sys.executable
    start = time.perf_counter()
    with open(osp.join(work, 'train.out'), 'w') as out:
        subprocess.run([python, 'tools/train.py', arm.config, '--work-dir',
                        work, '--cfg-options', *opts], cwd=ROOT,
                       env=_env(), stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    train_seconds = time.perf_counter() - start
    ckpt = osp.join(work, f'epoch_{mode.epochs}.pth')
    train_rows = _scalars(work)
    vals = [r for r in train_rows if 'accuracy/top1' in r]
    best = max(vals, key=lambda r: r['accuracy/top1']) if vals else None
    best_ckpt = glob.glob(osp.join(work, 'best_accuracy_top1_*.pth'))
    test_last = _test(arm.config, ckpt, osp.join(work, 'test'), opts)
    test_best = test_last  # unless another epoch was the held-out best
    if best_ckpt and not best_ckpt[0].endswith(f'_epoch_{mode.epochs}.pth'):
        test_best = _test(arm.config, best_ckpt[0],
                          osp.join(work, 'test_best'), opts)
    iter_times = [r['time'] for r in train_rows
                  if 'loss' in r and 'time' in r][2:]
    result = dict(
        asdict(arm),
        config=arm.config,
        cfg_options=opts,
        holdout_top1=vals[-1]['accuracy/top1'] if vals else None,
        holdout_best=best['accuracy/top1'] if best else None,
        best_epoch=best.get('step') if best else None,
        holdout_curve=[(r.get('step'), r['accuracy/top1']) for r in vals],
        test_top1=test_last,
        test_top1_best=test_best,
        full_kd_sample_iters=mode.n_train * mode.epochs,
        sample_iters=mode.n_train * mode.epochs,
        train_seconds=round(train_seconds, 1),
        seconds_per_iter=statistics.median(iter_times)
        if iter_times else None,
        stages=[])
    if arm.hook:
        progress = analysis.read_progress(ckpt)
        result['sample_iters'] = progress['sample_iters']
        result['full_kd_sample_iters'] = progress['full_kd_sample_iters']
        result['stages'] = analysis.read_records(work)
    result['samples_vs_kd'] = (result['sample_iters'] /
                               result['full_kd_sample_iters'])
    # One teacher forward per sample trained on (a summary blend is one
    # image), none for the student alone.
    result['teacher_forwards'] = (0 if arm.arm == 'student' else
                                  result['sample_iters'])
    with open(result_path, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def _test(config: str, ckpt: str, work: str, opts: List[str]) -> float:
    """Test top-1 of ``ckpt`` on the 10,000 test images."""
    with open(work + '.out', 'w') as out:
        subprocess.run([sys.executable, 'tools/test.py', config, ckpt,
                        '--work-dir', work] +
                       (['--cfg-options', *opts] if opts else []),
                       cwd=ROOT, env=_env(), stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    return _top1(_scalars(work))


def eval_teacher(root: str) -> float:
    """The teacher's test top-1, once (it never changes). Not on the
    held-out images: the teacher was trained on the whole training file."""
    return _test('configs/teachers/resnet18_w16_fashionmnist.py', TEACHER,
                 osp.join(root, 'teacher_test'), [])


# -------------------------------------------------------------- helpers
def ensure_teacher() -> None:
    if osp.isfile(osp.join(ROOT, TEACHER)):
        return
    print('teacher: none yet, running tools/run_demo.sh --teacher-only')
    subprocess.run(['bash', 'tools/run_demo.sh', '--teacher-only'],
                   cwd=ROOT, env=_env(), check=True)


def run_micro(mode: Mode, mode_name: str) -> Dict:
    """E-step scaling and per-iteration overhead, by their own scripts."""
    out = osp.join('benchmarks', 'results', mode_name)  # from ROOT
    results = {}
    for name, args in (
            ('estep', ['--sizes', *map(str, mode.estep_sizes)]),
            ('overhead', list(mode.overhead_args))):
        path = osp.join(out, f'{name}.json')
        subprocess.run([sys.executable, f'benchmarks/bench_{name}.py',
                        *args, '--out', path], cwd=ROOT, env=_env(),
                       check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(osp.join(ROOT, path)) as f:
            results[name] = json.load(f)
    return results


def _mean_sd(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float('nan'), float('nan')
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(results: List[Dict]) -> List[Dict]:
    """Mean and spread over seeds of each (arm, budget, variant)."""
    groups: Dict[Tuple, List[Dict]] = {}
    for r in results:
        groups.setdefault((r['arm'], r['budget'], r.get('variant', '')),
                          []).append(r)
    rows = []
    for (arm, budget, variant), rs in groups.items():
        held, held_sd = _mean_sd([r['holdout_top1'] for r in rs])
        test, test_sd = _mean_sd([r['test_top1'] for r in rs])
        hbest, hbest_sd = _mean_sd([r['holdout_best'] for r in rs])
        tbest, tbest_sd = _mean_sd([r['test_top1_best'] for r in rs])
        rows.append(
            dict(arm=arm, budget=budget, variant=variant,
                 seeds=[r['seed'] for r in rs],
                 holdout_top1=held, holdout_sd=held_sd, test_top1=test,
                 test_sd=test_sd, holdout_best=hbest, holdout_best_sd=hbest_sd,
                 test_best=tbest, test_best_sd=tbest_sd,
                 teacher_forwards=statistics.mean(r['teacher_forwards']
                                                  for r in rs),
                 samples_vs_kd=statistics.mean(r['samples_vs_kd']
                                               for r in rs),
                 capped=any(s.get('budget_capped') for r in rs
                            for s in r['stages']),
                 train_seconds=statistics.mean(r['train_seconds']
                                               for r in rs),
                 seconds_per_iter=_mean_sd(
                     [r['seconds_per_iter'] for r in rs])[0],
                 theta=rs[0]['hook'].get('theta', REFERENCE['theta'])
                 if rs[0]['hook'] else None,
                 num_steps=rs[0]['hook'].get('num_steps',
                                             REFERENCE['num_steps'])
                 if rs[0]['hook'] else None))
    return rows


# ---------------------------------------------------------------- plots
def plot(results: List[Dict], rows: List[Dict], mode: Mode,
         mode_name: str) -> List[str]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    img = osp.join(ROOT, 'docs', 'img')
    os.makedirs(img, exist_ok=True)
    colors = dict(student='#777777', kd='#000000', kcd='#2b7bba',
                  kcd_prune='#76b7e5', random='#c8553d',
                  infobatch='#3a9d5d')
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, key in zip(axes, ('holdout', 'test')):
        lines = {}
        for r in rows:  # an arm's line, with the ablations drawn as one
            arm = PLOTTED_AS.get(r.get('variant'), r['arm'])
            if r.get('variant') and r['variant'] not in PLOTTED_AS:
                continue
            lines.setdefault(arm, []).append(
                (r['samples_vs_kd'], r[f'{key}_top1'], r[f'{key}_sd']))
        # Frame the arms that stay near KD; a collapse would flatten them.
        near = [y for arm, pts in lines.items() for _, y, _ in pts
                if arm != 'infobatch']
        low, high = min(near) - 0.6, max(near) + 0.4
        for arm in ARMS:
            if arm not in lines:
                continue
            xs, ys, sd = zip(*sorted(lines[arm]))
            if arm == 'kd':  # the level to match: KD's mean +- one std
                ax.axhspan(ys[0] - sd[0], ys[0] + sd[0], color='#000000',
                           alpha=0.08, linewidth=0)
            shown = [max(y, low + 0.1) for y in ys]
            ax.errorbar(xs, shown, yerr=sd, marker='o', capsize=3,
                        color=colors[arm], label=LABELS[arm],
                        linestyle='-' if len(xs) > 1 else 'none')
            for x, y in zip(xs, ys):
                if y < low:  # off the frame: an arrow and its value
                    ax.annotate(f'{y:.1f}', (x, low + 0.1),
                                xytext=(x + 0.01, low + 0.35),
                                color=colors[arm], fontsize=7,
                                arrowprops=dict(arrowstyle='->',
                                                color=colors[arm]))
        ax.set_ylim(low, high)
        ax.set_xlabel("samples trained on / KD's")
        ax.set_ylabel(f'{key} top-1 (%)')
        ax.set_title(f'last {mode.holdout:,} of the training file'
                     if key == 'holdout' else 'the 10,000 test images')
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=6, fontsize=7)
    fig.suptitle(f'Fashion-MNIST, {mode.n_train:,} training images, '
                 f'{mode.epochs} epochs ({mode_name} mode); band: KD '
                 'mean ± std')
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = osp.join(img, f'bench_{mode_name}_accuracy_vs_samples.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = dict(kcd=('-', 3.5), kcd_prune=('--', 2), random=(':', 2),
                  infobatch=('-', 1.5))
    low = min(mode.budgets, default=None)  # its KCD schedules, thin
    for r in results:
        if r['seed'] != 0 or not r['stages']:
            continue
        lowest = (low is not None and r['budget'] == low
                  and r['arm'] == 'kcd'
                  and r.get('variant', '') in ('', 'stage_epochs=1'))
        if r['budget'] is not None and not lowest:
            continue
        n = r['stages'][0]['num_samples']
        # Fraction trained on in each epoch; a record after epoch e sets
        # the next epochs' set.
        kept = [1.0] * mode.epochs
        for s in r['stages']:
            kept[s['epoch']:] = [s['kept'] / n] * (mode.epochs - s['epoch'])
        style, width = styles[r['arm']]
        label = LABELS[r['arm']]
        if lowest:
            opts = r['hook']
            style, width = ('-.', 1.2) if r.get('variant') else ('-', 1.2)
            label = (f'KCD at {low:.0%}: T={opts["stage_epochs"]}, theta '
                     f'{opts["theta"]}, K={opts["num_steps"]}')
        ax.step(range(mode.epochs + 1), kept + kept[-1:], where='post',
                linestyle=style, linewidth=width, color=colors[r['arm']],
                label=label)
    ax.set_xlabel('epochs done')
    ax.set_ylabel('fraction of the training set trained on')
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = osp.join(img, f'bench_{mode_name}_kept_fraction.png')
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


# ----------------------------------------------------------------- docs
def _fmt(mean: float, sd: float, n: int) -> str:
    if math.isnan(mean):
        return 'n/a'
    return f'{mean:.2f} ± {sd:.2f}' if n > 1 else f'{mean:.2f}'


def markdown(summary: Dict, rows: List[Dict], mode: Mode,
             mode_name: str, plots: List[str]) -> str:
    lines = [
        f'### {mode_name} mode (generated by `python benchmarks/run.py '
        f'--mode {mode_name}`)', '',
        f'{summary["date"]}; {mode.n_train:,} training images (first of '
        f'the file), {mode.holdout:,} held-out (last of the file), '
        f'{mode.epochs} epochs, stages of {mode.stage_epochs} epoch(s); '
        f'wall-clock {summary["wall_seconds"] / 60:.1f} min'
        + (f' ({summary["reused"]} of {len(summary["arms"])} arms reused '
           'from an earlier run; the arms\' own training time summed '
           f'{sum(r["train_seconds"] for r in summary["arms"]) / 60:.0f} '
           'min)' if summary.get('reused') else '') +
        f' with {summary["jobs"]} parallel jobs (1-min load average '
        f'{summary["load_start"]} at the start, {summary["load_end"]} at '
        'the end; each arm adds 1). Raw: '
        f'`benchmarks/results/bench_{mode_name}.json`.'
        + (f' Teacher test top-1 {summary["teacher_test_top1"]:.2f}.'
           if summary.get('teacher_test_top1') else ''), '',
        'Top-1 in %, mean ± std over seeds. *last*: the last epoch\'s '
        'checkpoint; *best*: the checkpoint with the best held-out top-1 '
        f'(validated every {mode.val_every or mode.epochs} epochs), then '
        'tested once: the test set picks nothing. Teacher forwards = '
        'samples trained on (a summary blend is one image).', '',
        '| arm | seeds | held-out last | held-out best | test last | '
        'test (best held-out ckpt) | samples = teacher fwd vs KD | '
        'theta, K | train s/run | s/iter |',
        '|---|---|---|---|---|---|---|---|---|---|']
    main = [r for r in rows
            if r['budget'] is None and not r.get('variant')]
    for r in sorted(main, key=lambda r: list(ARMS).index(r['arm'])):
        n = len(r['seeds'])
        sched = (f'{r["theta"]}, {r["num_steps"]}'
                 if r['theta'] is not None else '-')
        cap = ' (capped)' if r['capped'] else ''
        accs = ' | '.join(
            _fmt(r.get(mean, math.nan), r.get(sd), n)
            for mean, sd in (('holdout_top1', 'holdout_sd'),
                             ('holdout_best', 'holdout_best_sd'),
                             ('test_top1', 'test_sd'),
                             ('test_best', 'test_best_sd')))
        lines.append(
            f'| {LABELS[r["arm"]]} | {n} | {accs} | '
            f'{r["samples_vs_kd"]:.3f}{cap}'
            f'{" (no teacher)" if r["arm"] == "student" else ""} | {sched} | '
            f'{r["train_seconds"]:.0f} | {r["seconds_per_iter"]:.3f} |')
    curve = [r for r in rows
             if r['budget'] is not None and not r.get('variant')]
    if curve:
        kcd = next(r for r in main if r['arm'] == 'kcd')
        lines += ['', 'Budget curve (seed 0 unless a seed count is given; '
                  'the main arms above are the '
                  f'{kcd["samples_vs_kd"]:.3f} point):', '',
                  '| budget | theta, K | KCD held-out / test | random '
                  'held-out / test | InfoBatch held-out / test (samples) |',
                  '|---|---|---|---|---|']

        def both(r):
            n = len(r['seeds'])
            seeds = f' ({n} seeds)' if n > 1 else ''
            return (f'{_fmt(r["holdout_top1"], r["holdout_sd"], n)} / '
                    f'{_fmt(r["test_top1"], r["test_sd"], n)}{seeds}')

        for budget in sorted({r['budget'] for r in curve}):
            cells = {r['arm']: r for r in curve if r['budget'] == budget}
            k = cells['kcd']
            ib = cells['infobatch']
            lines.append(
                f'| {budget:.3f} | {k["theta"]}, {k["num_steps"]} | '
                f'{both(k)} | {both(cells["random"])} | {both(ib)} '
                f'({ib["samples_vs_kd"]:.3f}'
                f'{", capped" if ib["capped"] else ""}) |')
    ablation = [r for r in rows if r.get('variant')]
    if ablation:
        lines += ['', 'Ablations (KD + KCD on the budget\'s schedule, one '
                  'change each from the reference setting of the budget '
                  'curve\'s KCD row: value=entropy, summary on, stages of '
                  f'{mode.stage_epochs} epochs):', '',
                  '| variant | budget | seeds | held-out last | held-out best '
                  '| test last | test (best held-out ckpt) | samples vs KD |',
                  '|---|---|---|---|---|---|---|---|']
        for r in ablation:
            n = len(r['seeds'])
            lines.append(
                f'| {r["variant"]} | {r["budget"]:.3f} | {n} | '
                f'{_fmt(r["holdout_top1"], r["holdout_sd"], n)} | '
                f'{_fmt(r["holdout_best"], r["holdout_best_sd"], n)} | '
                f'{_fmt(r["test_top1"], r["test_sd"], n)} | '
                f'{_fmt(r["test_best"], r["test_best_sd"], n)} | '
                f'{r["samples_vs_kd"]:.3f} |')
    estep = summary['micro']['estep']
    epochs = estep.get('epochs', 100)
    lines += ['', 'E-step (benchmarks/bench_estep.py, 1 thread; each N in a '
              'fresh process): kcd_mm\'s O(N) bank against the reference\'s '
              f'way, an N x {epochs} float32 history reduced at the E-step '
              '(re-implemented here, then the same E-step; not timed '
              'where the history would exceed '
              f'{estep.get("ref_max_gib", 4):g} GiB). *peak+*: memory '
              'above what was resident '
              'before the E-step.', '',
              '| N | kcd_mm s | kcd_mm state MiB | kcd_mm peak+ MiB | '
              'reference s | reference history MiB | reference peak+ MiB |',
              '|---|---|---|---|---|---|---|']

    def cell(x, fmt):
        return '-' if x is None else fmt(x)

    def mib(x):
        return cell(x, lambda v: f'{v / 2**20:.1f}')

    for row in estep['rows']:
        lines.append(
            f'| {row["num_samples"]:,} | {row["estep_seconds"]:.3f} | '
            f'{mib(row["state_bytes"])} | '
            f'{mib(row.get("estep_peak_extra_bytes"))} | '
            f'{cell(row.get("reference_seconds"), lambda v: f"{v:.3f}")} | '
            f'{mib(row.get("reference_history_bytes"))} | '
            f'{mib(row.get("reference_peak_extra_bytes"))} |')
    over = summary['micro']['overhead']
    kd_ms = statistics.median(over['kd_seconds']) * 1e3
    kcd_ms = statistics.median(over['kcd_seconds']) * 1e3
    rounds = len(over['kd_seconds'])
    lines += ['', f'Per-iteration overhead (benchmarks/bench_overhead.py '
              f'{" ".join(mode.overhead_args) or "(defaults)"}): KD '
              f'{kd_ms:.1f} ms, KCD {kcd_ms:.1f} ms, ratio '
              f'{over["ratio"]:.3f}'
              + (' (a single round on a shared machine: load, not KCD, '
                 'moves this; the full mode takes the median of 3)'
                 if rounds < 3 else f' (median of {rounds} rounds)') +
              '. The arms\' own logged s/iter above ran in parallel under '
              'shared load and are not an overhead measurement.', '']
    for path in plots:
        rel = osp.relpath(path, osp.join(ROOT, 'docs'))
        lines.append(f'![{osp.basename(path)}]({rel})')
    return '\n'.join(lines) + '\n'


def write_docs(text: str, mode_name: str) -> None:
    """Replace this mode's block of docs/results.md, keeping the rest."""
    path = osp.join(ROOT, 'docs', 'results.md')
    begin = f'<!-- bench:{mode_name}:begin -->'
    end = f'<!-- bench:{mode_name}:end -->'
    with open(path) as f:
        doc = f.read()
    block = f'{begin}\n{text}{end}'
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) +
                                                  len(end):]
    else:
        doc = doc.rstrip('\n') + '\n\n' + block + '\n'
    with open(path, 'w') as f:
        f.write(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mode', choices=sorted(MODES), default='quick')
    parser.add_argument('--jobs', type=int, default=2,
                        help='arms trained at once (one thread each)')
    parser.add_argument('--work-dir', help='default work_dirs/bench_MODE')
    parser.add_argument('--force', action='store_true',
                        help='run arms again even when finished')
    parser.add_argument('--no-docs', action='store_true',
                        help='do not touch docs/results.md and docs/img')
    parser.add_argument('--docs-only', action='store_true',
                        help='rewrite the docs from the last results json')
    args = parser.parse_args()
    mode = MODES[args.mode]
    out = osp.join(ROOT, 'benchmarks', 'results', f'bench_{args.mode}.json')
    if args.docs_only:
        with open(out) as f:
            summary = json.load(f)
        plots = plot(summary['arms'], summary['table'], mode, args.mode)
        write_docs(markdown(summary, summary['table'], mode, args.mode,
                            plots), args.mode)
        return
    root = osp.abspath(args.work_dir or
                       osp.join(ROOT, 'work_dirs', f'bench_{args.mode}'))
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    ensure_teacher()
    arms = sorted(plan_arms(mode), key=lambda a: -a.cost)
    print(f'{len(arms)} arms, {args.jobs} at a time, in {root}')

    def one(arm: Arm) -> Dict:
        t = time.perf_counter()
        result = run_arm(arm, mode, root, args.force)
        print(f'  {arm.name:<18} held-out {result["holdout_top1"]:.2f}  '
              f'test {result["test_top1"]:.2f}  samples '
              f'{result["samples_vs_kd"]:.3f} of KD  '
              f'({time.perf_counter() - t:.0f} s)', flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, arms))
    teacher_test = eval_teacher(root)
    micro = run_micro(mode, args.mode)
    rows = aggregate(results)
    summary = dict(
        mode=args.mode, settings=asdict(mode), jobs=args.jobs,
        date=time.strftime('%Y-%m-%d %H:%M'),
        wall_seconds=round(time.perf_counter() - start, 1),
        load_start=round(load_start, 2),
        load_end=round(os.getloadavg()[0], 2), micro=micro, table=rows,
        teacher_test_top1=teacher_test,
        reused=sum(bool(r.pop('reused', False)) for r in results),
        arms=results)
    with open(out, 'w') as f:
        json.dump(summary, f, indent=1)
    if not args.no_docs:
        plots = plot(results, rows, mode, args.mode)
        write_docs(markdown(summary, rows, mode, args.mode, plots),
                   args.mode)
    print(f'done in {summary["wall_seconds"] / 60:.1f} min: {out}')


if __name__ == '__main__':
    main()
