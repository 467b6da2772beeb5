"""KCD's per-iteration cost against plain KD, side by side in one process.

    python benchmarks/bench_overhead.py [--images 2048] [--epochs 3]
        [--rounds 3] [--batch 64] [--out FILE]

Builds the same tiny logits-KD recipe three times through mmengine's
Runner: plain KD; KD + KCD reading its values from the student classifier
(a forward hook on head.fc, the three-line recipe); and KD + KCD reading
them from a ValueWeightedLoss around the distill loss. KCD runs with
stage_epochs = max_epochs, so the bookkeeping runs on every iteration and
epoch but no condensation changes the data. The arms alternate for
``--rounds`` rounds, the order reversed every other round (so a steady
drift in machine speed cancels), on the same generated 28x28 images. Time
per training iteration is measured between the first-epoch warm-up and
the end of training. Prints the ratios to KD and writes
benchmarks/results/overhead.json. Target: <= 1.01. The images and configs
come from :mod:`kcd_mm.testing`.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import kcd_mm  # noqa: E402,F401,I001  isort:skip  (its shims go first)
from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from kcd_mm.testing import (add_kcd, make_image_folder,  # noqa: E402
                            tiny_kd_config)


class IterClock(Hook):
    """Seconds per training iteration after the first (warm-up) epoch."""
    priority = 'LOWEST'

    def __init__(self):
        self.start = self.iters = None

    def after_train_epoch(self, runner):
        if self.start is None:
            self.start, self.iters = time.perf_counter(), runner.iter

    def after_train(self, runner):
        self.seconds = (time.perf_counter() - self.start) / (
            runner.iter - self.iters)


def run(cfg: dict, work_dir: str) -> float:
    """Train ``cfg`` in ``work_dir``; return its seconds per iteration."""
    cfg = Config(cfg)
    cfg.work_dir = work_dir
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    clock = IterClock()
    runner.register_hook(clock)
    runner.train()
    return clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=2048)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument(
        '--out', default=osp.join(ROOT, 'benchmarks', 'results',
                                  'overhead.json'))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix='kcd_bench_')
    data = make_image_folder(osp.join(tmp, 'data'), args.images, 10, 28, 1)
    kd = tiny_kd_config(data, num_classes=10, in_channels=1,
                        max_epochs=args.epochs, batch_size=args.batch)
    kd['train_cfg']['val_interval'] = 10**6
    kd['default_hooks']['checkpoint']['interval'] = 10**6
    kd['default_hooks']['logger']['interval'] = 10**6
    arms = (('kd', kd),
            ('kcd', add_kcd(kd, stage_epochs=args.epochs, wrap_losses=False)),
            ('kcd_wrapped', add_kcd(kd, stage_epochs=args.epochs)))
    times = {arm: [] for arm, _ in arms}
    for r in range(args.rounds):
        # Reversed every other round: a steady drift in speed cancels out.
        for arm, cfg in (arms if r % 2 == 0 else arms[::-1]):
            times[arm].append(run(cfg, osp.join(tmp, f'{arm}{r}')))
            print(f'round {r} {arm:>11}: {times[arm][-1] * 1e3:.1f} ms/iter')
    median = {arm: statistics.median(t) for arm, t in times.items()}
    ratio = median['kcd'] / median['kd']
    wrapped = median['kcd_wrapped'] / median['kd']
    print(f"median ms/iter: KD {median['kd'] * 1e3:.2f}, KCD (classifier) "
          f"{median['kcd'] * 1e3:.2f}, KCD (wrapped loss) "
          f"{median['kcd_wrapped'] * 1e3:.2f}; KCD/KD = {ratio:.3f}, "
          f'wrapped/KD = {wrapped:.3f} (target <= 1.01); load '
          f'{os.getloadavg()[0]:.2f}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(vars(args), kd_seconds=times['kd'],
                       kcd_seconds=times['kcd'],
                       kcd_wrapped_seconds=times['kcd_wrapped'], ratio=ratio,
                       ratio_wrapped=wrapped,
                       load=round(os.getloadavg()[0], 2)), f, indent=2)


if __name__ == '__main__':
    main()
