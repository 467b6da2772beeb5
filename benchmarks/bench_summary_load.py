"""Images/s of the ImageNet training pipeline with the summary's keys.

    python benchmarks/bench_summary_load.py [--files 384] [--rounds 8]
        [--workers 1 4] [--batch 32] [--stage-share 0.0526]
        [--persistent-shares 0.05 0.10 0.23] [--max-terms 4]
        [--config configs/kcd/kcd_r34_r18_imagenet.py] [--quick] [--out FILE]

What a blended sample costs where it is paid: in the data loader. The
ImageNet config's training pipeline (LoadImageFromFile, RandomResizedCrop
224, RandomFlip, PackInputs, read from ``--config``) runs over ``--files``
JPEGs that the script writes into a temporary CustomDataset folder
(ImageNet-like sizes, most with a 500-pixel long side, some smaller and
larger; smooth structure plus noise, quality 90, so they compress and
decode like photos), through a torch DataLoader (``pseudo_collate``, as
mmengine's Runner builds it) whose sampler yields the keys, once with each
``--workers`` count. Arms, each one pass over all files per round:

- ``plain``: the CustomDataset itself, integer keys;
- ``stage``: :class:`KnowledgeSummaryDataset`, ``--stage-share`` of the
  keys ``(i, partner, lam)`` (``summary='stage'``; the default is the
  reference setting's first stage, theta 0.7, K 6: L = 0.05 N pairs over
  0.95 N kept), the rest integers;
- ``persistent@s``: the wrapper, a share ``s`` of the keys
  ``(i, ((j, w), ...))`` (``summary='persistent'`` on a file dataset).
  Their terms are drawn from a :class:`kcd_mm.core.summary.TermSummary`
  (``--max-terms``) run over the reference's five E-steps on
  ``--sim-samples`` simulated samples (values correlated across stages by
  ``--persistence``; dropped samples last), taken from the simulated stage
  whose carrying-blend share is nearest ``s``.

Every round builds one shuffled order of the files that all arms share
(they differ only in which keys carry a payload; arms with equal shares
blend the same samples), cuts each arm's keys into batches and runs one
DataLoader pass in which the arms take turns batch by batch (A B C C B A
...), so that a change in machine load hits all arms alike; the worker
counts alternate in ABBA order across rounds. The measure is the workers'
CPU time per sample, taken around each ``__getitem__`` (robust to other
jobs on the machine; their wall time per sample is reported too).
Reported per arm and worker count: CPU and wall milliseconds per sample,
their ratios to ``plain`` (over all rounds, and the median and range of
the per-round ratios), images/s (the mixed passes' measured rate scaled
by CPU time per sample: the loader is CPU-bound), the extra image loads
per sample and the CPU milliseconds each extra load adds. Writes
``benchmarks/results/summary_load.json``
(``--quick``: ``summary_load_quick.json``). No timing is asserted.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import List, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import kcd_mm  # noqa: E402,F401,I001  isort:skip  (its shims go first)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import pseudo_collate  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from kcd_mm.core.condensation import (condense, next_keep_size,  # noqa: E402
                                      rank_samples)
from kcd_mm.core.summary import TermSummary, reference_lams  # noqa: E402
from kcd_mm.dataset import KnowledgeSummaryDataset  # noqa: E402

DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'kcd', 'kcd_r34_r18_imagenet.py')
RESULTS = osp.join(ROOT, 'benchmarks', 'results')
# Reference setting (configs/kcd/kcd_r34_r18_imagenet.py): five E-steps.
THETA, STEPS, ESTEPS, LAM_RANGE = 0.7, 6, 5, (0.7, 1.0)
# (long side, weight): ImageNet's training images mostly have a 500-pixel
# long side; the rest spread below and above it.
LONG_SIDES = ((500, 0.7), ((200, 460), 0.15), ((600, 1000), 0.15))
ASPECTS = (4 / 3, 3 / 4, 3 / 2, 2 / 3, 1.0, 5 / 4, 16 / 9)


# --- the images ---------------------------------------------------------


def photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A BGR uint8 image with smooth structure at four scales plus noise,
    which JPEG compresses about as it does a photo (~0.4 B/pixel at
    quality 90)."""
    img = np.full((height, width, 3), 120, np.float32)
    long_side = max(height, width)
    for cells, amp in ((3, 60), (10, 35), (40, 20), (150, 12)):
        grid = (max(2, width * cells // long_side),
                max(2, height * cells // long_side))
        field = rng.standard_normal((grid[1], grid[0], 3), np.float32)
        img += amp * cv2.resize(field, (width, height),
                                interpolation=cv2.INTER_CUBIC)
    img += 10 * rng.standard_normal((height, width, 3), np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_size(rng: np.random.Generator, scale: float) -> tuple:
    """(height, width) of one image, ImageNet-like, times ``scale``."""
    sides, weights = zip(*LONG_SIDES)
    pick = sides[rng.choice(len(sides), p=np.array(weights))]
    long_side = pick if isinstance(pick, int) else int(rng.integers(*pick))
    aspect = ASPECTS[rng.integers(len(ASPECTS))]  # width / height
    if aspect >= 1:
        width, height = long_side, long_side / aspect
    else:
        width, height = long_side * aspect, long_side
    return (max(8, round(height * scale)), max(8, round(width * scale)))


def make_jpeg_folder(root: str, num_images: int, num_classes: int = 4,
                     scale: float = 1.0, seed: int = 0) -> dict:
    """Write ``num_images`` JPEGs as a CustomDataset class-folder tree
    (round robin over ``class_0 ... class_{C-1}``, as
    :func:`kcd_mm.testing.make_image_folder` lays out its PNGs); returns
    the sizes written."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        os.makedirs(osp.join(root, f'class_{c}'), exist_ok=True)
    pixels, nbytes = [], []
    for i in range(num_images):
        height, width = image_size(rng, scale)
        ok, buf = cv2.imencode('.jpg', photo(height, width, rng),
                               [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        path = osp.join(root, f'class_{i % num_classes}', f'{i:05d}.jpg')
        with open(path, 'wb') as f:
            f.write(buf.tobytes())
        pixels.append(height * width)
        nbytes.append(buf.size)
    return dict(files=num_images, mean_pixels=float(np.mean(pixels)),
                median_pixels=float(np.median(pixels)),
                max_pixels=int(max(pixels)),
                mean_kb=float(np.mean(nbytes)) / 1e3,
                bytes_per_pixel=float(sum(nbytes)) / sum(pixels))


def train_pipeline(config: str) -> list:
    """The training pipeline of ``config``'s (innermost) training set."""
    dataset = Config.fromfile(config).train_dataloader.dataset
    while 'pipeline' not in dataset and 'dataset' in dataset:
        dataset = dataset.dataset
    return [dict(t) for t in dataset.pipeline]


# --- the persistent summary's terms, simulated --------------------------


def simulate_terms(num_samples: int, max_terms: int, persistence: float,
                   seed: int = 0) -> List[dict]:
    """The persistent summary of a file dataset over the reference
    schedule's E-steps, on simulated values.

    Each stage a sample's value is ``sqrt(p) z + sqrt(1 - p) e`` (``z``
    fixed per sample, ``e`` fresh); dropped samples have no visits, so
    they rank last, as in :func:`kcd_mm.core.condensation.cost_aware_scores`.
    Returns per E-step the carrying-blend share of the kept set, the term
    count histogram and each carrier's terms as ``(own, weight)`` pairs.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal(num_samples)
    summary = TermSummary(LAM_RANGE, max_terms)
    kept, current, stages = None, num_samples, []
    for stage in range(1, ESTEPS + 1):
        value = (np.sqrt(persistence) * latent + np.sqrt(1 - persistence) *
                 rng.standard_normal(num_samples))
        scores = np.exp(value)
        if kept is not None:
            visited = np.zeros(num_samples, bool)
            visited[kept.numpy()] = True
            scores[~visited] = 0.0
        order = rank_samples(torch.from_numpy(scores))
        num_keep = next_keep_size(num_samples, current, THETA, STEPS)
        pairs = condense(order, current, num_keep, LAM_RANGE)
        record = summary.update(pairs)
        profiles = [tuple((j == i, w) for j, w in terms)
                    for i, (terms, ) in summary.payloads(pairs.kept).items()]
        counts = np.bincount([len(p) for p in profiles],
                             minlength=max_terms + 1)
        stages.append(dict(
            stage=stage, kept=num_keep,
            carrying_share=record['carrying_blend'] / num_keep,
            loads_per_sample=record['loads_per_sample'],
            max_weight_dropped=record['max_weight_dropped'],
            terms_histogram=counts.tolist(), profiles=profiles))
        kept, current = pairs.kept, num_keep
    return stages


# --- the keys ------------------------------------------------------------


def _others(rng: np.random.Generator, idx: int, count: int,
            num: int) -> List[int]:
    """``count`` distinct indices in [0, num), none of them ``idx``."""
    picks = rng.choice(num - 1, size=count, replace=False)
    return [int(j) + (j >= idx) for j in picks]


def make_keys(arm: dict, order: Sequence[int], picks: Sequence[int],
              rng: np.random.Generator) -> tuple:
    """The sampler's keys for one pass of ``arm`` over ``order``, and the
    image loads they ask for. The first ``share * len(order)`` positions
    of ``picks`` carry a payload: arms handed the same ``picks`` blend
    the same samples, as far as their shares overlap."""
    num = len(order)
    keys = list(order)
    loads = num
    if arm['kind'] == 'plain':
        return keys, loads
    carriers = max(1, round(arm['share'] * num)) if arm['share'] else 0
    positions = picks[:carriers]
    if arm['kind'] == 'stage':
        lams = reference_lams(carriers, LAM_RANGE)
        for k, pos in enumerate(positions):
            idx = keys[pos]
            keys[pos] = (idx, _others(rng, idx, 1, num)[0], float(lams[k]))
            loads += 1
        return keys, loads
    profiles = arm['profiles']
    for pos in positions:
        idx = keys[pos]
        profile = profiles[rng.integers(len(profiles))]
        others = iter(_others(rng, idx, sum(not own for own, _ in profile),
                              num))
        keys[pos] = (idx, tuple((idx if own else next(others), w)
                                for own, w in profile))
        loads += sum(not own for own, _ in profile)  # own is loaded anyway
    return keys, loads


class KeyBatches(Sampler):
    """Yields the batches of keys it is handed (in the main process, as
    KCDSampler's keys are made); persistent workers get each pass's keys
    through the index queue."""

    def __init__(self) -> None:
        self.batches: List[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Timed(Dataset):
    """Key ``(arm, key)``: ``datasets[arm != 0][key]``, with the worker's
    CPU and wall seconds for it as ``'bench'`` in the packed sample."""

    def __init__(self, plain, wrapped) -> None:
        self.datasets = (plain, wrapped)

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, key):
        arm, key = key
        cpu, wall = time.process_time(), time.perf_counter()
        out = self.datasets[arm != 0][key]
        out['bench'] = (arm, time.process_time() - cpu,
                        time.perf_counter() - wall)
        return out


def interleave(keys: List[list], batch: int) -> List[list]:
    """Each arm's keys cut into batches of ``(arm, key)``, the arms taking
    turns batch by batch (A B C C B A A B C ...: a drift in machine speed
    within the pass cancels)."""
    chunks = [[[(a, k) for k in arm_keys[i:i + batch]]
               for i in range(0, len(arm_keys), batch)]
              for a, arm_keys in enumerate(keys)]
    out = []
    for slot in range(max(len(c) for c in chunks)):
        turn = chunks if slot % 2 == 0 else chunks[::-1]
        out.extend(c[slot] for c in turn if slot < len(c))
    return out


def mixed_pass(loader: DataLoader, batches: List[list],
               num_arms: int) -> tuple:
    """One pass; per arm (samples, worker CPU s, worker wall s), and the
    pass's wall seconds."""
    loader.batch_sampler.batches = batches
    sums = np.zeros((num_arms, 3))
    start = time.perf_counter()
    for data in loader:  # pseudo_collate transposes the tuples
        for arm, cpu, wall in zip(*data['bench']):
            sums[arm] += (1, cpu, wall)
    return sums, time.perf_counter() - start


def _spread(values: Sequence[float]) -> dict:
    values = [float(v) for v in values]
    return dict(median=statistics.median(values), min=min(values),
                max=max(values))


# --- main -----------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--files', type=int, help='JPEGs (default 384)')
    parser.add_argument('--rounds', type=int, help='default 8')
    parser.add_argument('--workers', type=int, nargs='+',
                        help='DataLoader workers, each measured (default '
                        '1 4; 0 loads in the main process)')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--scale', type=float, default=1.0,
                        help='image sizes x this (1: ImageNet-like)')
    parser.add_argument('--stage-share', type=float,
                        default=round(0.05 / 0.95, 4),
                        help="share of keys (i, partner, lam)")
    parser.add_argument('--persistent-shares', type=float, nargs='+',
                        default=[0.05, 0.10, 0.23],
                        help='carrying-blend shares of the persistent arms')
    parser.add_argument('--max-terms', type=int, default=4)
    parser.add_argument('--sim-samples', type=int,
                        help='samples of the term simulation (100000)')
    parser.add_argument('--persistence', type=float, default=0.5,
                        help='correlation of a value across stages')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 64 files, 1 round, workers 1 2')
    parser.add_argument('--out')
    args = parser.parse_args(argv)
    quick = dict(files=64, rounds=1, workers=[1, 2], sim_samples=20000,
                 out=osp.join(RESULTS, 'summary_load_quick.json'))
    full = dict(files=384, rounds=8, workers=[1, 4], sim_samples=100000,
                out=osp.join(RESULTS, 'summary_load.json'))
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def build_arms(args: argparse.Namespace, stages: List[dict]) -> List[dict]:
    arms = [dict(name='plain', kind='plain', share=0.0),
            dict(name='stage', kind='stage', share=args.stage_share)]
    for share in args.persistent_shares:
        nearest = min(stages,
                      key=lambda s: abs(s['carrying_share'] - share))
        arms.append(dict(name=f'persistent@{share:g}', kind='persistent',
                         share=share, terms_from_stage=nearest['stage'],
                         profiles=nearest['profiles']))
    return arms


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    cv2.setNumThreads(0)  # mmengine's env_cfg opencv_num_threads=0
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    started = time.perf_counter()
    from mmpretrain.datasets import CustomDataset
    pipeline = train_pipeline(args.config)
    stages = simulate_terms(args.sim_samples, args.max_terms,
                            args.persistence, args.seed)
    arms = build_arms(args, stages)
    with tempfile.TemporaryDirectory(prefix='kcd_bench_load_') as tmp:
        images = make_jpeg_folder(tmp, args.files, scale=args.scale,
                                  seed=args.seed)
        setup_s = time.perf_counter() - started
        print(f'{args.files} JPEGs: mean {images["mean_pixels"] / 1e3:.0f}k '
              f'pixels, {images["mean_kb"]:.0f} kB, '
              f'{images["bytes_per_pixel"]:.2f} B/pixel; pipeline '
              f'{[t["type"] for t in pipeline]}; set-up {setup_s:.1f} s')

        def dataset():
            return CustomDataset(data_root=tmp, pipeline=pipeline,
                                 with_label=True)

        data = Timed(dataset(), KnowledgeSummaryDataset(dataset()))
        loaders = {
            workers: DataLoader(data, batch_sampler=KeyBatches(),
                                num_workers=workers,
                                persistent_workers=workers > 0,
                                collate_fn=pseudo_collate)
            for workers in args.workers}
        rng = np.random.default_rng(args.seed)
        files = list(range(args.files))
        warm = interleave([make_keys(arm, files, rng.permutation(
            args.files), rng)[0] for arm in arms], args.batch)
        for loader in loaders.values():  # start the workers, warm up
            mixed_pass(loader, warm, len(arms))
        runs = {w: [] for w in args.workers}
        for r in range(args.rounds):
            order = rng.permutation(args.files).tolist()
            picks = rng.permutation(args.files)
            keys, loads = zip(*(make_keys(arm, order, picks, rng)
                                for arm in arms))
            batches = interleave(list(keys), args.batch)
            for workers in (args.workers if r % 2 == 0 else
                            args.workers[::-1]):
                sums, wall = mixed_pass(loaders[workers], batches,
                                        len(arms))
                runs[workers].append(dict(
                    sums=sums.tolist(), pass_wall=wall,
                    loads=[n / args.files for n in loads]))
                cpu = sums[:, 1] / sums[:, 0]
                print(f'round {r}, {workers} worker(s): '
                      f'{sums[:, 0].sum() / wall:.0f} img/s; worker CPU '
                      'ms/sample: ' + ', '.join(
                          f'{a["name"]} {c * 1e3:.2f}'
                          for a, c in zip(arms, cpu)))
        loaders.clear()  # stops the persistent workers
        del loader
    load_end = os.getloadavg()
    rows = summarise(args, arms, runs)
    report(args, images, stages, rows, load_start, load_end,
           time.perf_counter() - started)
    result = dict(
        args=vars(args), images=images, cpu_count=os.cpu_count(),
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        loadavg_start=load_start, loadavg_end=load_end,
        seconds=time.perf_counter() - started,
        pipeline=pipeline,
        simulated_stages=[{k: v for k, v in s.items() if k != 'profiles'}
                          for s in stages],
        arms=rows,
        raw={str(w): v for w, v in runs.items()})
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {args.out}')
    return result


def summarise(args: argparse.Namespace, arms: List[dict],
              runs: dict) -> List[dict]:
    """Per worker count and arm: per-sample worker CPU and wall time,
    their ratios to plain in each round, images/s, extra loads."""
    rows = []
    for workers in args.workers:
        got = runs[workers]
        sums = np.array([g['sums'] for g in got])  # round, arm, (n, c, w)
        per = sums[:, :, 1:] / sums[:, :, :1]  # per-sample cpu, wall
        total = sums.sum(0)
        pooled = total[:, 1:] / total[:, :1]
        # The loader is CPU-bound (one worker process; four on two cores),
        # so an arm's rate is the mixed passes' measured rate scaled by
        # the CPU time per sample, the mix's over the arm's.
        samples = total[:, 0].sum()
        mixed_rate = samples / sum(g['pass_wall'] for g in got)
        mixed_cpu = total[:, 1].sum() / samples
        for a, arm in enumerate(arms):
            cpu_ratio = per[:, a, 0] / per[:, 0, 0]
            wall_ratio = per[:, a, 1] / per[:, 0, 1]
            extra = statistics.mean(g['loads'][a] for g in got) - 1.0
            row = dict(
                workers=workers, arm=arm['name'], kind=arm['kind'],
                share=arm['share'],
                images_per_s=mixed_rate * mixed_cpu / pooled[a, 0],
                cpu_ms=_spread(per[:, a, 0] * 1e3),
                wall_ms=_spread(per[:, a, 1] * 1e3),
                cpu_ratio=dict(_spread(cpu_ratio),
                               pooled=pooled[a, 0] / pooled[0, 0]),
                wall_ratio=dict(_spread(wall_ratio),
                                pooled=pooled[a, 1] / pooled[0, 1]),
                extra_loads=extra,
                cpu_ms_per_extra_load=(
                    (pooled[a, 0] - pooled[0, 0]) * 1e3 / extra
                    if extra else None))
            if 'terms_from_stage' in arm:
                row['terms_from_stage'] = arm['terms_from_stage']
            rows.append(row)
        rows[-len(arms)]['mixed_pass_images_per_s'] = mixed_rate
    return rows


def report(args, images, stages, rows, load_start, load_end,
           seconds) -> None:
    print(f'\nTermSummary over {ESTEPS} E-steps (theta {THETA}, K {STEPS},'
          f' {args.sim_samples} simulated samples, persistence '
          f'{args.persistence}, max_terms {args.max_terms}):')
    print('stage   kept  carrying  loads/sample  terms 1..max')
    for s in stages:
        print(f'{s["stage"]:>5} {s["kept"]:>6} {s["carrying_share"]:>8.1%} '
              f'{s["loads_per_sample"]:>12.3f}  {s["terms_histogram"][1:]}')
    print(f'\n{args.rounds} round(s) of {args.files} files per arm, batch '
          f'{args.batch}, arms interleaved batch by batch. cpu/wall: the '
          "worker's seconds per sample; ratio: to plain, over all rounds "
          '(pooled), and the median [min, max] of the rounds; img/s: the '
          "mixed passes' rate x their CPU per sample / the arm's:")
    ratio = f'{"pooled":>6} {"median [min, max]":>23}'
    print(f'{"workers":>7} {"arm":<17} {"share":>5} {"img/s":>5} '
          f'{"cpu ms":>6} {ratio} {"wall ms":>7} {ratio} '
          f'{"extra loads":>11} {"ms/extra":>8}')
    for row in rows:
        cells = []
        for key in ('cpu', 'wall'):
            r = row[f'{key}_ratio']
            cells.append(f'{row[f"{key}_ms"]["median"]:>{len(key) + 3}.2f} '
                         f'{r["pooled"]:>6.3f} {r["median"]:>6.3f} '
                         f'[{r["min"]:>6.3f}, {r["max"]:>6.3f}]')
        per_load = row['cpu_ms_per_extra_load']
        print(f'{row["workers"]:>7} {row["arm"]:<17} {row["share"]:>5.1%} '
              f'{row["images_per_s"]:>5.0f} {cells[0]} {cells[1]} '
              f'{row["extra_loads"]:>11.3f} '
              f'{"-" if per_load is None else f"{per_load:.1f}":>8}')
    for row in rows:
        if 'mixed_pass_images_per_s' in row:
            print(f'{row["workers"]} worker(s): the mixed passes ran at '
                  f'{row["mixed_pass_images_per_s"]:.0f} img/s')
    print(f'\nload average {load_start[0]:.2f} at the start, '
          f'{load_end[0]:.2f} at the end, {os.cpu_count()} CPUs, '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS")}; '
          f'{seconds:.0f} s in all')


if __name__ == '__main__':
    main()
