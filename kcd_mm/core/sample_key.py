"""The sample key: what KCDSampler yields and KnowledgeSummaryDataset loads.

The sampler runs in the main process and the dataset copies live in the
loader's workers, so a kept sample's summary payload travels inside the
index the sampler yields. This module is the one place that knows the
forms (the summary makes payloads, the sampler encodes them, the dataset
and the first-batch check decode them):

* ``index``: the sample as it is;
* ``(index, partner, lam)``: ``summary='stage'``, blended from the raw
  images, ``lam`` on the sample's own;
* ``(index, image)``: ``summary='persistent'`` on an in-memory dataset,
  the sample's current (blended) uint8 image; ``(index, image, terms)``
  with ``blend_label='mix'``: also what it is made of;
* ``(index, terms)``: ``summary='persistent'`` on a file dataset, the
  image ``sum_j w * original_j`` over ``terms = ((j, w), ...)``.
"""
from typing import Optional, Tuple, Union

import numpy as np

Terms = Tuple[Tuple[int, float], ...]  # ((original index, weight), ...)
SampleKey = Union[int, tuple]


def encode(index: int, payload: Optional[tuple] = None) -> SampleKey:
    """The key of sample ``index`` carrying ``payload`` (a summary's
    :meth:`~kcd_mm.core.summary.Summary.payloads` entry; None or ``()``:
    the plain index)."""
    return (index, ) + tuple(payload) if payload else index


def decode(key: SampleKey) -> Tuple[int, tuple]:
    """``(index, payload)`` of a key; the payload is ``()`` for a plain
    index."""
    if isinstance(key, tuple):
        return int(key[0]), key[1:]
    return int(key), ()


def index_of(key: SampleKey) -> int:
    """The dataset position a key names."""
    return int(key[0] if isinstance(key, tuple) else key)


def image_of(payload: tuple) -> Optional[np.ndarray]:
    """The stored image a persistent in-memory payload carries, else
    None."""
    if payload and isinstance(payload[0], np.ndarray):
        return payload[0]
    return None


def terms_of(index: int, payload: tuple) -> Terms:
    """The original images, with weights, that sample ``index``'s image
    is made of under ``payload``: what the dataset blends (file datasets)
    and what a mixed label (``blend_label='mix'``) is composed of."""
    if not payload:
        return ((index, 1.0), )
    if image_of(payload) is not None:  # persistent, in memory
        if len(payload) < 2:
            raise ValueError(
                f'KCD: sample {index} arrives as an image without its '
                "composition, so blend_label='mix' cannot label it; the "
                "summary must be built with blend_label='mix' as well.")
        return tuple(payload[1])
    if len(payload) == 2:  # summary='stage': (partner, lam)
        partner, lam = payload
        return ((index, float(lam)), (int(partner), 1.0 - float(lam)))
    return tuple(payload[0])  # persistent, file dataset
