"""KnowledgeSummaryDataset: VAKS's summary, done on the fly.

The reference blends dropped images into kept ones once, in an in-memory
uint8 array, and blends again on top at later stages. That cannot scale to
file datasets, so here the blend happens when a sample is loaded: the
sampler yields ``(tail, partner, lam)``, the wrapper loads both images with
the dataset's own loading transforms, blends the pixels before any
augmentation, and runs the rest of the pipeline. The tail keeps its own
label and ``sample_idx``. Only the current stage's pairs are blended (no
accumulation across stages); see docs/method.md.
"""
import copy
from typing import Any, Union

import numpy as np
from mmcv.image import imresize
from mmengine.dataset import BaseDataset, Compose, ConcatDataset
from mmrazor.registry import DATASETS


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

    def __getitem__(self, key: Union[int, tuple]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        idx, partner, lam = key
        results = self._loaded(idx)
        img = results['img']
        other = self._loaded(partner)['img']
        if other.shape[:2] != img.shape[:2]:
            other = imresize(other, (img.shape[1], img.shape[0]))
        if other.ndim != img.ndim:
            other = other.reshape(img.shape)
        mixed = lam * img.astype(np.float32) + (1.0 - lam) * other.astype(
            np.float32)
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            mixed = np.clip(np.rint(mixed), info.min, info.max)
        results['img'] = mixed.astype(img.dtype)
        out = self._augment(results)
        return self.dataset[idx] if out is None else out
