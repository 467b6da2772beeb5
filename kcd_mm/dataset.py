"""KnowledgeSummaryDataset: VAKS's summary, applied when a sample loads.

The reference blends dropped images into kept ones in an in-memory uint8
array, and blends again on top at later stages. That cannot scale to file
datasets, so here the summary (:mod:`kcd_mm.core.summary`) decides each kept
sample's image and the sampler hands it over in the sample's key; the
wrapper loads the image(s) with the dataset's own loading transforms,
applies the blend to the pixels before any augmentation, and runs the rest
of the pipeline. The sample keeps its own label and ``sample_idx`` (with
``KCDHook(blend_label='mix')`` it also gets a ``gt_score``, the mix of its
images' labels, which mmpretrain's heads train on). The key forms are
:mod:`kcd_mm.core.sample_key`'s.
"""
import copy
from typing import Any, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from mmcv.image import imresize
from mmengine.dataset import BaseDataset, Compose, ConcatDataset
from mmrazor.registry import DATASETS

from .core.sample_key import Terms, decode, image_of, index_of, terms_of
from .labels import gt_labels
from .seeding import SampleSeeding


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
        self._seeding = SampleSeeding()
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
        only when the batch's first sample has them.

        Refuses, before training, a dataset where any sample has no label
        or several (mmpretrain's MultiLabelDataset): a one-hot mix would
        keep one label of each and drop the others without a word. Mixing
        multi-hot targets is left out on purpose: every other reader of
        the labels (class balance, the analysis) takes one per sample.
        """
        self._labels = self._single_labels()  # once, not per load
        self.num_mixed_classes = int(num_classes)

    def _single_labels(self) -> np.ndarray:
        """Every sample's one class label, checked sample by sample (not
        from sample 0: multi-label sets mix one-label and many-label
        samples). The dataset's own single-label ``get_gt_labels`` answers
        at once; otherwise each sample's ``get_cat_ids`` (or data info
        ``gt_label``) is read."""
        dataset = self.dataset
        labels = gt_labels(dataset)
        if labels is not None:
            return labels
        out = np.empty(len(dataset), dtype=np.int64)
        for i in range(len(dataset)):
            try:
                label = dataset.get_cat_ids(i) if hasattr(
                    dataset, 'get_cat_ids') else dataset.get_data_info(
                        i)['gt_label']
            except (KeyError, TypeError, ValueError):
                label = None
            count = 0 if label is None else np.asarray(label).size
            if count != 1:
                raise ValueError(
                    "KCD blend_label='mix' mixes one class label per "
                    f'sample, and sample {i} of {type(dataset).__name__} '
                    f'has {count} ({label!r}): a multi-label (or unlabelled)'
                    ' dataset would lose every label but one. Use '
                    "blend_label='own' (a blended sample keeps its own "
                    'labels).')
            out[i] = int(np.asarray(label).reshape(-1)[0])
        return out

    def _label_of(self, idx: int) -> int:
        return int(self._labels[idx])

    def _with_score(self, out: Any, terms) -> Any:
        """``out`` with the ``gt_score`` of ``terms``: the images
        :meth:`_sample` actually used."""
        score = torch.zeros(self.num_mixed_classes)
        for j, w in terms:
            score[self._label_of(j)] += w
        out['data_samples'].set_gt_score(score)
        return out

    def original_images(self, indices) -> list:
        """The stored images of an in-memory dataset (for the summary)."""
        return [self.dataset.get_data_info(int(i))['img'] for i in indices]

    def _loaded(self, idx: int) -> Optional[dict]:
        """Sample ``idx`` through the loading transforms; None where they
        give None (``LoadImageFromFile(ignore_empty=True)`` on a file that
        is missing or unreadable), which the callers handle as mmengine's
        BaseDataset does: leave the image out, or fetch another sample."""
        results = self._load(self.dataset.get_data_info(idx))
        if results is None:
            return None
        if not isinstance(results.get('img'), np.ndarray):
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

    def _combined(self, idx: int, terms) -> Tuple[Optional[dict], Terms]:
        """Sample ``idx`` with the image ``sum w * img_j`` over ``terms``
        ((j, w) pairs; j may be ``idx`` itself), rounded once.

        None when sample ``idx``'s own file cannot be read (the caller
        then takes the wrapped dataset's sample, which refetches). A term
        whose file cannot be read is left out and the weights of those
        that loaded are renormalised to sum 1: a stage pair with a missing
        partner is the tail's own image; persistent terms of which none
        loaded give the tail's own original image. Returns the results
        and the terms used.
        """
        results = self._loaded(idx)
        if results is None:
            return None, ()
        img = results['img']
        images, used = [], []
        for j, w in terms:
            if j == idx:
                other = img
            else:
                loaded = self._loaded(j)
                if loaded is None:
                    continue  # a file that could not be read: without it
                other = loaded['img']
            if other.shape[:2] != img.shape[:2]:
                other = imresize(other, (img.shape[1], img.shape[0]))
            if other.ndim != img.ndim:
                other = other.reshape(img.shape)
            images.append(other)
            used.append((j, float(w)))
        if len(used) < len(terms):
            total = sum(w for _, w in used)
            used = [(j, w / total) for j, w in used] if total > 0 else []
            if not used:
                images, used = [img], [(idx, 1.0)]
            if len(used) == 1 and used[0][0] == idx:
                return results, tuple(used)  # the tail alone, as it loaded
        weights = [w for _, w in used]
        if len(images) == 2 and all(i.dtype == np.uint8 for i in images):
            # One SIMD pass, rounded and saturated once (differs from the
            # float32 path below by one grey level on a few ties in 10^6).
            results['img'] = cv2.addWeighted(images[0], weights[0],
                                             images[1], weights[1], 0.0)
            return results, tuple(used)
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
        return results, tuple(used)

    def set_epoch_seed(self, seed: Optional[int]) -> None:
        """Seed every sample's load and augmentation from (``seed``,
        sample index) from the next pass on, in every worker
        (EpochSeedingHook calls it before each epoch); None stops."""
        self._seeding.set_epoch_seed(seed)

    def __getitem__(self, key: Union[int, tuple]) -> Any:
        return self._seeding.seeded(index_of(key),
                                    lambda: self._item(key))

    def _item(self, key: Union[int, tuple]) -> Any:
        out, terms = self._sample(key)
        if self.num_mixed_classes is None:
            return out
        return self._with_score(out, terms)

    def _sample(self, key: Union[int, tuple]) -> Tuple[Any, Terms]:
        """The loaded sample of ``key`` and the images it is made of."""
        idx, payload = decode(key)
        if not payload:
            return self._whole(idx)
        image = image_of(payload)
        if image is not None:  # persistent, in memory
            results = self._loaded(idx)
            if results is not None:
                results['img'] = image.copy()
            terms = terms_of(idx, payload) if self.num_mixed_classes else ()
        else:  # a stage pair, or a file dataset's persistent terms
            results, terms = self._combined(idx, terms_of(idx, payload))
        out = None if results is None else self._augment(results)
        return self._whole(idx) if out is None else (out, terms)

    def _whole(self, idx: int) -> Tuple[Any, Terms]:
        """The wrapped dataset's own sample ``idx``, unblended: mmengine's
        BaseDataset fetches a random other sample where its pipeline gives
        None (an unreadable file with ``ignore_empty=True``, an
        augmentation that drops it), as plain training does, so the
        sample's label terms are those of the sample it carries."""
        out = self.dataset[idx]
        sample = out.get('data_samples') if isinstance(out, dict) else None
        return out, ((int(getattr(sample, 'sample_idx', idx)), 1.0), )


def unwrap_summary(dataset):
    """The dataset inside a KnowledgeSummaryDataset (else ``dataset``)."""
    if isinstance(dataset, KnowledgeSummaryDataset):
        return dataset.dataset
    return dataset
