"""KnowledgeSummaryDataset: VAKS's summary, applied when a sample loads.

The reference blends dropped images into kept ones in an in-memory uint8
array, and blends again on top at later stages. That cannot scale to file
datasets, so here the summary (:mod:`kcd_mm.summary`) decides each kept
sample's image and the sampler hands it over in the sample's key; the
wrapper loads the image(s) with the dataset's own loading transforms,
applies the blend to the pixels before any augmentation, and runs the rest
of the pipeline. The sample keeps its own label and ``sample_idx`` (with
``KCDHook(blend_label='mix')`` it also gets a ``gt_score``, the mix of its
images' labels, which mmpretrain's heads train on). Keys:

* ``index``: the sample as it is;
* ``(index, partner, lam)``: ``summary='stage'``, blended from raw images;
* ``(index, image)``: ``summary='persistent'`` on an in-memory dataset,
  the sample's current (blended) uint8 image (``(index, image, terms)``
  with ``blend_label='mix'``: also what it is made of);
* ``(index, ((j, w), ...))``: ``summary='persistent'`` on a file dataset,
  the image ``sum_j w * original_j``.
"""
import copy
from typing import Any, Union

import cv2
import numpy as np
import torch
from mmcv.image import imresize
from mmengine.dataset import BaseDataset, Compose, ConcatDataset
from mmrazor.registry import DATASETS

from .labels import dataset_labels
from .summary import key_terms


def _is_loading(transform: Any) -> bool:
    return type(transform).__name__.startswith('Load')


@DATASETS.register_module()
class KnowledgeSummaryDataset:
    """Wrap a dataset so kept tail samples can carry a dropped partner.

    Works for in-memory datasets whose data info holds ``img`` (MNIST,
    CIFAR) and for file datasets whose pipeline starts with a ``Load*``
    transform (ImageNet, CustomDataset).

    Args:
        dataset (dict | BaseDataset): the training dataset or its config.
        lazy_init (bool): defer the wrapped dataset's full_init.
    """

    def __init__(self,
                 dataset: Union[dict, BaseDataset],
                 lazy_init: bool = False) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = dataset
        self._check_blendable(dataset)
        transforms = list(dataset.pipeline.transforms)
        split = max(
            (i + 1 for i, t in enumerate(transforms) if _is_loading(t)),
            default=0)
        self._load = Compose(transforms[:split])
        self._augment = Compose(transforms[split:])
        self.num_mixed_classes = None  # set by mix_labels
        self._labels = None  # every sample's class, with mix_labels
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @staticmethod
    def _check_blendable(dataset: Any) -> None:
        name = type(dataset).__name__
        if isinstance(dataset, ConcatDataset):
            raise TypeError(
                'KnowledgeSummaryDataset cannot wrap a ConcatDataset: its '
                'parts repeat sample_idx, so KCD could not tell samples '
                'apart. Merge the annotation files into one dataset.')
        if not isinstance(dataset, BaseDataset):
            raise TypeError(
                f'KnowledgeSummaryDataset cannot blend a {name}: it needs an '
                'mmengine BaseDataset (get_data_info + pipeline). Wrap the '
                'base dataset instead, or set summary=False in KCDHook.')

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.dataset.metainfo)

    def full_init(self) -> None:
        if not self._fully_initialized:
            self.dataset.full_init()
            self._fully_initialized = True

    def __len__(self) -> int:
        return len(self.dataset)

    def get_data_info(self, idx: int) -> dict:
        return self.dataset.get_data_info(idx)

    @property
    def in_memory(self) -> bool:
        """Images live in the data info (MNIST, CIFAR), not in files: the
        persistent summary can then keep exact uint8 copies."""
        if len(self.dataset) == 0:
            return False
        img = self.dataset.get_data_info(0).get('img')
        return isinstance(img, np.ndarray) and not self._load.transforms

    def mix_labels(self, num_classes: int) -> None:
        """Give every sample a ``gt_score``: one-hot for a plain sample,
        ``sum w * onehot(label_j)`` over a blended one's images (set by
        ``KCDHook(blend_label='mix')`` before the loader starts). Every
        sample of a batch gets one, as mmpretrain's heads read soft targets
        only when the batch's first sample has them."""
        label = self.dataset.get_data_info(0).get('gt_label') if len(
            self.dataset) else None
        if label is None or np.asarray(label).size != 1:
            raise ValueError(
                "KCD blend_label='mix' needs one class label per sample "
                f"(gt_label); {type(self.dataset).__name__} gives "
                f"{label!r}. Use blend_label='own'.")
        self._labels = dataset_labels(self.dataset)  # once, not per load
        self.num_mixed_classes = int(num_classes)

    def _label_of(self, idx: int) -> int:
        return int(self._labels[idx])

    def _with_score(self, out: Any, terms) -> Any:
        score = torch.zeros(self.num_mixed_classes)
        for j, w in terms:
            score[self._label_of(j)] += w
        out['data_samples'].set_gt_score(score)
        return out

    def original_images(self, indices) -> list:
        """The stored images of an in-memory dataset (for the summary)."""
        return [self.dataset.get_data_info(int(i))['img'] for i in indices]

    def _loaded(self, idx: int) -> dict:
        results = self._load(self.dataset.get_data_info(idx))
        if results is None or not isinstance(results.get('img'), np.ndarray):
            raise TypeError(
                f'KnowledgeSummaryDataset cannot blend sample {idx} of '
                f'{type(self.dataset).__name__}: it has no image array '
                "'img' before augmentation. Use a dataset that stores images"
                " or loads them with a Load* transform first, or set "
                'summary=False in KCDHook.')
        return results

    def _buffers(self, shape: tuple) -> tuple:
        """Two float32 scratch images of ``shape``, kept per process: a
        fresh ImageNet-sized temporary per blend cost more page faults
        than arithmetic (measured in benchmarks/bench_summary_load.py)."""
        cache = self.__dict__.setdefault('_scratch', {})
        if shape not in cache:
            cache.clear()
            cache[shape] = (np.empty(shape, np.float32),
                            np.empty(shape, np.float32))
        return cache[shape]

    def _combined(self, idx: int, terms) -> dict:
        """Sample ``idx`` with the image ``sum w * img_j`` over ``terms``
        ((j, w) pairs; j may be ``idx`` itself), rounded once."""
        results = self._loaded(idx)
        img = results['img']
        images = []
        for j, _ in terms:
            other = img if j == idx else self._loaded(j)['img']
            if other.shape[:2] != img.shape[:2]:
                other = imresize(other, (img.shape[1], img.shape[0]))
            if other.ndim != img.ndim:
                other = other.reshape(img.shape)
            images.append(other)
        weights = [float(w) for _, w in terms]
        if len(images) == 2 and all(i.dtype == np.uint8 for i in images):
            # One SIMD pass, rounded and saturated once (differs from the
            # float32 path below by one grey level on a few ties in 10^6).
            results['img'] = cv2.addWeighted(images[0], weights[0],
                                             images[1], weights[1], 0.0)
            return results
        mixed, term = self._buffers(img.shape)
        mixed.fill(0.0)
        for other, w in zip(images, weights):
            np.multiply(other, np.float32(w), out=term, dtype=np.float32)
            mixed += term
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            np.rint(mixed, out=mixed)
            np.clip(mixed, info.min, info.max, out=mixed)
        results['img'] = mixed.astype(img.dtype)
        return results

    def __getitem__(self, key: Union[int, tuple]) -> Any:
        out = self._sample(key)
        if self.num_mixed_classes is None:
            return out
        idx, extra = (key[0], key[1:]) if isinstance(key, tuple) else (key,
                                                                       ())
        return self._with_score(out, key_terms(int(idx), extra))

    def _sample(self, key: Union[int, tuple]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        idx = key[0]
        if isinstance(key[1], np.ndarray):  # persistent, in memory
            results = self._loaded(idx)
            results['img'] = key[1].copy()
        else:  # a stage pair, or a file dataset's persistent terms
            results = self._combined(idx, key_terms(idx, key[1:]))
        out = self._augment(results)
        return self.dataset[idx] if out is None else out
