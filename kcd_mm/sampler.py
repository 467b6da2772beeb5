"""KCDSampler: mmengine's DefaultSampler over the current kept set."""
import math
from typing import Dict, Iterator, Optional, Sized

import torch
from mmengine.dataset import DefaultSampler
from mmrazor.registry import DATA_SAMPLERS

from .core.sample_key import SampleKey, encode


@DATA_SAMPLERS.register_module()
class KCDSampler(DefaultSampler):
    """Shuffle, seed + epoch, rank sharding and round_up as DefaultSampler,
    but over the kept set that :class:`KCDHook` hands it at each E-step.

    A kept sample the knowledge summary changes is yielded as
    its key (:mod:`kcd_mm.core.sample_key`) for
    :class:`KnowledgeSummaryDataset`; the sampler runs in the
    main process, so this reaches the dataset copies in persistent workers
    too. Before the first E-step it is exactly a
    DefaultSampler over the whole dataset.

    Args:
        dataset (Sized): the training dataset.
        shuffle (bool): shuffle each epoch. Defaults to True.
        seed (int, optional): shuffle seed, identical on all ranks; None
            draws one and syncs it. Defaults to None.
        round_up (bool): pad so every rank gets the same count.
            Defaults to True.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed,
                         round_up=round_up)
        self.kept: Optional[torch.Tensor] = None
        self._payloads: Dict[int, tuple] = {}
        self._driven = False  # set_kept called: a KCDHook is in charge

    def set_kept(self,
                 kept: Optional[torch.Tensor],
                 payloads: Optional[Dict[int, tuple]] = None) -> None:
        """Restrict sampling to ``kept`` (None: all); ``payloads`` maps a
        kept index to the rest of its key (:meth:`Summary.payloads`)."""
        self._driven = True
        if kept is not None:
            kept = torch.sort(kept.to(torch.int64)).values
            if kept.numel() == 0:
                raise ValueError('KCDSampler: the kept set is empty; raise '
                                 'theta so some samples are kept')
        self.kept = kept
        self._payloads = dict(payloads or {})
        size = len(self.dataset) if kept is None else kept.numel()
        if self.round_up:
            self.num_samples = math.ceil(size / self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = math.ceil((size - self.rank) / self.world_size)
            self.total_size = size

    @property
    def kept_size(self) -> int:
        return len(self.dataset) if self.kept is None else self.kept.numel()

    def __iter__(self) -> Iterator[SampleKey]:
        if not self._driven:
            raise RuntimeError(
                'KCDSampler is driven by KCDHook, which is missing: add '
                "dict(type='mmrazor.KCDHook', ...) to custom_hooks, or use "
                "DefaultSampler for plain distillation.")
        size = self.kept_size
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=g)
        else:
            order = torch.arange(size)
        indices = order if self.kept is None else self.kept[order]
        indices = indices.tolist()
        if self.round_up and self.total_size > size:
            indices = (indices * math.ceil(self.total_size / size))
            indices = indices[:self.total_size]
        indices = indices[self.rank:self.total_size:self.world_size]
        if self._payloads:
            get = self._payloads.get
            indices = [encode(i, get(i)) for i in indices]
        return iter(indices)


def find_sampler(loader) -> KCDSampler:
    """The loader's :class:`KCDSampler` (plain or inside a batch sampler)."""
    sampler = loader.sampler
    if not isinstance(sampler, KCDSampler):
        sampler = getattr(loader.batch_sampler, 'sampler', None)
    if not isinstance(sampler, KCDSampler):
        raise TypeError(
            'KCDHook needs train_dataloader.sampler='
            "dict(type='mmrazor.KCDSampler', shuffle=True); got "
            f'{type(loader.sampler).__name__}.')
    return sampler
