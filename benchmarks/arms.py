"""The benchmark's arms: what each one runs, and running it.

An arm is ``tools/train.py`` on a shipped config (:data:`CONFIGS`) with
``--cfg-options`` (:func:`cfg_options`), then ``tools/test.py`` on its last
checkpoint and on its held-out best one (:func:`run_arm`). :func:`plan_arms`
lists a mode's arms: the main ones (:data:`ARMS`, seeds per
``Mode.seeds``), the budget curve and the ablations.
"""
import glob
import json
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from kcd_mm import analysis, records
from cache import cached_result, weights_sha256
from modes import ROOT, Mode, choose_schedule  # first: ROOT on sys.path

# Where tools/run_demo.sh keeps the teacher (it honours TEACHER_DIR too).
TEACHER = osp.join(os.environ.get('TEACHER_DIR', 'work_dirs/demo_teacher'),
                   'teacher.pth')
CONFIGS = dict(
    student='configs/students/resnet18_w4_fashionmnist.py',
    kd='configs/kd/kd_demo_fashionmnist.py',
    kcd='configs/kcd/kcd_demo_fashionmnist.py')
# arm -> (config kind, KCDHook options beyond the schedule)
ARMS = dict(
    student=('student', {}),
    kd=('kd', {}),
    kd_60k=('kd', {}),
    # KD once more with a seed already run: a wall-clock partner, and a
    # check that a run is reproduced (issue 21).
    kd_60k_wall=('kd', {}),
    kcd=('kcd', {}),
    kcd_60k=('kcd', {}),
    kcd_stage=('kcd', dict(summary='stage')),
    kcd_prune=('kcd', dict(summary=False)),
    random=('kcd', dict(strategy='random')),
    infobatch=('kcd', dict(strategy='infobatch')),
    per_epoch_random=('kcd', dict(strategy='per_epoch_random')),
    # The efficiency test's arms (issue 21), all from the 60k teacher.
    random_60k=('kcd', dict(strategy='random')),
    per_epoch_random_60k=('kcd', dict(strategy='per_epoch_random')),
    infobatch_60k=('kcd_infobatch', dict(strategy='infobatch',
                                         infobatch_ratio=0.5)))
# The main arms of a mode that does not list its own.
DEMO_ARMS = ('student', 'kd', 'kcd', 'kcd_prune', 'random', 'infobatch')
# Arms' own --cfg-options: KD (and KCD) from the demo's w16 teacher (all
# 60,000 images) in a mode whose own teacher is another.
_TEACHER_60K = {
    'model.teacher.backbone.stem_channels': 16,
    'model.teacher.backbone.base_channels': 16,
    'model.teacher.head.in_channels': 128,
    'model.teacher_ckpt': TEACHER}
ARM_CFG = {arm: _TEACHER_60K for arm in (
    'kd_60k', 'kd_60k_wall', 'kcd_60k', 'random_60k', 'per_epoch_random_60k',
    'infobatch_60k')}
# The arm each is compared with seed by seed (others: KD): same teacher.
PAIR_BASE = {arm: 'kd_60k' for arm in ARM_CFG if arm != 'kd_60k'}
LABELS = dict(
    student='1 student alone', kd='2 KD', kd_60k='2b KD, 60k-image teacher',
    kd_60k_wall='2c KD again (a seed run before), 60k-image teacher',
    kcd='3 KD+KCD', kcd_60k='3c KD+KCD, 60k-image teacher',
    kcd_stage='3b KD+KCD, stage summary',
    kcd_prune='4 KCD prune-only', random='5 random, KCD budget',
    infobatch='6 InfoBatch, KCD budget',
    per_epoch_random='7 per-epoch random, KCD budget',
    random_60k='5c random, KCD budget, 60k-image teacher',
    per_epoch_random_60k='7c per-epoch random, KCD budget, 60k teacher',
    infobatch_60k='6c InfoBatch r=0.5, 60k-image teacher')
REFERENCE = dict(theta=0.7, num_steps=6)  # the configs' (reference) values


@dataclass
class Arm:
    """One training run of the benchmark and how it differs from KD.

    Attributes:
        name: its work dir's name, e.g. ``kcd_s0``, ``random_b50_s0``.
        arm: its key of :data:`ARMS`.
        seed: ``randomness.seed``.
        budget: the budget curve's fraction; None for the main arms.
        hook: KCDHook options (``custom_hooks.0.*``); empty without KCD.
        variant: an ablation's name; empty otherwise.
        cfg: the ablation's extra ``--cfg-options``.
    """
    name: str  # work dir name, e.g. kcd_s0, random_b50_s0
    arm: str  # key of ARMS
    seed: int
    budget: Optional[float] = None  # None: the main arms' schedule
    hook: Dict = field(default_factory=dict)  # KCDHook options
    variant: str = ''  # an ablation's name
    cfg: Dict = field(default_factory=dict)  # its extra --cfg-options
    config: str = ''  # its config file (relative to ROOT); '' the demo's

    def __post_init__(self):
        self.config = self.config or CONFIGS[ARMS[self.arm][0]]

    @property
    def cost(self) -> float:
        """Relative run time, for scheduling the longest first."""
        if self.arm == 'student':
            return 0.7
        return 1.0 if self.arm == 'kd' else (self.budget or 0.875)


def plan_arms(mode: Mode) -> List[Arm]:
    """Every arm of ``mode``: main arms, budget curve, ablations.

    Args:
        mode (Mode): The benchmark setting.

    Returns:
        list[Arm]: The main arms (each seed of ``mode.seeds``), then per
        budget KCD, random and InfoBatch on :func:`choose_schedule`'s
        schedule, then ``mode.matched``'s, then the ablations on their
        budget's schedule.
    """
    configs = mode.configs or CONFIGS

    def config(arm: str) -> str:
        return configs[ARMS[arm][0]]

    arms = []
    for arm in mode.arms or DEMO_ARMS:
        extra = ARMS[arm][1]
        for seed in mode.seeds.get(arm, (0, )):
            hook = {}
            if ARMS[arm][0].startswith('kcd'):
                hook = dict(stage_epochs=mode.stage_epochs, **extra)
            arms.append(Arm(f'{arm}_s{seed}', arm, seed, None, hook,
                            cfg=dict(ARM_CFG.get(arm, {})),
                            config=config(arm)))

    def at_budget(arm: str, budget: float, seeds) -> None:
        theta, steps, _ = choose_schedule(mode.n_train, mode.epochs,
                                          mode.stage_epochs, budget)
        hook = dict(stage_epochs=mode.stage_epochs, theta=theta,
                    num_steps=steps, **ARMS[arm][1])
        for seed in seeds:
            arms.append(
                Arm(f'{arm}_b{round(100 * budget)}_s{seed}', arm, seed,
                    budget, dict(hook), cfg=dict(ARM_CFG.get(arm, {})),
                    config=config(arm)))

    for budget in mode.budgets:
        for arm in mode.budget_arms:
            at_budget(arm, budget, mode.budget_seeds.get(budget, (0, ))
                      if arm != 'infobatch' else (0, ))
    for arm, budget, seeds, _ in mode.matched:
        at_budget(arm, budget, seeds)
    for variant, budget, cfg in mode.ablations:
        stage_epochs = int(cfg.get('custom_hooks.0.stage_epochs',
                                   mode.stage_epochs))
        hook = dict(stage_epochs=stage_epochs)  # budget None: the configs'
        prefix = 'kcd'
        if budget is not None:
            theta, steps, _ = choose_schedule(mode.n_train, mode.epochs,
                                              stage_epochs, budget)
            hook.update(theta=theta, num_steps=steps)
            prefix = f'kcd_b{round(100 * budget)}'
        slug = ''.join(c if c.isalnum() else '_' for c in variant)
        seeds = mode.ablation_seeds.get(
            f'{prefix}_{slug}', mode.ablation_seeds.get(variant, (0, )))
        for seed in seeds:
            arms.append(
                Arm(f'{prefix}_{slug}_s{seed}', 'kcd', seed, budget,
                    dict(hook), variant, dict(cfg), config=config('kcd')))
    names = [a.name for a in arms]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # a work dir (and a cached result) each
        raise ValueError(f'arms {twice} are planned twice: a budget of '
                         'Mode.matched rounds to one of Mode.budgets')
    return arms


def cfg_options(arm: Arm, mode: Mode) -> List[str]:
    """--cfg-options of an arm: data split, schedule, seed, teacher, KCD."""
    # In KnowledgeSummaryDataset (every KCDHook config here wraps it).
    wrapped = ARMS[arm.arm][0].startswith('kcd')
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
    }
    if mode.cosine:
        opts['param_scheduler.T_max'] = mode.epochs
    opts['randomness.seed'] = arm.seed
    if arm.arm != 'student':
        opts['model.teacher_ckpt'] = (mode.teacher or (None, TEACHER))[1]
        # The student only: the distill val loop would also evaluate the
        # (fixed) teacher at every validation; it is evaluated once apart.
        opts['val_cfg.type'] = 'ValLoop'
    for key, value in arm.hook.items():
        opts[f'custom_hooks.0.{key}'] = value
    opts.update(arm.cfg)
    if arm.arm != 'student':  # in place: the options' order is the key
        opts['model.teacher_ckpt'] = teacher_file(arm, mode)
    return [f'{k}={v}' for k, v in opts.items()]


def tool_env(threads: int = 1) -> Dict[str, str]:
    """A tool process's environment: ``threads`` OpenMP threads, kcd_mm
    importable."""
    env = dict(os.environ)
    # One thread a process: two spinning OpenMP pools on a busy 2-core
    # machine slow a run down ~10x (measured with the teacher here).
    env['OMP_NUM_THREADS'] = str(threads)
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


def teacher_file(arm: Arm, mode: Mode) -> str:
    """The weights file (relative to ROOT) of the arm's teacher: its own
    (the 60k-image teacher: ``mode.teacher_60k``, else the arm's), else
    the mode's."""
    if 'model.teacher_ckpt' in arm.cfg:
        return mode.teacher_60k or arm.cfg['model.teacher_ckpt']
    return (mode.teacher or (None, TEACHER))[1]


def teacher_weights(arm: Arm, mode: Mode) -> Optional[str]:
    """The :func:`cache.weights_sha256` of the teacher the arm distils
    from (None: no teacher, or none on disk yet)."""
    if arm.arm == 'student':
        return None
    return weights_sha256(osp.join(ROOT, teacher_file(arm, mode)))


def finished(arm: Arm, mode: Mode, root: str) -> Optional[Dict]:
    """The arm's cached result (``reused=True``, see :mod:`cache`; from
    an earlier session with ``mode.across_sessions``), or None when it has
    not finished or ran with other options (or, with
    ``mode.same_teacher``, from a teacher of other weights)."""
    teacher = teacher_weights(arm, mode) if mode.same_teacher else None
    if mode.same_teacher and teacher is None and arm.arm != 'student':
        return None  # no teacher on disk yet: nothing can match it
    return cached_result(arm.name, cfg_options(arm, mode),
                         osp.join(root, arm.name), teacher,
                         committed=mode.across_sessions)


def run_arm(arm: Arm, mode: Mode, root: str, force: bool) -> Dict:
    """Train, test and summarise one arm (cached in its work dir).

    Args:
        arm (Arm): The arm.
        mode (Mode): The benchmark setting.
        root (str): The folder of the arms' work dirs.
        force (bool): Run it again even when its ``bench_result.json``
            says it finished with the same options.

    Returns:
        dict: The arm, its options, held-out and test top-1 (last and
        best checkpoint), samples trained on against KD, timings and KCD's
        stage records; ``reused=True`` when it came from the cache.
    """
    work = osp.join(root, arm.name)
    result_path = osp.join(work, 'bench_result.json')
    opts = cfg_options(arm, mode)
    cached = None if force else finished(arm, mode, root)
    if cached is not None:
        return cached
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    python = sys.executable
    started_at = time.time()  # wall clock, to find runs that overlapped
    start = time.perf_counter()
    with open(osp.join(work, 'train.out'), 'w') as out:
        subprocess.run([python, 'tools/train.py', arm.config, '--work-dir',
                        work, '--cfg-options', *opts], cwd=ROOT,
                       env=tool_env(), stdout=out, stderr=subprocess.STDOUT,
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
        started_at=round(started_at, 1),
        teacher_weights_sha256=teacher_weights(arm, mode),
        ended_at=round(started_at + train_seconds, 1),
        seconds_per_iter=statistics.median(iter_times)
        if iter_times else None,
        stages=[])
    if arm.hook:
        progress = analysis.read_progress(ckpt)
        result['sample_iters'] = progress['sample_iters']
        result['full_kd_sample_iters'] = progress['full_kd_sample_iters']
        result['stages'] = records.read_records(work)
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
    os.makedirs(osp.dirname(work), exist_ok=True)  # a fresh checkout
    with open(work + '.out', 'w') as out:
        subprocess.run([sys.executable, 'tools/test.py', config, ckpt,
                        '--work-dir', work] +
                       (['--cfg-options', *opts] if opts else []),
                       cwd=ROOT, env=tool_env(), stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    return _top1(_scalars(work))


DEMO_TEACHER = ('configs/teachers/resnet18_w16_fashionmnist.py', TEACHER)
# Threads of a teacher's training: alone on the machine, both cores.
TEACHER_THREADS = 2


def _teachers(mode: Mode, arms: List[Arm]) -> List[Tuple[str, str]]:
    """(config, weights) of every teacher the arms use."""
    teachers = [mode.teacher or DEMO_TEACHER]
    if any(a.arm in ARM_CFG for a in arms):
        teachers.append((DEMO_TEACHER[0], mode.teacher_60k or TEACHER))
    return list(dict.fromkeys(teachers))


def eval_teacher(root: str, mode: Mode,
                 arms: List[Arm]) -> Dict[str, float]:
    """Each teacher's test top-1, once (it never changes). Not on the
    held-out images: the demo's teacher was trained on the whole training
    file."""
    return {
        config: _test(config, ckpt,
                      osp.join(root, 'teacher_test_' + osp.basename(
                          config)[:-3]), [])
        for config, ckpt in _teachers(mode, arms)}


def ensure_teacher(mode: Mode, arms: List[Arm]) -> None:
    """Prepare the data and train each teacher the mode needs, once: the
    demo's with tools/run_demo.sh, another with tools/train.py, keeping
    its weights in the mode's teacher file."""
    subprocess.run([sys.executable, 'tools/prepare_fashion_mnist.py',
                    '--per-class', '500'], cwd=ROOT, env=tool_env(),
                   check=True, stdout=subprocess.DEVNULL)
    # Always the same thread count: a float sum's order, and so the
    # weights, depend on it; with it fixed, a session that trains the
    # teacher again on this kind of machine gets the same weights and its
    # runs pair with earlier sessions' (cache.weights_sha256 checks).
    env = tool_env(TEACHER_THREADS)
    for config, ckpt in _teachers(mode, arms):
        if osp.isfile(osp.join(ROOT, ckpt)):
            continue
        print(f'teacher: none yet in {ckpt}, training {config} '
              f'({TEACHER_THREADS} threads)')
        if config == DEMO_TEACHER[0]:
            work = (osp.dirname(TEACHER) if ckpt == TEACHER else
                    osp.join('work_dirs', 'teacher_' + osp.basename(
                        ckpt)[:-len('.pth')]))
            subprocess.run(['bash', 'tools/run_demo.sh', '--teacher-only'],
                           cwd=ROOT, env=dict(env, TEACHER_DIR=work),
                           check=True)
            if ckpt != TEACHER:  # a mode's own copy (e.g. committed)
                os.makedirs(osp.dirname(osp.join(ROOT, ckpt)),
                            exist_ok=True)
                shutil.copyfile(osp.join(ROOT, work, 'teacher.pth'),
                                osp.join(ROOT, ckpt))
            continue
        work = osp.dirname(ckpt)
        subprocess.run([sys.executable, 'tools/train.py', config,
                        '--work-dir', work], cwd=ROOT, env=env,
                       check=True)
        with open(osp.join(ROOT, work, 'last_checkpoint')) as f:
            last = f.read().strip()
        subprocess.run([sys.executable,
                        'tools/model_converters/extract_state_dict.py', last,
                        ckpt], cwd=ROOT, env=tool_env(), check=True)
