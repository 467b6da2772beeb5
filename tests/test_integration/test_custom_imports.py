"""An existing MMRazor config gains KCD through ``custom_imports``.

Takes the KD recipe MMRazor 1.0.0 installs,
``configs/distill/mmcls/kd/kd_logits_resnet34_resnet18_8xb32_in1k.py``
(``mmcls::`` bases, which ``kcd_mm.compat`` reads from mmpretrain), adds
only the lines a user adds for KCD, shrinks the run to tiny data in a
second override, and trains it with ``tools/train.py``.

The stock ``cfg_path`` ResNets cannot take a ``num_classes`` override
(``mmengine.hub.get_model`` passes extra arguments as defaults, which the
config's own head settings win over), so both keep 1000 classes and the
data has 3 of them.
"""
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from kcd_mm.testing import make_imagenet_folder
from helpers import load_checkpoint, run_tool, stage_records

MMRAZOR_KD = osp.join('configs', 'distill', 'mmcls', 'kd',
                      'kd_logits_resnet34_resnet18_8xb32_in1k.py')
NUM_TRAIN, NUM_VAL, NUM_CLASSES = 24, 6, 3

# What a user writes on top of an MMRazor KD config to get KCD.
KCD_OVERRIDE = """\
_base_ = [{base!r}]

custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)
train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{{{_base_.train_dataloader.dataset}}}}))
custom_hooks = [
    dict(type='mmrazor.KCDHook', stage_epochs=40, theta=0.7, num_steps=6,
         score_exponent=0.03, lam_range=(0.7, 1.0), summary='stage')
]
model = dict(
    distiller=dict(
        distill_losses=dict(
            loss_kl=dict(
                _delete_=True,
                type='ValueWeightedLoss',
                value='entropy',
                weighting='uniform',
                loss=dict(type='KLDivergence', tau=1, loss_weight=3)))))
"""

# The test's own shrinking: ImageNet-format folder of 32-px images, a local
# teacher checkpoint, batch 4, no workers, one checkpoint at the end.
TINY_OVERRIDE = """\
_base_ = ['./kcd.py']

model = dict(teacher_ckpt={teacher!r})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=32, edge='short'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    dataset=dict(dataset=dict(data_root={root!r}, pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    dataset=dict(data_root={root!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(interval=2))
"""


def _mmrazor_kd_config() -> str:
    spec = importlib.util.find_spec('mmrazor')
    package = list(spec.submodule_search_locations)[0]
    path = osp.join(package, '.mim', MMRAZOR_KD)
    if not osp.isfile(path):
        pytest.skip(f'MMRazor does not ship {MMRAZOR_KD} here')
    return path


def _teacher_checkpoint(path: str) -> str:
    """Weights of a freshly built stock ResNet-34, as a plain state dict."""
    from mmengine.hub import get_model
    teacher = get_model('mmcls::resnet/resnet34_8xb32_in1k.py',
                        pretrained=False)
    torch.save(teacher.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mmrazor_config_gains_kcd(tmp_path):
    base = _mmrazor_kd_config()
    with open(base) as f:
        assert 'mmcls::' in f.read(), 'expected the stock mmcls:: config'
    kcd = tmp_path / 'kcd.py'
    kcd.write_text(KCD_OVERRIDE.format(base=base))

    # The KCD lines took: names resolve through the mmrazor registries.
    cfg = Config.fromfile(str(kcd))
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports.imports == ['kcd_mm']
    dataset = cfg.train_dataloader.dataset
    assert dataset.type == 'mmrazor.KnowledgeSummaryDataset'
    assert dataset.dataset.type == 'ImageNet'
    assert cfg.train_dataloader.sampler.type == 'mmrazor.KCDSampler'
    loss = cfg.model.distiller.distill_losses.loss_kl
    assert loss.type == 'ValueWeightedLoss'
    assert loss.loss == dict(type='KLDivergence', tau=1, loss_weight=3)

    root = make_imagenet_folder(str(tmp_path / 'imagenet'), NUM_TRAIN, NUM_VAL,
                                NUM_CLASSES)
    teacher = _teacher_checkpoint(str(tmp_path / 'resnet34.pth'))
    tiny = tmp_path / 'tiny.py'
    tiny.write_text(TINY_OVERRIDE.format(teacher=teacher, root=root))

    work_dir = str(tmp_path / 'work')
    out = run_tool([
        'tools/train.py',
        str(tiny), '--work-dir', work_dir, '--cfg-options',
        'train_cfg.max_epochs=2', 'custom_hooks.0.stage_epochs=1'
    ],
                   timeout=240).stdout

    # The local teacher checkpoint was loaded, and it fitted exactly.
    assert f'Loads checkpoint by local backend from path: {teacher}' in out
    assert 'do not match exactly' not in out
    assert 'Saving checkpoint at 2 epochs' in out, out[-3000:]
    stages = stage_records(work_dir)
    assert [s['stage'] for s in stages] == [1]
    stage = stages[0]
    assert stage['num_samples'] == NUM_TRAIN
    assert stage['epoch'] == 1
    # theta 0.7, K 6: floor(24 * 0.3 / 6) = 1 sample condensed away.
    assert stage['kept'] == NUM_TRAIN - 1 < stage['num_samples']
    assert stage['blended'] == 1 and stage['dropped'] == 1
    assert stage['values_recorded'] == NUM_TRAIN

    ckpt = load_checkpoint(osp.join(work_dir, 'epoch_2.pth'))
    assert 'kcd_state' in ckpt
    assert ckpt['kcd_state']['kept'].numel() == NUM_TRAIN - 1
    # Epoch 1 on all 24 samples, epoch 2 on the 23 kept, batch 4.
    assert ckpt['meta']['iter'] == 6 + 6
