"""Labels and the fingerprint of a training set, read from the dataset.

KCD names samples by position; what a position holds is checked through
the labels: ``class_min_keep`` balances by them, a resume compares their
hash, and the analysis tools group by them. Each reader takes the
cheapest source a dataset offers.
"""
import hashlib
from typing import Optional

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


def fingerprint(dataset, labels: Optional[np.ndarray] = None
                ) -> Optional[str]:
    """A hash of the training labels, so a resume notices another dataset
    of the same size: from ``labels`` when given, else the dataset's own
    ``get_gt_labels`` (~7 us a sample in mmpretrain, ~10 s at ImageNet);
    None without it, rather than a slower per-sample pass."""
    if labels is None:
        labels = gt_labels(dataset)
        if labels is None:
            return None
    data = np.asarray(labels, dtype=np.int64).tobytes()
    return hashlib.sha1(data).hexdigest()[:16]
