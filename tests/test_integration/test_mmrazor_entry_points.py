"""MMRazor's own entry points, and its mmcls-era configs, on this stack.

* kcd_mm installs ``kcd_mm_mmrazor_hook.pth`` (setup.py): a meta path
  finder that imports kcd_mm (so kcd_mm.compat) the first time mmrazor is
  imported, and costs a process that never imports mmrazor nothing.
  MMRazor's own ``tools/train.py`` (installed under ``mmrazor/.mim/tools``,
  what ``mim train mmrazor CFG`` runs) then trains a tiny KCD config and a
  shrunk stock MMRazor KD config.
* MMRazor configs written for mmcls 1.x (``_scope_='mmcls'``, ``mmcls.X``
  types, ``PackClsInputs``, classes of mmrazor derived from mmcls ones)
  build their models and datasets: OFD's WRN models, BYOT, CRD, DeiT
  (``kcd_mm.compat.mmcls_alias``). Only local, randomly initialised
  weights: ``pretrained`` off, no teacher checkpoint, datasets built with
  ``lazy_init`` (no CIFAR or ImageNet here) and their pipelines run on
  generated images.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import site
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from kcd_mm.testing import (make_image_folder, make_imagenet_folder,
                            tiny_classifier, tiny_kcd_config, tiny_kd_config,
                            write_config)
from helpers import read_jsonl, run_tool, stage_records

PTH = 'kcd_mm_mmrazor_hook.pth'
HOOK = 'KcdMmrazorHook'
MMRAZOR = osp.dirname(importlib.util.find_spec('mmrazor').origin)
MMRAZOR_TRAIN = osp.join(MMRAZOR, '.mim', 'tools', 'train.py')
MMRAZOR_CONFIGS = osp.join(MMRAZOR, '.mim', 'configs')
DISTILL = osp.join(MMRAZOR_CONFIGS, 'distill', 'mmcls')


def _python(code: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh interpreter, site-packages read as
    usual (so the .pth runs), one OpenMP thread."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **env)
    return subprocess.run([sys.executable, '-c', code], env=full_env,
                          cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


def _installed_pth() -> str:
    for folder in site.getsitepackages():
        path = osp.join(folder, PTH)
        if osp.isfile(path):
            return path
    pytest.fail(f'{PTH} is not in {site.getsitepackages()}: kcd_mm was '
                "installed before it had the hook; run pip install -e "
                "'.[tests]' again")


# --- the .pth hook ---------------------------------------------------------

START = ('import json, sys; print(json.dumps(dict(hooks=[f.__qualname__ for '
         'f in sys.meta_path if isinstance(f, type)], modules=sorted(m for '
         "m in ('torch', 'numpy', 'mmengine', 'mmrazor', 'kcd_mm') if m in "
         'sys.modules))))')


def test_hook_costs_a_process_without_mmrazor_nothing():
    with open(_installed_pth()) as f:
        line = f.read()
    assert "find_spec('kcd_mm')" in line, (
        f'{PTH} is from an older kcd_mm: run pip install -e .[tests] again')
    out = _python(START)
    assert out.returncode == 0, out.stdout
    seen = json.loads(out.stdout.splitlines()[-1])
    # The .pth ran (once, though a venv's lib64 link shows it twice) ...
    assert seen['hooks'].count(HOOK) == 1, seen
    # ... and imported nothing heavy: no torch, numpy, mmengine, kcd_mm.
    assert seen['modules'] == [], seen

    off = _python(START, KCD_MM_MMRAZOR_HOOK='0').stdout.splitlines()[-1]
    off = json.loads(off)
    assert HOOK not in off['hooks'] and off['modules'] == []


@pytest.mark.slow
def test_importing_mmrazor_first_applies_kcd_mm_compat():
    out = _python(
        'import sys, mmrazor.models, mmrazor; import kcd_mm.compat as c; '
        'print(c._APPLIED, "KcdMmrazorHook" in [getattr(f, "__qualname__", '
        '"") for f in sys.meta_path], type(mmrazor.__spec__.loader).__name__,'
        ' mmrazor.__spec__.name)')
    assert out.returncode == 0, out.stdout[-3000:]
    # Shims applied, the hook gone, mmrazor's own spec and loader kept.
    assert out.stdout.split()[-4:] == [
        'True', 'False', 'SourceFileLoader', 'mmrazor'
    ], out.stdout[-2000:]


@pytest.mark.slow
def test_a_broken_kcd_mm_is_one_line_naming_tools_train(tmp_path):
    # A kcd_mm that fails to import, found first on sys.path.
    broken = tmp_path / 'kcd_mm'
    broken.mkdir()
    (broken / '__init__.py').write_text(
        "raise ImportError('kcd_mm broken on purpose')\n")
    # with its hook, which the .pth's finder runs without importing kcd_mm
    hook = osp.join(osp.dirname(osp.dirname(osp.dirname(__file__))),
                    'kcd_mm', 'mmrazor_hook.py')
    (broken / 'mmrazor_hook.py').write_text(open(hook).read())
    # (Run from tmp_path: `python -c` puts the working directory first.)
    out = _python('import mmrazor.models', cwd=str(tmp_path),
                  PYTHONPATH=str(tmp_path))
    assert out.returncode != 0
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('kcd_mm:')]
    assert len(lines) == 1, out.stdout[-3000:]
    assert 'ImportError: kcd_mm broken on purpose' in lines[0]
    assert "kcd_mm's tools/train.py" in lines[0]
    # Then mmrazor fails as it always did on torch 2.
    assert '`torch>=1.13` is not installed properly' in out.stdout


# --- MMRazor's own tools/train.py ------------------------------------------


def _teacher_checkpoint(path: str, num_classes: int) -> str:
    """A randomly initialised tiny teacher (kcd_mm.testing's KD teacher,
    16 channels), saved as a plain state dict."""
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        teacher = MODELS.build(tiny_classifier(num_classes, 3, 16))
    torch.save(teacher.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mmrazor_train_runs_a_kcd_config(tmp_path):
    root = make_image_folder(str(tmp_path / 'images'), num_images=24,
                             num_classes=3, size=16)
    teacher = _teacher_checkpoint(str(tmp_path / 'teacher.pth'), 3)
    cfg = tiny_kcd_config(root, max_epochs=2, batch_size=8, stage_epochs=1,
                          theta=0.5, num_steps=3)
    cfg['model']['teacher_ckpt'] = teacher
    config = write_config(cfg, str(tmp_path / 'kcd_tiny.py'))
    work_dir = str(tmp_path / 'work')

    out = run_tool([MMRAZOR_TRAIN, config, '--work-dir', work_dir],
                   timeout=300).stdout

    assert 'kcd_mm:' not in out, out[-3000:]
    assert f'Loads checkpoint by local backend from path: {teacher}' in out
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth')), out[-3000:]
    stages = stage_records(work_dir)
    assert [s['stage'] for s in stages] == [1]
    assert stages[0]['num_samples'] == 24
    assert stages[0]['values_recorded'] == 24
    assert stages[0]['kept'] < 24


CPU_RUN = re.compile(r'CPU run: (\d+) torch thread\(s\) \((\d+) cores, '
                     r'load [0-9.]+, 1 process\(es\) of this run here')


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mmrazor_train_chooses_cpu_threads_for_kcd_runs_only(tmp_path):
    """Without OMP_NUM_THREADS, MMRazor's tools/train.py leaves torch's
    threads to KCDHook in a KCD run (one per idle core, as kcd_mm's
    tools/train.py), and to torch in a run without KCD."""
    root = make_image_folder(str(tmp_path / 'images'), num_images=16,
                             num_classes=2, size=16)
    no_omp = dict(OMP_NUM_THREADS=None)
    kcd = write_config(
        tiny_kcd_config(root, max_epochs=2, batch_size=8, num_classes=2),
        str(tmp_path / 'kcd_tiny.py'))
    out = run_tool([MMRAZOR_TRAIN, kcd, '--work-dir', str(tmp_path / 'kcd')],
                   env=no_omp, timeout=300).stdout
    chosen = CPU_RUN.findall(out)
    assert len(chosen) == 1, out[-3000:]
    threads, cores = (int(n) for n in chosen[0])
    assert 1 <= threads <= cores
    assert stage_records(str(tmp_path / 'kcd'))[0]['stage'] == 1

    kd = write_config(tiny_kd_config(root, max_epochs=1, batch_size=8),
                      str(tmp_path / 'kd_tiny.py'))
    out = run_tool([MMRAZOR_TRAIN, kd, '--work-dir', str(tmp_path / 'kd')],
                   env=no_omp, timeout=300).stdout
    assert osp.isfile(str(tmp_path / 'kd' / 'epoch_1.pth')), out[-3000:]
    assert 'CPU run:' not in out


STOCK_KD = osp.join(DISTILL, 'kd', 'kd_logits_resnet34_resnet18_8xb32_in1k.py')
# MMRazor's KD recipe as it ships, on 32-px images in an ImageNet layout, with
# a local teacher checkpoint, batch 4 and one epoch.
STOCK_TINY = """\
_base_ = [{base!r}]
model = dict(teacher_ckpt={teacher!r})
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=32, edge='short'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={root!r}, pipeline=pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={root!r}, pipeline=pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
"""


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mmrazor_train_runs_a_stock_mmrazor_kd_config(tmp_path):
    from mmengine.hub import get_model
    root = make_imagenet_folder(str(tmp_path / 'imagenet'), 8, 4, 3)
    teacher = get_model('mmcls::resnet/resnet34_8xb32_in1k.py',
                        pretrained=False)
    teacher_path = str(tmp_path / 'resnet34.pth')
    torch.save(teacher.state_dict(), teacher_path)
    config = tmp_path / 'kd_tiny.py'
    config.write_text(
        STOCK_TINY.format(base=STOCK_KD, teacher=teacher_path, root=root))
    work_dir = str(tmp_path / 'work')

    out = run_tool([MMRAZOR_TRAIN, str(config), '--work-dir', work_dir],
                   timeout=300).stdout

    assert f'Loads checkpoint by local backend from path: {teacher_path}' \
        in out
    assert 'do not match exactly' not in out
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth')), out[-3000:]
    logs = [
        row for path in _scalar_logs(work_dir) for row in read_jsonl(path)
        if 'loss' in row
    ]
    assert logs and all(np.isfinite(row['loss']) for row in logs), logs


def _scalar_logs(work_dir: str):
    for stamp in os.listdir(work_dir):
        path = osp.join(work_dir, stamp, 'vis_data', 'scalars.json')
        if osp.isfile(path):
            yield path


# --- MMRazor's mmcls-era configs build ---------------------------------------


def _config(relative: str) -> Config:
    return Config.fromfile(osp.join(DISTILL, relative))


def _build(registry, cfg, scope):
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg)


def _lazy(dataset: dict) -> dict:
    """A dataset config that builds without its files (no CIFAR or
    ImageNet here): ``lazy_init``, and no download."""
    dataset = dataset.copy()
    dataset['lazy_init'] = True
    if dataset['type'].endswith(('CIFAR10', 'CIFAR100')):
        dataset['download'] = False
    return dataset


def _sample(size: int = 32, **extra) -> dict:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2],
                gt_label=1, sample_idx=0, **extra)


def test_mmcls_python_names_are_mmpretrain_ones():
    import mmcls.structures
    from mmengine.utils import is_installed
    from mmpretrain.datasets.transforms import PackInputs
    from mmpretrain.models import VisionTransformerClsHead
    from mmpretrain.structures import DataSample
    from mmrazor.datasets.transforms import PackCRDClsInputs
    from mmrazor.models.architectures.heads import DeiTClsHead

    assert mmcls.structures.ClsDataSample is DataSample
    assert issubclass(PackCRDClsInputs, PackInputs)
    assert issubclass(DeiTClsHead, VisionTransformerClsHead)
    # Still "not installed" for mmengine: mmcls:: paths stay rewritten.
    assert not is_installed('mmcls')
    with pytest.raises(ImportError, match='mmpretrain.no_such_module'):
        import mmcls.no_such_module  # noqa: F401


def test_mmcls_registry_names_are_mmpretrain_ones():
    from mmengine.registry import MODELS, TRANSFORMS, VISUALIZERS
    from mmpretrain.datasets.transforms import PackInputs
    from mmpretrain.models import ImageClassifier
    from mmpretrain.visualization import UniversalVisualizer
    with DefaultScope.overwrite_default_scope('mmcls'):
        assert DefaultScope.get_current_instance().scope_name == 'mmpretrain'
        assert TRANSFORMS.build(dict(type='PackClsInputs')).__class__ \
            is PackInputs
    assert MODELS.get('mmcls.ImageClassifier') is ImageClassifier
    assert MODELS.get('mmcls.models.ImageClassifier') is ImageClassifier
    assert VISUALIZERS.get('mmcls.ClsVisualizer') is UniversalVisualizer
    with pytest.raises(KeyError, match='mmcls.NoSuchModel'):
        MODELS.build(dict(type='mmcls.NoSuchModel'))


@pytest.mark.slow
def test_ofd_wrn_models_build():
    # OFD's student and teacher: WideResNets in `_scope_='mmcls'`
    # ImageClassifiers, read through `mmrazor::` cfg_paths. (The OFD
    # algorithm itself also needs scipy, which mmrazor does not declare.)
    from mmpretrain.models import ImageClassifier
    from mmrazor.models.architectures.backbones import WideResNet
    from mmrazor.registry import DATASETS, MODELS
    cfg = _config('ofd/ofd_backbone_resnet50_resnet18_8xb16_cifar10.py')
    for part, width in (('architecture', 128), ('teacher', 256)):
        model = _build(MODELS, cfg.model[part], 'mmrazor')
        assert isinstance(model, ImageClassifier)
        assert isinstance(model.backbone, WideResNet)
        assert model.head.fc.in_features == width
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    dataset = _build(DATASETS, _lazy(cfg.train_dataloader.dataset),
                     cfg.default_scope)
    assert dataset.pipeline(_sample())['inputs'].shape == (3, 32, 32)


def test_byot_builds():
    from mmrazor.registry import DATASETS, MODELS
    cfg = _config('byot/byot_resnet18_8xb16_cifar100.py')
    model = _build(MODELS, cfg.model, cfg.default_scope)
    assert type(model).__name__ == 'SelfDistill'
    assert type(model.architecture.data_preprocessor).__name__ == \
        'ClsDataPreprocessor'
    losses = model.distiller.distill_losses
    assert type(losses['loss_label_1']).__name__ == 'CrossEntropyLoss'
    dataset = _build(DATASETS, _lazy(cfg.train_dataloader.dataset),
                     cfg.default_scope)
    assert type(dataset).__name__ == 'CIFAR100'
    packed = dataset.pipeline(_sample())  # crop, flip, cutout, AutoAugment
    assert packed['inputs'].shape == (3, 32, 32)
    assert packed['data_samples'].gt_label.tolist() == [1]


@pytest.mark.slow
def test_crd_builds():
    from mmrazor.registry import DATASETS, MODELS
    cfg = _config('crd/crd_neck_r50_r18_8xb16_cifar10.py')
    cfg.model.teacher.pretrained = False
    cfg.model.teacher_ckpt = None
    model = _build(MODELS, cfg.model, cfg.default_scope)
    assert type(model).__name__ == 'SingleTeacherDistill'
    crd = cfg.train_dataloader.dataset
    crd.lazy_init = True
    crd.dataset = _lazy(crd.dataset)
    dataset = _build(DATASETS, crd, cfg.default_scope)
    assert type(dataset).__name__ == 'CRDDataset'
    assert type(dataset.dataset).__name__ == 'CIFAR10'
    packed = dataset.dataset.pipeline(
        _sample(contrast_sample_idxs=np.arange(4)))
    assert packed['inputs'].shape == (3, 32, 32)
    assert packed['data_samples'].contrast_sample_idxs.tolist() == [0, 1, 2, 3]


def test_deit_student_builds():
    # The student and data preprocessor of MMRazor's DeiT recipe. Its
    # teacher is a timm RegNetY-160 (TIMMBackbone needs timm, not a
    # dependency here, and pretrained=True downloads its weights).
    from mmrazor.models.architectures.heads import DeiTClsHead
    from mmrazor.registry import DATASETS, MODELS
    cfg = _config('deit/deit-base_regnety160_pt-16xb64_in1k.py')
    assert cfg.model.teacher._scope_ == 'mmcls'
    student = _build(MODELS, cfg.model.architecture, cfg.default_scope)
    assert type(student.backbone).__name__ == 'DistilledVisionTransformer'
    assert isinstance(student.head, DeiTClsHead)
    assert type(student.head.loss_module).__name__ == 'LabelSmoothLoss'
    preprocessor = _build(MODELS, cfg.data_preprocessor, cfg.default_scope)
    assert [type(a).__name__ for a in preprocessor.batch_augments.augments
            ] == ['Mixup', 'CutMix']
    dataset = _build(DATASETS, _lazy(cfg.train_dataloader.dataset),
                     cfg.default_scope)
    assert type(dataset).__name__ == 'ImageNet'
