"""The fingerprint of a training set: which files or images, with labels.

A resume compares it with the checkpoint's, so a checkpoint is never
continued on another training set of the same size (KCD names samples by
position). Versioned (:data:`SCHEME`), so older checkpoints still compare
by their labels.
"""
import hashlib
import itertools
import os
from typing import Iterable, List, Optional

import numpy as np

from .labels import data_infos, gt_labels

SCHEME = 'v2'  # the fingerprint's scheme, written before its hashes


def fingerprint_scheme(value: Optional[str]) -> Optional[str]:
    """``'v2'`` for a :func:`fingerprint` of the samples, ``'v1'`` for a
    hash of the labels alone (every checkpoint before v2, and datasets
    whose data infos hold neither ``img_path`` nor ``img``); None for
    None."""
    if not value:
        return None
    return value.split(':', 1)[0] if ':' in value else 'v1'


def _labels_hash(value: str) -> str:
    """The labels-only hash in a fingerprint ('' where it has none)."""
    if fingerprint_scheme(value) == 'v1':
        return value
    parts = value.split(':')
    return parts[2] if fingerprint_scheme(value) == 'v2' and len(
        parts) > 2 else ''


def same_dataset(saved: Optional[str],
                 current: Optional[str]) -> Optional[bool]:
    """Whether two fingerprints name one training set.

    True or False when both are of one scheme. A labels-only one (a
    checkpoint from before v2) and a v2 one are compared by the labels
    the v2 one also carries: False when they differ, else None, as when
    either is missing: the samples themselves could not be checked.
    """
    old, new = fingerprint_scheme(saved), fingerprint_scheme(current)
    if old is None or new is None:
        return None
    if old == new:
        return saved == current
    a, b = _labels_hash(saved), _labels_hash(current)
    return False if a and b and a != b else None


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def _label_hashes(found: list, labels: Optional[np.ndarray]):
    """The samples' labels (``gt_label`` of each data info; ``labels``
    where the infos have none) as bytes for the samples' hash, and their
    labels-only hash as before v2 ('' for multi-label data)."""
    if labels is not None and all(label is None for label in found):
        found = labels
    try:  # one int each (or one equal-length list each)
        array = np.asarray(found, dtype=np.int64)
    except (TypeError, ValueError):  # multi-label lists, or some missing
        data = '\n'.join('' if label is None else ','.join(
            str(int(v)) for v in np.asarray(label).reshape(-1))
                         for label in found).encode()
    else:
        data = repr(array.shape).encode() + array.tobytes()
        if array.ndim == 1:
            return data, _digest(array.tobytes())
    return data, '' if labels is None else _digest(labels.tobytes())


def _root_length(paths: List[str], dataset) -> int:
    """How many leading characters of every path name the data root: the
    dataset's image prefix (``data_prefix['img_path']``, else
    ``data_root``) when all paths lie below it, else their common folder.
    What follows stays when the data root moves."""
    # Every path lies between the least and the greatest, so what those
    # two start with, all start with.
    common = os.path.commonprefix([min(paths), max(paths)])
    prefix = getattr(dataset, 'data_prefix', None)
    prefix = prefix.get('img_path') if isinstance(prefix, dict) else None
    for root in (prefix, getattr(dataset, 'data_root', None)):
        root = str(root or '').rstrip('/' + os.sep)
        if root and common.startswith(root) and common[
                len(root):len(root) + 1] in ('/', os.sep):
            return len(root) + 1
    return max(common.rfind('/'), common.rfind(os.sep)) + 1


def fingerprint(dataset, labels=None) -> Optional[str]:
    """What identifies every sample, in order, hashed: a resume notices
    another training set of the same size (:func:`same_dataset`).

    ``'v2:<samples>:<labels>'``: ``<samples>`` hashes each sample's file
    (data info ``img_path``, relative to the data root: see
    :func:`_root_length`) or, for in-memory datasets (``img`` in the data
    info: mmpretrain's MNIST, CIFAR), the bytes, shape and dtype of its
    image, with its label (``gt_label``, else ``labels``); ``<labels>``
    is the labels-only hash of before v2, so checkpoints from then are
    still compared by their labels. Datasets without ``get_data_info``,
    or whose infos hold neither, get that labels-only hash alone
    (``'v1'``), from ``labels`` when given, else the dataset's own
    ``get_gt_labels``; None without either. One pass over the data infos
    (:func:`kcd_mm.labels.data_infos`): for ImageNet's 1.28M on one core,
    about 1 s serialized and 0.4 s not, against 6-8 s to build the dataset
    (``benchmarks/bench_fingerprint.py [--no-serialize]``). Files are
    named, not read: new pixels under an old file name go unnoticed.
    """
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if hasattr(dataset, 'get_data_info') and len(dataset):
        infos = data_infos(dataset)
        try:
            first = next(infos)
        except Exception:  # a wrapper whose infos cannot be read
            first = {}
        infos = itertools.chain([first], infos)
        if isinstance(first.get('img_path'), str):
            return _fingerprint_paths(dataset, infos, labels)
        if isinstance(first.get('img'), np.ndarray):
            return _fingerprint_images(infos, labels)
    if labels is None:
        labels = gt_labels(dataset)
        if labels is None:
            return None
    return _digest(np.asarray(labels, dtype=np.int64).tobytes())


def _fingerprint_paths(dataset, infos: Iterable[dict],
                       labels: Optional[np.ndarray]) -> str:
    paths, found = [], []
    for info in infos:
        paths.append(str(info['img_path']))
        found.append(info.get('gt_label'))
    cut = _root_length(paths, dataset)
    names = '\n'.join([p[cut:] for p in paths]).encode(
        'utf-8', 'surrogateescape')
    del paths
    label_data, labels_hash = _label_hashes(found, labels)
    samples = _digest(b'path\n%s\n%s' % (names, label_data))
    return f'{SCHEME}:{samples}:{labels_hash}'


def _fingerprint_images(infos: Iterable[dict],
                        labels: Optional[np.ndarray]) -> str:
    digest, found = hashlib.sha1(b'img\n'), []
    for info in infos:
        img = np.ascontiguousarray(info['img'])
        digest.update(f'{img.shape}{img.dtype}\n'.encode())
        digest.update(img.data)
        found.append(info.get('gt_label'))
    label_data, labels_hash = _label_hashes(found, labels)
    digest.update(label_data)
    return f'{SCHEME}:{digest.hexdigest()[:16]}:{labels_hash}'
