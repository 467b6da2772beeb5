"""KCD on top of feature and relation distillation, as shipped.

``configs/kcd/kcd_rkd_*`` (RKD: losses on pooled neck features) and
``configs/kcd/kcd_ofd_*`` (OFD: pre-ReLU feature losses, its own algorithm
class) add KCD in three lines, with no logits loss anywhere: KCD reads the
student's head.fc. Each is trained by ``tools/train.py`` for two epochs
(one E-step) on a tiny folder of 32-px images, with a random teacher;
the stage record shows values taken from the classifier.
"""
import os.path as osp

import pytest

from kcd_mm.testing import make_image_folder
from helpers import repo_root, run_tool, stage_records

N = 12
# The test's shrinking of a shipped config: its data becomes a tiny
# CustomDataset folder, two 1-epoch stages, half the set dropped at the
# E-step. Everything about the method and KCD's lines is the config's.
TINY_OVERRIDE = """\
_base_ = [{config!r}]

model = dict(teacher_ckpt=None)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(dataset=dict(
        _delete_=True, _scope_='mmpretrain', type='CustomDataset',
        data_root={root!r}, pipeline=train_pipeline)))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, _scope_='mmpretrain', type='CustomDataset',
                 data_root={root!r}, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2, val_interval=2)
custom_hooks = [
    dict(type='mmrazor.KCDHook', stage_epochs=1, theta=0.5, num_steps=1,
         summary={summary!r})
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize('name, summary', [
    ('rkd_r34_r18_imagenet', 'stage'),
    ('ofd_wrn28_wrn16_cifar10', 'persistent'),
])
def test_kcd_trains_on_a_method_without_logits_losses(name, summary,
                                                      tmp_path):
    config = osp.join(repo_root(), 'configs', 'kcd', f'kcd_{name}.py')
    root = make_image_folder(str(tmp_path / 'data'), N, 3, 32)
    tiny = tmp_path / 'tiny.py'
    tiny.write_text(TINY_OVERRIDE.format(config=config, root=root,
                                         summary=summary))
    work_dir = str(tmp_path / 'work')
    out = run_tool(['tools/train.py', str(tiny), '--work-dir', work_dir],
                   timeout=300).stdout
    assert 'Saving checkpoint at 2 epochs' in out, out[-3000:]
    [stage] = stage_records(work_dir)
    assert (stage['kept'], stage['dropped']) == (6, 6)
    # Every sample's value came from the classifier, none skipped.
    assert stage['values_recorded'] == N and stage['values_skipped'] == 0
    assert stage['value_std'] > 0 and stage['degenerate'] is None
    assert stage['summary']['mode'] == summary
