"""The training-set fingerprint's cost next to building the dataset.

    python benchmarks/bench_fingerprint.py [--num 1281167] [--classes 1000]
        [--images 50000] [--no-serialize] [--out FILE]

KCDHook computes :func:`kcd_mm.fingerprint.fingerprint` once, in
``before_train``. Measured here, on one core:

- a file dataset of ``--num`` synthetic ImageNet-style paths (an
  mmpretrain ``CustomDataset`` read from an annotation file, as ImageNet
  is; no image is read): the time to build it, the fingerprint (relative
  paths and labels) and the labels-only hash it replaces; with
  ``--no-serialize`` the dataset keeps its data infos as a list of dicts
  (``serialize_data=False``), the path that once deep-copied every info;
- an in-memory dataset of ``--images`` 32x32x3 images (CIFAR-like): the
  fingerprint (image bytes and labels).

and the fingerprint's peak memory above the resident set. Prints a table;
``--out`` also writes it as JSON.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import tempfile
import time

import numpy as np
import torch

import kcd_mm  # noqa: F401
from kcd_mm.fingerprint import fingerprint
from kcd_mm.labels import gt_labels


def labels_hash(dataset) -> str:
    """The fingerprint before v2: a hash of ``get_gt_labels``."""
    labels = gt_labels(dataset).astype(np.int64)
    return hashlib.sha1(labels.tobytes()).hexdigest()[:16]


def _status_mib(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def _seconds(fn, peaks=None, name=None):
    """Seconds ``fn`` takes and what it returns; with ``peaks``, also its
    peak memory above the resident set before it (Linux VmHWM, reset
    through /proc/self/clear_refs) into ``peaks[name]``."""
    if peaks is not None:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
        except OSError:
            peaks = None
        rss = _status_mib('VmRSS')
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    if peaks is not None:
        peaks[name] = round(_status_mib('VmHWM') - rss, 1)
    return seconds, out


def file_dataset(root: str, num: int, classes: int,
                 serialize_data: bool = True):
    """Write the annotation file; return the dataset's build time and it."""
    from mmpretrain.datasets import CustomDataset
    os.makedirs(osp.join(root, 'meta'))
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        for i in range(num):
            c = i % classes
            f.write(f'n{c:08d}/n{c:08d}_{i}.JPEG {c}\n')
    return _seconds(lambda: CustomDataset(
        data_root=root, ann_file='meta/train.txt', data_prefix='train',
        with_label=True, serialize_data=serialize_data))


def image_dataset(num: int):
    from mmengine.dataset import BaseDataset

    class InMemory(BaseDataset):

        def load_data_list(self):
            rng = np.random.default_rng(0)
            imgs = rng.integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)
            return [dict(img=img, gt_label=i % 100)
                    for i, img in enumerate(imgs)]

    return InMemory(pipeline=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num', type=int, default=1_281_167)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--images', type=int, default=50_000)
    parser.add_argument('--no-serialize', action='store_true',
                        help='build the file dataset with '
                        'serialize_data=False')
    parser.add_argument('--out')
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, peaks = {}, {}
    with tempfile.TemporaryDirectory() as root:
        build, dataset = file_dataset(root, args.num, args.classes,
                                      not args.no_serialize)
        rows['build CustomDataset'] = build
        rows['fingerprint (paths + labels)'], value = _seconds(
            lambda: fingerprint(dataset), peaks, 'fingerprint')
        rows['labels-only hash (before v2)'], _ = _seconds(
            lambda: labels_hash(dataset))
    images = image_dataset(args.images)
    rows[f'fingerprint ({args.images} in-memory images)'], _ = _seconds(
        lambda: fingerprint(images))
    print(f'N = {args.num} paths ({args.classes} classes, serialize_data='
          f'{not args.no_serialize}), fingerprint {value}')
    for name, seconds in rows.items():
        print(f'{name:<40} {seconds:8.2f} s')
    print(f'fingerprint peak memory above resident: '
          f'{peaks.get("fingerprint")} MiB')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(num=args.num, images=args.images,
                           serialize_data=not args.no_serialize,
                           seconds=rows,
                           peak_mib=peaks), f, indent=1)


if __name__ == '__main__':
    main()
