"""What seeding each sample from (epoch seed, index) costs per sample.

    OMP_NUM_THREADS=1 python benchmarks/bench_sample_seeding.py
        [--rounds 8] [--samples 400] [--out FILE]

``KnowledgeSummaryDataset`` seeds python, numpy and torch before every
sample's load and augmentation (:class:`kcd_mm.seeding.SampleSeeding`),
so that draws do not depend on which worker loads a sample. Measured, in
interleaved rounds against the same dataset with the seeding off (the
baseline of the same run), the CPU time per sample of:

- ``fmnist``: the demo's in-memory 28x28 pipeline (RandomCrop with
  padding, RandomFlip, PackInputs): the smallest sample there is, where
  the fixed cost shows most;
- ``imagenet``: generated ImageNet-sized JPEG files (mostly a 500-pixel
  long side, as bench_summary_load.py writes them) through decode,
  RandomResizedCrop 224, flip, pack.

Both as a worker loads a sample (seeded) and as the main process does
(``num_workers=0``: not seeded per sample, so the ratio there is the
check's own cost). Prints microseconds per sample and the ratio to the
baseline (median over rounds).
"""
import argparse
import json
import os.path as osp
import statistics
import tempfile
import time

import numpy as np

import kcd_mm  # noqa: F401
from kcd_mm import KnowledgeSummaryDataset
from bench_summary_load import make_jpeg_folder


def _fmnist(root: str):
    from mmengine.dataset import BaseDataset

    class InMemory(BaseDataset):
        def load_data_list(self):
            rng = np.random.default_rng(0)
            return [dict(img=rng.integers(0, 255, (28, 28), np.uint8),
                         gt_label=i % 10) for i in range(1000)]

    return KnowledgeSummaryDataset(InMemory(pipeline=[
        dict(type='RandomCrop', crop_size=28, padding=4),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs')
    ]))


def _imagenet(root: str):
    from mmpretrain.datasets import CustomDataset
    folder = osp.join(root, 'in')
    make_jpeg_folder(folder, num_images=64)
    return KnowledgeSummaryDataset(CustomDataset(
        data_root=folder, with_label=True, pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='RandomResizedCrop', scale=224),
            dict(type='RandomFlip', prob=0.5, direction='horizontal'),
            dict(type='PackInputs')
        ]))


def _per_sample(dataset, samples: int, seed, in_worker: bool) -> float:
    """CPU microseconds per ``dataset[i]``, seeded from ``seed`` (None:
    off), as a worker or as the main process would load it."""
    import torch.utils.data as data
    dataset.set_epoch_seed(seed)
    real = data.get_worker_info
    if in_worker:  # what SampleSeeding asks to tell the two apart
        data.get_worker_info = lambda: object()
    try:
        n = len(dataset)
        start = time.process_time()
        for i in range(samples):
            dataset[i % n]
        return (time.process_time() - start) / samples * 1e6
    finally:
        data.get_worker_info = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=8)
    parser.add_argument('--samples', type=int, default=400)
    parser.add_argument('--out', help='also write the figures as JSON')
    args = parser.parse_args()
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    with tempfile.TemporaryDirectory() as root:
        datasets = dict(fmnist=_fmnist(root), imagenet=_imagenet(root))
        times = {(name, arm): []
                 for name in datasets for arm in ('off', 'worker', 'main')}
        for _ in range(args.rounds):
            for name, dataset in datasets.items():
                samples = args.samples if name == 'fmnist' else max(
                    args.samples // 8, 16)
                for arm, seed, worker in (('off', None, True),
                                          ('worker', 7, True),
                                          ('main', 7, False)):
                    times[name, arm].append(
                        _per_sample(dataset, samples, seed, worker))
    out = {}
    print(f'{"pipeline":10} {"off us":>9} {"worker us":>10} {"ratio":>6} '
          f'{"main us":>9} {"ratio":>6}')
    for name in datasets:
        med = {arm: statistics.median(times[name, arm])
               for arm in ('off', 'worker', 'main')}
        out[name] = dict(
            us_per_sample=med,
            worker_ratio=med['worker'] / med['off'],
            main_ratio=med['main'] / med['off'],
            rounds=args.rounds)
        print(f'{name:10} {med["off"]:9.1f} {med["worker"]:10.1f} '
              f'{out[name]["worker_ratio"]:6.3f} {med["main"]:9.1f} '
              f'{out[name]["main_ratio"]:6.3f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    main()
