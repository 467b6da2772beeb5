"""Put Fashion-MNIST where mmpretrain's ``FashionMNIST`` dataset reads it.

The data comes from the Debian package ``dataset-fashion-mnist`` (MIT
licence, 60,000 train / 10,000 test images); nothing is downloaded.
mmpretrain 1.2.0 reads the four IDX files uncompressed from one folder, so
this script decompresses them there. Files already in place (with the right
size) are left alone, so running it again costs nothing.

With ``--per-class N`` it also writes a small-data training set in the
CIFAR-100 regime the KCD paper trains in (500 images a class): the first N
images of each class among the first ``--first`` training images (default
50,000; the benchmarks hold out the last 10,000 for choosing settings),
with the test files alongside.

Usage::

    python tools/prepare_fashion_mnist.py [--src DIR] [--dst DIR]
    python tools/prepare_fashion_mnist.py --per-class 500 \
        --subset-dst data/fashion_mnist_500pc
"""
import argparse
import gzip
import os
import os.path as osp
import shutil
import struct
import sys

DEFAULT_SRC = '/usr/share/datasets/fashion-mnist'
DEFAULT_DST = 'data/fashion_mnist'
# file stem -> number of items it must hold
FILES = {
    'train-images-idx3-ubyte': 60000,
    'train-labels-idx1-ubyte': 60000,
    't10k-images-idx3-ubyte': 10000,
    't10k-labels-idx1-ubyte': 10000,
}


def expected_size(stem: str, count: int) -> int:
    """Byte size of a decompressed IDX file (28x28 images or labels)."""
    if 'images' in stem:
        return 16 + count * 28 * 28
    return 8 + count


def find_source(src: str) -> str:
    """Return the folder holding the four ``.gz`` files or exit with help."""
    missing = [stem + '.gz' for stem in FILES
               if not osp.isfile(osp.join(src, stem + '.gz'))]
    if missing:
        sys.exit(
            f'Fashion-MNIST not found in {src} '
            f'(missing: {", ".join(missing)}).\n'
            'Install it with:  sudo apt-get install dataset-fashion-mnist\n'
            'or pass --src DIR pointing at a folder with the four .gz files.')
    return src


def check_header(path: str, stem: str, count: int) -> None:
    """Fail loudly if a decompressed file is not the IDX file we expect."""
    with open(path, 'rb') as f:
        magic, n = struct.unpack('>II', f.read(8))
    want_magic = 2051 if 'images' in stem else 2049
    if magic != want_magic or n != count:
        raise RuntimeError(f'{path}: unexpected IDX header '
                           f'(magic {magic}, {n} items)')


def prepare(src: str = DEFAULT_SRC, dst: str = DEFAULT_DST) -> str:
    """Decompress the Debian package's files into ``dst``; return ``dst``."""
    src = find_source(src)
    os.makedirs(dst, exist_ok=True)
    for stem, count in FILES.items():
        out = osp.join(dst, stem)
        size = expected_size(stem, count)
        if osp.isfile(out) and osp.getsize(out) == size:
            print(f'[skip] {out} already present')
            continue
        tmp = out + '.part'
        with gzip.open(osp.join(src, stem + '.gz'), 'rb') as fin, \
                open(tmp, 'wb') as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        if osp.getsize(tmp) != size:
            os.remove(tmp)
            raise RuntimeError(f'{stem}.gz decompressed to the wrong size')
        check_header(tmp, stem, count)
        os.replace(tmp, out)
        print(f'[ok]   {out}')
    return dst


def write_subset(full: str, dst: str, per_class: int,
                 first: int = 50000) -> str:
    """The first ``per_class`` images of each class among the first
    ``first`` training images of ``full``, in file order, as IDX files in
    ``dst`` (test files copied); return ``dst``."""
    import numpy as np
    images = np.fromfile(osp.join(full, 'train-images-idx3-ubyte'),
                         np.uint8, offset=16).reshape(-1, 28, 28)[:first]
    labels = np.fromfile(osp.join(full, 'train-labels-idx1-ubyte'),
                         np.uint8, offset=8)[:first]
    picked = np.sort(np.concatenate([
        np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)
    ]))
    if np.bincount(labels[picked]).min() < per_class:
        raise RuntimeError(f'fewer than {per_class} images of some class '
                           f'among the first {first}')
    os.makedirs(dst, exist_ok=True)
    for stem, array, magic in (
            ('train-images-idx3-ubyte', images[picked], 2051),
            ('train-labels-idx1-ubyte', labels[picked], 2049)):
        tmp = osp.join(dst, stem + '.part')
        with open(tmp, 'wb') as f:
            f.write(struct.pack('>' + 'I' * (array.ndim + 1), magic,
                                *array.shape))
            f.write(array.tobytes())
        os.replace(tmp, osp.join(dst, stem))
    for stem in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        shutil.copyfile(osp.join(full, stem), osp.join(dst, stem))
    print(f'[ok]   {dst}: {len(picked)} training images, {per_class} a '
          f'class from the first {first}')
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--src', default=DEFAULT_SRC,
                        help='folder with the four Fashion-MNIST .gz files')
    parser.add_argument('--dst', default=DEFAULT_DST,
                        help='output folder (the configs\' data_root)')
    parser.add_argument('--per-class', type=int,
                        help='also write a subset of N images a class')
    parser.add_argument('--first', type=int, default=50000,
                        help='the subset picks among the first M images')
    parser.add_argument('--subset-dst', default='data/fashion_mnist_500pc',
                        help='output folder of the subset')
    args = parser.parse_args()
    dst = prepare(args.src, args.dst)
    print(f'Fashion-MNIST ready in {dst}')
    if args.per_class:
        write_subset(dst, args.subset_dst, args.per_class, args.first)


if __name__ == '__main__':
    main()
