"""Datasets KCD used to crash on, mislabel, or rank blindly without a word.

Real tiny Runner runs: images that are missing from an annotation file's
list (``LoadImageFromFile(ignore_empty=True)``), multi-label data under
``blend_label='mix'``, a run with no E-step, a one-class dataset and a
classifier with more outputs than the dataset has classes.
"""
import json
import os
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from kcd_mm.testing import make_image_folder, tiny_kcd_config
from helpers import kcd_hook, read_log

N = 24


def _runner(cfg, work_dir) -> Runner:
    cfg = Config(cfg)
    cfg.work_dir = str(work_dir)
    # Runs within one second would share mmengine's logger (named by the
    # timestamp), and so one log file.
    cfg.experiment_name = osp.basename(osp.dirname(str(work_dir)))
    return Runner.from_cfg(cfg)


def _train_dataset(cfg) -> dict:
    dataset = cfg['train_dataloader']['dataset']
    return dataset.get('dataset', dataset)  # inside the wrapper


def _write_ann_file(data_root, num_classes) -> str:
    """``<data_root>.txt`` listing every image of the class folders."""
    path = data_root + '.txt'
    with open(path, 'w') as f:
        for c in range(num_classes):
            for name in sorted(os.listdir(osp.join(data_root,
                                                   f'class_{c}'))):
                f.write(f'class_{c}/{name} {c}\n')
    return path


class DeleteBlendedFiles(Hook):
    """After the first E-step (KCDHook runs it at NORMAL priority), delete
    the file of one tail and of another tail's partner, so the next
    epoch's blends meet a missing tail and a missing partner."""
    priority = 'LOW'

    def __init__(self):
        self.deleted = []

    def after_train_epoch(self, runner):
        if runner.epoch != 0:
            return
        pairs = kcd_hook(runner).state.pairs
        dataset = runner.train_dataloader.dataset
        for idx in (int(pairs.tail[0]), int(pairs.lost[1])):
            path = dataset.get_data_info(idx)['img_path']
            os.remove(path)
            self.deleted.append(idx)


class ScoreProbe(Hook):
    """Every trained sample's gt_score sums to 1 and holds its own label:
    also a sample that replaced an unreadable one, or was blended
    without an unreadable partner."""
    priority = 'LOW'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        for sample in data_batch['data_samples']:
            score = sample.gt_score
            assert abs(float(score.sum()) - 1.0) < 1e-5, score
            assert float(score[int(sample.gt_label)]) > 0, (
                sample.sample_idx, score)


@pytest.mark.parametrize('summary, blend_label', [('stage', 'own'),
                                                  ('persistent', 'own'),
                                                  ('persistent', 'mix')])
@pytest.mark.slow
def test_missing_image_files_train_as_plain_kd_does(tmp_path, summary,
                                                    blend_label):
    """Files deleted after the annotation file was written (two before
    training, a tail and a partner after the first E-step): plain KD
    refetches another sample; KCD does so for a missing tail and blends
    without a missing partner, and trains to the end."""
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16)
    ann_file = _write_ann_file(data, 3)
    cfg = tiny_kcd_config(data, max_epochs=3, summary=summary, theta=0.5,
                          num_steps=2, blend_label=blend_label,
                          wrap_losses=False)
    dataset = _train_dataset(cfg)
    dataset.update(ann_file=ann_file, data_prefix='')
    dataset['pipeline'][0]['ignore_empty'] = True
    val = make_image_folder(str(tmp_path / 'val'), 6, 3, 16)
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key]['dataset']['data_root'] = val  # its files all stay
    os.remove(osp.join(data, 'class_0', '00003.png'))
    os.remove(osp.join(data, 'class_2', '00014.png'))
    runner = _runner(cfg, tmp_path / 'work')
    deleter = DeleteBlendedFiles()
    runner.register_hook(deleter)
    if blend_label == 'mix':
        runner.register_hook(ScoreProbe())
    runner.train()
    assert runner.epoch == 3
    assert len(deleter.deleted) == 2
    records = kcd_hook(runner).state.records
    assert [r.epoch for r in records] == [1, 2]
    assert records[0].blended > 0
    log = read_log(tmp_path / 'work')  # a head that fits, E-steps run:
    assert 'out_features' not in log and 'runs no E-step' not in log


def _multi_label_set(root, labels) -> str:
    """An mmpretrain MultiLabelDataset annotation file (OpenMMLab 2.0
    json) over a class-folder tree's images, with ``labels`` per image."""
    names = sorted(
        osp.join(c, n) for c in os.listdir(root) if c.startswith('class_')
        for n in os.listdir(osp.join(root, c)))
    path = osp.join(root, 'multi_label.json')
    with open(path, 'w') as f:
        json.dump(dict(metainfo=dict(classes=['a', 'b', 'c']),
                       data_list=[dict(img_path=n, gt_label=list(g))
                                  for n, g in zip(names, labels)]), f)
    return path


def test_mix_labels_refuse_a_multi_label_dataset_by_every_sample(tmp_path):
    """Sample 0 has one label, later ones several: the check looks at each
    sample, and refuses before any update, naming blend_label='own'."""
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16)
    labels = [[0]] + [[i % 3, (i + 1) % 3] for i in range(1, N)]
    cfg = tiny_kcd_config(data, max_epochs=2, summary='stage',
                          blend_label='mix', wrap_losses=False)
    dataset = _train_dataset(cfg)
    dataset.clear()
    dataset.update(type='MultiLabelDataset', data_root=data,
                   ann_file=_multi_label_set(data, labels),
                   pipeline=cfg['val_dataloader']['dataset']['pipeline'])
    for part in ('architecture', 'teacher'):
        head = cfg['model'][part]['head']
        head.update(type='MultiLabelLinearClsHead',
                    loss=dict(type='CrossEntropyLoss', use_sigmoid=True))
        del head['topk']
    runner = _runner(cfg, tmp_path / 'work')
    with pytest.raises(ValueError, match=r"sample 1 of MultiLabelDataset "
                       r"has 2 \(\[1, 2\]\).*blend_label='own'"):
        runner.train()
    assert runner.iter == 0


@pytest.mark.slow
def test_a_run_without_an_estep_warns_before_training(tmp_path):
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=1, stage_epochs=1,
                          summary=False)
    runner = _runner(cfg, tmp_path / 'work')
    runner.train()
    assert kcd_hook(runner).state.records == []
    log = read_log(tmp_path / 'work')
    assert ('stage_epochs=1 with train_cfg.max_epochs=1 runs no E-step'
            in log)
    assert 'stage_epochs <= max_epochs / 2' in log


@pytest.mark.slow
def test_a_one_class_dataset_names_the_single_class(tmp_path):
    """Every value is 0: warned once before training and at every E-step
    as a single class, not as a stage that trains no classifier."""
    data = make_image_folder(str(tmp_path / 'data'), N, 1, 16)
    cfg = tiny_kcd_config(data, max_epochs=3, num_classes=1,
                          summary=False, theta=0.5, num_steps=2)
    runner = _runner(cfg, tmp_path / 'work')
    runner.train()
    records = kcd_hook(runner).state.records
    assert len(records) == 2 and all(r.degenerate for r in records)
    assert all(r.value_mean == 0 for r in records)
    log = read_log(tmp_path / 'work')
    assert 'trains no classifier' not in log
    assert log.count('the student classifier has out_features=1 (a single '
                     'class): every prediction is certain') == 1
    assert log.count('Likely cause: a single class: every prediction is '
                     'certain') == 2


@pytest.mark.slow
def test_a_head_wider_than_the_dataset_warns_before_training(tmp_path):
    """A 10-way head on a 3-class annotation file (no class names in
    its metainfo: counted from the labels)."""
    data = make_image_folder(str(tmp_path / 'data'), N, 3, 16)
    cfg = tiny_kcd_config(data, max_epochs=1, stage_epochs=1,
                          summary=False)
    _train_dataset(cfg).update(ann_file=_write_ann_file(data, 3),
                               data_prefix='')
    for part in ('architecture', 'teacher'):
        cfg['model'][part]['head']['num_classes'] = 10
    runner = _runner(cfg, tmp_path / 'work')
    runner.train()
    log = read_log(tmp_path / 'work')
    assert ('the student classifier has out_features=10 but the training '
            'set has 3 classes' in log)
    assert 'ln(10) = 2.30' in log and "head num_classes=3" in log
