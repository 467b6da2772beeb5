"""MMRazor's installed mmcls distillation zoo, config by config, with KCD.

Every config of ``mmrazor/.mim/configs/distill/mmcls/`` is one entry of
:data:`ZOO`. For an entry that trains, two configs are written:

* ``shrunk.py`` inherits ``mmrazor::distill/mmcls/<config>`` and only
  shrinks it: a tiny generated folder of 8 images (32 px; 16 px for the
  CIFAR-style nets, whose stem keeps the resolution; 3 classes, as stock
  ImageNet ResNets keep their 1000 outputs), batch 4, no workers, 2
  epochs, random weights (no ``teacher_ckpt``, ``pretrained`` off,
  ``Pretrained`` init_cfgs removed: nothing is downloaded), plus the
  entry's own ``shrink`` lines;
* ``kcd.py`` inherits ``shrunk.py`` and adds what
  docs/add_kcd_to_your_config.md says, nothing else: ``custom_imports``
  kcd_mm, the ``KCDSampler``, the ``KnowledgeSummaryDataset`` wrapper
  around the base's own dataset (unless prune-only) and the ``KCDHook``
  (1-epoch stages, theta 0.5 in one step, and the entry's options).

``kcd.py`` is trained in-process by mmengine's Runner; the stage record
must show one E-step over the whole set with values from the student's
classifier (or, for a stage that trains no classifier, a ``degenerate``
note). Data-free entries must be refused by KCDHook; an entry KCD cannot
run yet shows that ``shrunk.py`` alone trains (so the failure is KCD's)
and what KCD raises; an entry that fails on this stack without KCD shows
its student failing alone. docs/model_zoo.md tabulates the outcome.
"""
import glob
import importlib.util
import os.path as osp
from typing import Dict, NamedTuple, Optional, Sequence

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from kcd_mm.testing import make_image_folder
from helpers import kcd_hook, stage_records

MMRAZOR = osp.dirname(importlib.util.find_spec('mmrazor').origin)
CONFIGS = osp.join(MMRAZOR, '.mim', 'configs')
N, NUM_VAL, CLASSES = 8, 4, 3

# Status of an entry with KCD's lines added.
TRAINS = 'trains'  # one E-step, values from the student's classifier
REFUSED = 'refused'  # KCDHook refuses it before the first iteration
KCD_FAILS = 'kcd_fails'  # trains without KCD, fails with it (see note)
FAILS = 'fails'  # fails on this stack without KCD too (see note)


class Entry(NamedTuple):
    config: str  # relative to mmrazor's configs folder
    kind: str  # logits / feature / relation / data-free
    status: str
    shrink: str = ''  # extra lines of shrunk.py
    hook: Optional[Dict] = None  # KCDHook options beyond the common ones
    trains_head: bool = True  # False: the student classifier is frozen
    # A random-init tiny run may give every sample the same value (the
    # entropy of a near-uniform output); the record may then say so.
    may_be_near_constant: bool = False
    raises: Optional[str] = None  # not TRAINS: what is raised (a regex)
    note: str = ''
    size: int = 32  # image side; CIFAR-style nets take 16 (4x cheaper)
    images: int = N  # training images
    reads: str = 'head.fc'  # the student module KCD reads (its classifier)
    # Other classifiers (Linear layers with the classes) outside the student
    # and the teacher, which KCDHook(classifier=...) cannot name.
    other_heads: Sequence[str] = ()
    base_hooks: str = ''  # the base's custom_hooks, repeated next to KCD's


# For configs whose teacher is a `cfg_path` model: random weights, no file.
TEACHER_OFF = 'model = dict(teacher_ckpt=None, teacher=dict(pretrained=False))'
# Data-free teachers always load ckpt_path: an empty state dict (random).
DATA_FREE_OFF = """\
model = dict(teachers=dict(res34=dict(ckpt_path=EMPTY_CKPT,
                                      build_cfg=dict(pretrained=False))))
"""
DATA_FREE_MSG = ('KCD condenses a training set, and .*DataFreeDistillation '
                 'is data-free distillation: .* nothing to condense')
# Read through `mmrazor::`, the BYOT config's dataset base (a relative path
# inside MMRazor) gets `_scope_='mmrazor'` on its `Accuracy` evaluator:
# "Accuracy is not in the mmrazor::metric registry". Put it back.
BYOT_SCOPE = """\
val_evaluator = dict(_scope_='mmpretrain')
test_evaluator = dict(_scope_='mmpretrain')
"""
# mmpretrain's ShuffleNetV2 schedule counts iterations: 5000 at a constant
# lr, then PolyLR, more than the whole tiny run (6 iterations).
SHUFFLENET_SCHEDULE = """
param_scheduler = [
    dict(type='ConstantLR', factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', eta_min=0, by_epoch=False, begin=2)
]
"""
# DeiT: ViT-B at 32 px (2 x 2 patches), the timm RegNetY-160 teacher with
# random weights (no timm download, no head checkpoint), its 20 warm-up
# epochs shrunk to 1.
DEIT_SHRINK = """\
model = dict(
    architecture=dict(backbone=dict(img_size=32)),
    teacher=dict(backbone=dict(pretrained=False), head=dict(init_cfg=None)))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=True, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-05, by_epoch=True, begin=1)
]
"""
# CRD's contrastive memory and negatives, sized to the tiny set.
CRD_SHRINK = """\
model = dict(teacher_ckpt=None, teacher=dict(pretrained=False),
             distiller=dict(distill_losses=dict(
                 loss_crd=dict(neg_num=16, sample_n=9))))
train_dataloader = dict(dataset=dict(
    _delete_=True, _scope_='mmrazor', type='CRDDataset', neg_num=16,
    percent=1.0, sample_mode='exact',
    dataset=dict(tiny_train, pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(_scope_='mmrazor', type='PackCRDClsInputs')])))
"""

ZOO = [
    Entry('distill/mmcls/kd/kd_logits_resnet34_resnet18_8xb32_in1k.py',
          'logits', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/kd/kd_logits_resnet50_mobilenet-v2_8xb32_in1k.py',
          'logits', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/kd/'
          'kd_logits_resnet50_shufflenet-v2-1x_16xb64_in1k.py',
          'logits', TRAINS, TEACHER_OFF + SHUFFLENET_SCHEDULE,
          note='its iteration-based schedule (5000 constant iterations, '
          'then PolyLR) is shrunk to 2 + 4; KCDHook warns that it runs '
          'behind shortened epochs'),
    Entry('distill/mmcls/dkd/dkd_resnet34_resnet18_8xb32_in1k.py', 'logits',
          TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/wsld/wsld_logits_resnet34_resnet18_8xb32_in1k.py',
          'logits', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/dist/dist_logits_resnet34_resnet18_8xb32_in1k.py',
          'logits', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/fitnets/'
          'fitnets_backbone_logits_resnet50_resnet18_8xb32_in1k.py',
          'feature + logits', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/abloss/'
          'abloss_pretrain_backbone_resnet50_resnet18_8xb32_in1k.py',
          'feature', TRAINS, TEACHER_OFF, trains_head=False,
          note='stage 1: ABLoss on backbone features only '
          '(calculate_student_loss=False), so head.fc never trains'),
    Entry('distill/mmcls/abloss/abloss_logits_resnet50_resnet18_8xb32_in1k.py',
          'logits', TRAINS, 'model = dict(init_cfg=None)',
          note='stage 2; its init_cfg (the stage-1 checkpoint) removed'),
    Entry('distill/mmcls/rkd/rkd_neck_resnet34_resnet18_8xb32_in1k.py',
          'relation', TRAINS, TEACHER_OFF),
    Entry('distill/mmcls/ofd/ofd_backbone_resnet50_resnet18_8xb16_cifar10.py',
          'feature', TRAINS, 'model = dict(teacher_ckpt=None)',
          size=16, note='WRN-16-2 <- WRN-28-4 (CIFAR); needs scipy'),
    Entry('distill/mmcls/factor_transfer/'
          'factor-transfer_backbone_resnet50_resnet18_8xb16_cifar10_'
          'pretrain.py', 'feature', TRAINS, TEACHER_OFF, trains_head=False,
          size=16,
          note='stage 1 trains the teacher-side paraphraser only '
          '(student_trainable=False)'),
    Entry('distill/mmcls/factor_transfer/'
          'factor-transfer_backbone_resnet50_resnet18_8xb16_cifar10_'
          'train.py', 'feature', TRAINS,
          'model = dict(teacher_ckpt=None, teacher=dict(pretrained=False), '
          'init_cfg=None)', size=16,
          note='stage 2; its init_cfg (the stage-1 checkpoint) removed'),
    Entry('distill/mmcls/byot/byot_resnet18_8xb16_cifar100.py',
          'self (logits + feature)', TRAINS, BYOT_SCOPE,
          other_heads=[f'distiller.connectors.loss_s{i}_sfeat.fc'
                       for i in (1, 2, 3)],
          note="values from the deepest classifier, the student's head.fc "
          "(found by default): BYOT's teacher and the one validated; the "
          'three shallow classifiers are BYOTConnectors in '
          'distiller.connectors, outside the student; its Accuracy '
          "evaluator's scope reset to mmpretrain"),
    Entry('distill/mmcls/crd/crd_neck_r50_r18_8xb16_cifar10.py', 'relation',
          TRAINS, CRD_SHRINK, hook=dict(summary=False), size=16,
          images=9, may_be_near_constant=True,
          note="prune-only: CRDDataset is no BaseDataset, so "
          'KnowledgeSummaryDataset cannot wrap it (and inside it the '
          "blend would be bypassed). PackCRDClsInputs stores sample_idx "
          'as a data field, which KCD reads as well as the metainfo'),
    Entry('distill/mmcls/deit/deit-base_regnety160_pt-16xb64_in1k.py',
          'logits', FAILS, DEIT_SHRINK,
          raises='not enough values to unpack \\(expected 3, got 2\\)',
          note="MMRazor 1.0.0's DeiTClsHead unpacks three backbone outputs "
          "(mmcls 1.0.0rc's patch, cls and dist tokens); mmpretrain 1.2's "
          'DistilledVisionTransformer returns two (cls, dist), so the '
          "student's forward fails, with or without KCD. With a fixed "
          'head KCD would read head.layers.head_dist (the last Linear, the '
          'distill loss\'s input; no head.fc); repeat its EMAHook. Its '
          'teacher needs timm (not installed)'),
    Entry('distill/mmcls/dafl/dafl_logits_resnet34_resnet18_8xb256_cifar10.py',
          'data-free', REFUSED, DATA_FREE_OFF, raises=DATA_FREE_MSG),
    Entry('distill/mmcls/zskt/'
          'zskt_backbone_logits_resnet34_resnet18_8xb16_cifar10.py',
          'data-free', REFUSED, DATA_FREE_OFF, raises=DATA_FREE_MSG),
    Entry('distill/mmcls/dfad/dfad_logits_resnet34_resnet18_8xb32_cifar10.py',
          'data-free', REFUSED, DATA_FREE_OFF, raises=DATA_FREE_MSG),
]

SHRUNK = """\
_base_ = ['mmrazor::{config}']

tiny_train = dict(
    _scope_='mmpretrain', type='CustomDataset', data_root={root!r},
    pipeline=[dict(type='LoadImageFromFile'),
              dict(type='RandomFlip', prob=0.5, direction='horizontal'),
              dict(type='PackInputs')])
tiny_val = dict(
    _scope_='mmpretrain', type='CustomDataset', data_root={val!r},
    pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')])
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(tiny_train, _delete_=True))
val_dataloader = dict(
    _delete_=True, batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False), dataset=tiny_val)
test_dataloader = val_dataloader
{train_cfg}
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=-1))
{shrink}
"""

# Data-free entries keep their iteration loop: KCDHook refuses them before
# the first iteration, and their schedules are sized for it.
EPOCHS = 'train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=2)'

# What a user adds (docs/add_kcd_to_your_config.md), on top of shrunk.py.
KCD_LINES = """\
_base_ = ['./shrunk.py']

custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)
train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
{wrapper})
custom_hooks = [{base_hooks}dict(type='mmrazor.KCDHook', {hook})]
"""
WRAPPER = """\
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}),
"""


def test_zoo_table_covers_every_mmcls_distill_config():
    # (crd/datasets/crd_cifar10_bs16.py is a dataset base, not a recipe.)
    found = glob.glob(osp.join(CONFIGS, 'distill', 'mmcls', '*', '*.py'))
    assert sorted(osp.relpath(p, CONFIGS) for p in found) == sorted(
        e.config for e in ZOO)


def _write(entry: Entry, folder) -> str:
    root = make_image_folder(osp.join(str(folder), 'train'), entry.images,
                             CLASSES, entry.size)
    val = make_image_folder(osp.join(str(folder), 'val'), NUM_VAL, CLASSES,
                            entry.size, seed=1)
    empty = osp.join(str(folder), 'empty.pth')
    torch.save(dict(state_dict={}), empty)
    shrink = entry.shrink.replace('EMPTY_CKPT', repr(empty))
    (folder / 'shrunk.py').write_text(
        SHRUNK.format(config=entry.config, root=root, val=val, shrink=shrink,
                      train_cfg='' if entry.kind == 'data-free' else EPOCHS))
    hook = dict(stage_epochs=1, theta=0.5, num_steps=1, summary='stage')
    hook.update(entry.hook or {})
    (folder / 'kcd.py').write_text(KCD_LINES.format(
        wrapper=WRAPPER if hook['summary'] else '',
        hook=', '.join(f'{k}={v!r}' for k, v in hook.items()),
        base_hooks=entry.base_hooks))
    return str(folder)


def _runner(path: str, work_dir: str) -> Runner:
    cfg = Config.fromfile(path)
    cfg.work_dir = work_dir
    return Runner.from_cfg(cfg)


def _params(status):
    return [
        pytest.param(e, id=osp.basename(e.config)[:-3]) for e in ZOO
        if e.status == status
    ]


@pytest.mark.slow
@pytest.mark.parametrize('entry', _params(TRAINS))
def test_zoo_config_trains_with_kcd(entry, tmp_path):
    folder = _write(entry, tmp_path)
    work_dir = str(tmp_path / 'work')
    runner = _runner(osp.join(folder, 'kcd.py'), work_dir)
    runner.train()
    assert runner.epoch == 2
    # KCD read the student's classifier (found, or named in entry.hook).
    tap = kcd_hook(runner)._source
    assert tap.path == entry.reads
    assert tap.module is runner.model.student.get_submodule(entry.reads)
    others = [
        name for name, m in runner.model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not tap.module
        and m.out_features == tap.module.out_features
        and not name.startswith(('architecture.', 'teacher.'))
    ]
    assert others == list(entry.other_heads)
    [stage] = stage_records(work_dir)
    n = entry.images
    assert (stage['stage'], stage['epoch'], stage['num_samples']) == (1, 1, n)
    # theta 0.5 in one step: floor(n / 2) dropped, all n valued.
    assert (stage['kept'], stage['dropped']) == (n - n // 2, n // 2)
    assert stage['values_recorded'] == n and stage['values_skipped'] == 0
    if entry.trains_head:
        assert stage['value_std'] > 0, stage
        assert stage['degenerate'] is None or (
            entry.may_be_near_constant
            and 'near constant' in stage['degenerate']), stage
    else:
        assert stage['degenerate'] is not None, stage


@pytest.mark.slow
@pytest.mark.parametrize('entry', _params(REFUSED))
def test_zoo_data_free_config_is_refused(entry, tmp_path):
    folder = _write(entry, tmp_path)
    runner = _runner(osp.join(folder, 'kcd.py'), str(tmp_path / 'work'))
    with pytest.raises(TypeError, match=entry.raises):
        runner.train()
    assert runner.iter == 0


@pytest.mark.parametrize('entry', _params(KCD_FAILS))
def test_zoo_config_kcd_cannot_run_yet(entry, tmp_path):
    folder = _write(entry, tmp_path)
    # Without KCD's lines the shrunk config trains: the failure is KCD's.
    plain = _runner(osp.join(folder, 'shrunk.py'), str(tmp_path / 'plain'))
    plain.train()
    assert plain.epoch == 2
    runner = _runner(osp.join(folder, 'kcd.py'), str(tmp_path / 'work'))
    with pytest.raises(Exception, match=entry.raises):
        runner.train()
    assert runner.iter == 0


@pytest.mark.parametrize('entry', _params(FAILS))
def test_zoo_config_fails_without_kcd(entry, tmp_path):
    """The student of the shrunk config (no KCD line) fails on its own."""
    from mmengine.registry import DefaultScope
    from mmrazor.registry import MODELS
    cfg = Config.fromfile(osp.join(_write(entry, tmp_path), 'shrunk.py'))
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        student = MODELS.build(cfg.model.architecture)
    with pytest.raises(ValueError, match=entry.raises):
        student(torch.rand(2, 3, entry.size, entry.size), mode='tensor')
