"""KCDSampler sharding and KnowledgeSummaryDataset blending."""
import numpy as np
import pytest
import torch

import kcd_mm  # noqa: F401
from kcd_mm import KCDSampler, KnowledgeSummaryDataset


def _sampler(n, rank=0, world=1, seed=3, round_up=True):
    s = KCDSampler(list(range(n)), shuffle=True, seed=seed, round_up=round_up)
    s.rank, s.world_size = rank, world  # as get_dist_info would give
    return s


def _shards(n, kept, world, epoch=0, **kw):
    out = []
    for rank in range(world):
        s = _sampler(n, rank, world, **kw)
        s.set_kept(kept)
        s.set_epoch(epoch)
        out.append(list(s))
        assert len(out[-1]) == len(s)
    return out


def test_before_any_estep_it_is_default_sampler():
    from mmengine.dataset import DefaultSampler
    ref = DefaultSampler(list(range(23)), shuffle=True, seed=3)
    ref.set_epoch(2)
    s = _sampler(23)
    with pytest.raises(RuntimeError, match='KCDHook'):
        list(s)  # nobody drives it
    s.set_kept(None)
    s.set_epoch(2)
    assert list(s) == list(ref)


@pytest.mark.parametrize('world', [1, 2, 3])
def test_shards_cover_kept_set_deterministically(world):
    kept = torch.tensor([17, 3, 9, 0, 12, 5, 21])
    shards = _shards(23, kept, world, epoch=1)
    flat = [i for shard in shards for i in shard]
    assert set(flat) == set(kept.tolist())  # nothing missed, nothing extra
    assert all(len(s) == len(shards[0]) for s in shards)
    assert len(flat) - kept.numel() < world  # round_up padding only
    assert shards == _shards(23, kept, world, epoch=1)  # deterministic
    assert shards != _shards(23, kept, world, epoch=2) or world == 3


def test_partners_are_yielded_with_their_tail():
    s = _sampler(10)
    s.set_kept(torch.tensor([0, 1, 2, 3]), {3: (7, 0.75)})
    items = list(s)
    assert (3, 7, 0.75) in items
    assert sorted(i for i in items if not isinstance(i, tuple)) == [0, 1, 2]
    with pytest.raises(ValueError, match='empty'):
        s.set_kept(torch.tensor([], dtype=torch.int64))


def _mnist_like(tmp_path):
    from mmpretrain.datasets import BaseDataset

    class InMemory(BaseDataset):
        def load_data_list(self):
            return [
                dict(img=np.full((4, 4), v, np.uint8), gt_label=i)
                for i, v in enumerate((0, 100, 200))
            ]

    return InMemory(ann_file='', data_root=str(tmp_path),
                    pipeline=[dict(type='PackInputs')])


def test_in_memory_blend_before_pipeline_keeps_tail_label(tmp_path):
    ds = KnowledgeSummaryDataset(_mnist_like(tmp_path))
    plain = ds[1]
    assert plain['data_samples'].sample_idx == 1
    mixed = ds[(1, 2, 0.75)]
    assert mixed['data_samples'].sample_idx == 1
    assert int(mixed['data_samples'].gt_label) == 1
    assert torch.all(mixed['inputs'] == 125)  # .75*100 + .25*200


def test_file_dataset_blend_resizes_partner(tmp_path):
    import cv2
    from mmpretrain.datasets import CustomDataset
    root = tmp_path / 'imgs'
    (root / 'a').mkdir(parents=True)
    cv2.imwrite(str(root / 'a' / '0.png'), np.full((8, 8, 3), 40, np.uint8))
    cv2.imwrite(str(root / 'a' / '1.png'), np.full((5, 6, 3), 240, np.uint8))
    base = CustomDataset(data_root=str(root), pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='PackInputs')])
    ds = KnowledgeSummaryDataset(base)
    out = ds[(0, 1, 0.5)]
    assert tuple(out['inputs'].shape) == (3, 8, 8)
    assert torch.all(out['inputs'] == 140)


def test_cannot_blend_is_explained(tmp_path):
    from mmengine.dataset import ConcatDataset
    a = _mnist_like(tmp_path)
    with pytest.raises(TypeError, match='ConcatDataset'):
        KnowledgeSummaryDataset(ConcatDataset([a, _mnist_like(tmp_path)]))
    with pytest.raises(TypeError, match='BaseDataset'):
        KnowledgeSummaryDataset(list(range(3)))
