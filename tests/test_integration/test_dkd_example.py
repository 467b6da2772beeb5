"""The worked example of docs/add_kcd_to_your_config.md runs as written.

``configs/kcd/kcd_dkd_r34_r18_imagenet.py`` adds KCD to MMRazor's installed
DKD recipe (``mmrazor::distill/mmcls/dkd/...``, whose ``mmcls::`` bases
``kcd_mm.compat`` reads from mmpretrain). Here it is loaded, its model
built without a teacher checkpoint, and then trained by ``tools/train.py``
for three iterations (two epochs, one E-step) on a tiny ImageNet-format
folder of 32-px images, so that DKD's ``gt_labels`` mapping, the blend of
real image files and the stage record are all exercised.

The stock ``cfg_path`` ResNets keep their 1000 classes (mmengine.hub cannot
override the head), so the data has 3 of them.
"""
import os.path as osp

import pytest
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope

from kcd_mm.testing import make_imagenet_folder
from helpers import repo_root, run_tool, stage_records

CONFIG = osp.join(repo_root(), 'configs', 'kcd',
                  'kcd_dkd_r34_r18_imagenet.py')
NUM_TRAIN, NUM_VAL, NUM_CLASSES = 8, 3, 3

# The test's own shrinking of the example: 32-px images, batch 4, no
# workers, no teacher file, two 1-epoch stages, half the set dropped at the
# E-step (theta 0.5 in one step), one validation and one checkpoint at the
# end. Everything KCD and DKD is the example's.
TINY_OVERRIDE = """\
_base_ = [{config!r}]

model = dict(teacher_ckpt=None)
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
    persistent_workers=False,
    dataset=dict(dataset=dict(data_root={root!r}, pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root={root!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=2)
custom_hooks = [
    dict(type='mmrazor.KCDHook', stage_epochs=1, theta=0.5, num_steps=1,
         score_exponent=0.03, lam_range=(0.7, 1.0), summary='stage')
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
"""


def test_dkd_config_leaves_dkd_loss_alone():
    """The three-line recipe: DKD's loss and mappings as the base has them,
    and KCD's values read from the student's head.fc."""
    from mmrazor.models.losses import DKDLoss
    from mmrazor.registry import MODELS

    from kcd_mm.tap import find_classifier_in

    cfg = Config.fromfile(CONFIG)
    assert cfg.model.teacher.pretrained is False
    assert cfg.train_dataloader.sampler.type == 'mmrazor.KCDSampler'
    assert cfg.train_dataloader.dataset.dataset.type == 'ImageNet'
    [hook] = cfg.custom_hooks
    assert (hook.type, hook.stage_epochs, hook.theta) == ('mmrazor.KCDHook',
                                                          17, 0.7)
    # DKD's label input is still mapped from the student's loss module.
    mapping = cfg.model.distiller.loss_forward_mappings.loss_dkd
    assert mapping.gt_labels == dict(
        recorder='gt_labels', from_student=True, data_idx=1)

    cfg.model.teacher_ckpt = None
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = MODELS.build(cfg.model)
    loss = model.distiller.distill_losses['loss_dkd']
    assert type(loss) is DKDLoss
    assert (loss.tau, loss.alpha, loss.beta, loss.reduction) == (1, 1.0, 0.5,
                                                                 'mean')
    fc, path = find_classifier_in(model.student)
    assert path == 'head.fc' and fc.out_features == 1000
    assert isinstance(model.teacher, nn.Module)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dkd_example_trains_with_kcd(tmp_path):
    root = make_imagenet_folder(str(tmp_path / 'imagenet'), NUM_TRAIN, NUM_VAL,
                                NUM_CLASSES)
    tiny = tmp_path / 'tiny.py'
    tiny.write_text(TINY_OVERRIDE.format(config=CONFIG, root=root))
    work_dir = str(tmp_path / 'work')

    out = run_tool(['tools/train.py', str(tiny), '--work-dir', work_dir],
                   timeout=240).stdout

    assert 'Saving checkpoint at 2 epochs' in out, out[-3000:]
    # DKD (with the labels it needs) is the loss being distilled.
    assert 'distill.loss_dkd' in out, out[-3000:]
    stages = stage_records(work_dir)
    assert len(stages) == 1, stages
    stage = stages[0]
    assert (stage['stage'], stage['epoch']) == (1, 1)
    assert stage['num_samples'] == NUM_TRAIN
    # theta 0.5, one step: 4 kept, the 4 dropped blended into them.
    assert (stage['kept'], stage['blended'], stage['dropped']) == (4, 4, 4)
    assert stage['values_recorded'] == NUM_TRAIN
    assert stage['values_skipped'] == 0
    # Epoch 1: 8 samples in 2 batches of 4; epoch 2: the 4 kept, 1 batch.
    assert 'Epoch(train) [2][1/1]' in out, out[-3000:]
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))
