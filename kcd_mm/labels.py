"""A training set's labels, read from the dataset.

KCD names samples by position; what a position holds is known through the
data infos: ``class_min_keep`` balances by the labels, ``blend_label='mix'``
mixes them, the set-up checks count the classes, the analysis tools group
by them. Each reader takes the cheapest source a dataset offers
(:func:`data_infos`, which :mod:`kcd_mm.fingerprint` reads too).
"""
import pickle
from typing import Iterator, Optional

import numpy as np


def gt_labels(dataset) -> Optional[np.ndarray]:
    """The dataset's own single-label ``get_gt_labels`` (mmpretrain) as an
    int array, or None when it has none or it is multi-label."""
    try:
        labels = np.asarray(dataset.get_gt_labels())
    except Exception:  # no such method, or ragged multi-label lists
        return None
    if labels.ndim != 1 or labels.dtype == object or len(labels) != len(
            dataset):
        return None
    return labels.astype(np.int64)


def dataset_labels(dataset) -> np.ndarray:
    """The class of every sample, as an int array of length ``len(dataset)``.

    Uses :func:`gt_labels` when it gives them, else ``get_cat_ids`` or
    ``gt_label`` of each data info; only the first label of a multi-label
    sample is used.
    """
    labels = gt_labels(dataset)
    if labels is not None:
        return labels
    out = np.empty(len(dataset), dtype=np.int64)
    for i in range(len(dataset)):
        if hasattr(dataset, 'get_cat_ids'):
            label = dataset.get_cat_ids(i)
        else:
            label = dataset.get_data_info(i)['gt_label']
        out[i] = int(np.asarray(label).reshape(-1)[0])
    return out


def class_count(dataset) -> Optional[int]:
    """How many classes the dataset has: ``len(metainfo['classes'])``
    where it names them (mmpretrain's ImageNet, CIFAR, a CustomDataset
    read from class folders), else the largest ``gt_label`` of its data
    infos plus one (every label of a multi-label sample counts), read in
    one pass of :func:`data_infos`; None where neither is known.

    Only counts: a label beyond the named classes is the dataset's own
    error, and mmpretrain's loss reports it.
    """
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    if classes is not None and not isinstance(classes, str) and len(
            classes):
        return len(classes)
    if not hasattr(dataset, 'get_data_info') or not len(dataset):
        return None
    largest = -1
    try:
        for info in data_infos(dataset):
            label = info.get('gt_label')
            if label is not None and np.size(label):
                largest = max(largest, int(np.max(label)))
    except Exception:  # infos that cannot be read: nothing to count
        return None
    return largest + 1 if largest >= 0 else None


def data_infos(dataset) -> Iterator[dict]:
    """Every data info, read-only, without ``get_data_info``'s copy and
    ``sample_idx`` where an mmengine BaseDataset's own ``get_data_info``
    would only copy what it keeps: it unpickles each serialized info
    (``serialize_data=True``), and deep-copies each dict of ``data_list``
    otherwise, which took 2.5x the serialized pass for ImageNet's 1.28M
    (``benchmarks/bench_fingerprint.py --no-serialize``). Here the
    serialized bytes are unpickled in one sweep, and an unserialized
    ``data_list`` is read in place: the callers only read the infos, so
    the copy bought nothing. Any other ``get_data_info`` (a subclass's
    own, a wrapper's) is called as it is, since it may add to the info.
    """
    method = type(dataset).get_data_info
    own = (getattr(method, '__module__', None),
           getattr(method, '__qualname__', None)) == (
               'mmengine.dataset.base_dataset', 'BaseDataset.get_data_info')
    data_bytes = getattr(dataset, 'data_bytes', None)
    data_list = getattr(dataset, 'data_list', None)
    if own and getattr(dataset, 'serialize_data', False) and isinstance(
            data_bytes, np.ndarray):
        buffer = memoryview(data_bytes)
        ends = np.asarray(dataset.data_address).tolist()
        for start, end in zip([0] + ends[:-1], ends):
            yield pickle.loads(buffer[start:end])
    elif own and not getattr(dataset, 'serialize_data', True) and \
            isinstance(data_list, list) and len(data_list) == len(dataset):
        yield from data_list
    else:
        for i in range(len(dataset)):
            yield dataset.get_data_info(i)
