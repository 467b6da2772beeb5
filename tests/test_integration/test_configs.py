"""Every shipped KD and KCD config loads, builds, and the pairs match.

For each ``configs/kcd/kcd_X.py`` there is a ``configs/kd/kd_X.py`` twin,
and the two loaded configs differ only by KCD's pieces: ``kcd_mm`` in
``custom_imports``, the ``KCDSampler``, the ``KnowledgeSummaryDataset``
wrapper around the same dataset, one ``KCDHook``, and (optionally) one
logits distill loss wrapped in ``ValueWeightedLoss`` around the same loss
(KCD reads the student classifier itself otherwise). Models are built
with ``teacher_ckpt=None`` (nothing is downloaded or read from disk).
"""
import copy
import functools
import glob
import os.path as osp
from typing import Any, Dict, List

import pytest
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

from kcd_mm import KCDHook, ValueWeightedLoss
from kcd_mm.tap import find_classifier_in
from helpers import repo_root

CONFIG_ROOT = osp.join(repo_root(), 'configs')
KD_CONFIGS = sorted(glob.glob(osp.join(CONFIG_ROOT, 'kd', '*.py')))
KCD_CONFIGS = sorted(glob.glob(osp.join(CONFIG_ROOT, 'kcd', '*.py')))
ALL_CONFIGS = KD_CONFIGS + KCD_CONFIGS


def _name(path: str) -> str:
    return osp.relpath(path, CONFIG_ROOT)


def _short(type_name: Any) -> str:
    """'mmrazor.KCDHook' -> 'KCDHook' (a registry scope prefix dropped)."""
    return str(type_name).rsplit('.', 1)[-1]


def _twin(kcd_path: str) -> str:
    name = osp.basename(kcd_path)
    assert name.startswith('kcd_'), f'{_name(kcd_path)}: name it kcd_*.py'
    return osp.join(CONFIG_ROOT, 'kd', 'kd_' + name[len('kcd_'):])


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    return Config.fromfile(path)


def _as_dict(path: str) -> Dict:
    return copy.deepcopy(_load(path).to_dict())


@functools.lru_cache(maxsize=None)
def _build(path: str) -> nn.Module:
    from mmrazor.registry import MODELS
    cfg = copy.deepcopy(_load(path))
    imports = cfg.get('custom_imports')
    if imports:
        import_modules_from_strings(**imports)
    cfg.model.teacher_ckpt = None
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        return MODELS.build(cfg.model)


def _differences(a: Any, b: Any, where: str = '') -> List[str]:
    """Paths at which two plain config values differ (for messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            path = f'{where}.{key}' if where else str(key)
            if key not in a or key not in b:
                side = 'KCD' if key in a else 'KD'
                out.append(f'{path} only in {side}')
            else:
                out += _differences(a[key], b[key], path)
        return out
    if (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
            and len(a) == len(b)):
        return [
            d for i, (x, y) in enumerate(zip(a, b))
            for d in _differences(x, y, f'{where}[{i}]')
        ]
    return [] if a == b else [f'{where}: {a!r} != {b!r}']


def _strip_kcd(kcd: Dict, kd: Dict) -> Dict:
    """Undo KCD's pieces in a KCD config dict, checking each on the way.

    Returns what the config would be without KCD; the caller compares it
    with the KD twin.
    """
    cfg = copy.deepcopy(kcd)

    # custom_imports pulls in kcd_mm; any other imports stay as the twin's.
    imports = cfg.pop('custom_imports', None) or {}
    assert 'kcd_mm' in imports.get('imports', []), \
        "custom_imports must import 'kcd_mm'"
    assert imports.get('allow_failed_imports', False) is False
    twin_imports = kd.get('custom_imports') or {}
    assert ([m for m in imports['imports'] if m != 'kcd_mm'] == [
        m for m in twin_imports.get('imports', []) if m != 'kcd_mm'
    ]), 'custom_imports differ beyond kcd_mm'
    if twin_imports:  # the twin imports kcd_mm too (its checkpoint hook)
        cfg['custom_imports'] = twin_imports

    # Exactly one KCDHook; the other custom hooks are the twin's.
    hooks = cfg.pop('custom_hooks', [])
    kcd_hooks = [h for h in hooks if _short(h.get('type')) == 'KCDHook']
    assert len(kcd_hooks) == 1, f'want one KCDHook, got {len(kcd_hooks)}'
    hook = kcd_hooks[0]
    others = [h for h in hooks if h is not hook]
    if others or kd.get('custom_hooks'):
        cfg['custom_hooks'] = others

    # KCDSampler in place of the twin's sampler, same other arguments. The
    # registry scope goes with the type (a package base adds _scope_).
    loader = cfg['train_dataloader']
    sampler = loader['sampler']
    assert _short(sampler['type']) == 'KCDSampler', sampler
    twin_sampler = kd['train_dataloader']['sampler']
    sampler = {k: v for k, v in sampler.items() if k != '_scope_'}
    sampler.update({
        k: twin_sampler[k]
        for k in ('type', '_scope_') if k in twin_sampler
    })
    loader['sampler'] = sampler

    # The training set wrapped for the summary (needed unless prune-only).
    dataset = loader['dataset']
    wrapped = _short(dataset['type']) == 'KnowledgeSummaryDataset'
    if hook.get('summary', 'persistent'):
        assert wrapped, ('KCDHook(summary=...) needs train_dataloader.'
                         'dataset wrapped in KnowledgeSummaryDataset')
    if wrapped:
        assert set(dataset) <= {'type', 'dataset', 'lazy_init'}, dataset
        loader['dataset'] = dataset['dataset']

    # At most one ValueWeightedLoss, around the twin's loss.
    losses = cfg['model']['distiller']['distill_losses']
    twin_losses = kd['model']['distiller']['distill_losses']
    wrappers = 0
    for name, loss in losses.items():
        if _short(loss.get('type')) != 'ValueWeightedLoss':
            continue
        wrappers += 1
        assert name in twin_losses, f'{name} not in the KD twin'
        assert loss['loss'] == twin_losses[name], (
            f'{name} wraps {loss["loss"]}, the KD twin has '
            f'{twin_losses[name]}')
        losses[name] = loss['loss']
    assert wrappers <= 1, 'more than one distill loss wrapped'
    return cfg


def test_configs_found():
    assert len(KD_CONFIGS) >= 3 and len(KCD_CONFIGS) >= 3, ALL_CONFIGS
    expected = {
        'kd/kd_r34_r18_imagenet.py', 'kcd/kcd_r34_r18_imagenet.py'
    }
    assert expected <= set(map(_name, ALL_CONFIGS))


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_name)
def test_config_has_header(path):
    with open(path) as f:
        first = f.readline()
    assert first.startswith('# ') or first.startswith('"""'), (
        f'{_name(path)} needs a comment header saying what it reproduces')


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=_name)
def test_config_builds(path):
    from mmrazor.models import SingleTeacherDistill
    cfg = _load(path)
    assert 'teacher_ckpt' in cfg.model
    model = _build(path)
    # SingleTeacherDistill or a method's own subclass (OFD's).
    assert isinstance(model, SingleTeacherDistill), type(model)
    assert type(model.data_preprocessor).__name__ in (
        'ClsDataPreprocessor', 'ImgDataPreprocessor')
    # KCD counts epochs: an iteration-based lr schedule would run behind.
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for scheduler in schedulers:
        assert scheduler.get('by_epoch', True), scheduler
        assert not scheduler.get('convert_to_iter_based', False), scheduler
    assert cfg.train_cfg.get('by_epoch', True)


@pytest.mark.parametrize('path', KCD_CONFIGS, ids=_name)
def test_kcd_differs_from_kd_twin_only_by_kcd(path):
    twin = _twin(path)
    assert osp.isfile(twin), f'{_name(path)} has no KD twin {_name(twin)}'
    kd = _as_dict(twin)
    stripped = _strip_kcd(_as_dict(path), kd)
    differences = _differences(stripped, kd)
    assert not differences, (
        f'{_name(path)} differs from {_name(twin)} beyond KCD:\n' +
        '\n'.join(differences))


@pytest.mark.parametrize('path', KCD_CONFIGS, ids=_name)
def test_kcd_pieces_build(path):
    from mmrazor.registry import HOOKS
    cfg = _load(path)
    max_epochs = cfg.train_cfg.max_epochs
    hook_cfg = [
        h for h in cfg.custom_hooks if _short(h['type']) == 'KCDHook'
    ][0]
    hook = HOOKS.build(copy.deepcopy(hook_cfg))
    assert isinstance(hook, KCDHook)
    opts = hook.options
    assert 1 <= opts.stage_epochs < max_epochs, 'no E-step would happen'
    assert 0 < opts.theta < 1 and opts.num_steps >= 1

    kcd_model = _build(path)
    kcd_losses = [
        m for m in kcd_model.modules() if isinstance(m, ValueWeightedLoss)
    ]
    assert len([m for m in kcd_losses if m.record]) <= 1
    if not kcd_losses:  # KCD reads the student's classifier: a logits one
        fc, _ = find_classifier_in(kcd_model.student, hook_cfg.get(
            'classifier'))
        assert isinstance(fc, nn.Linear)
        assert fc.out_features == kcd_model.student.head.num_classes
    kd_model = _build(_twin(path))
    assert not any(
        isinstance(m, ValueWeightedLoss) for m in kd_model.modules())
    kd_losses = kd_model.distiller.distill_losses
    kcd_model_losses = _build(path).distiller.distill_losses
    assert set(kd_losses.keys()) == set(kcd_model_losses.keys())
    for wrapper in kcd_losses:
        name = [
            k for k, v in kcd_model_losses.items() if v is wrapper
        ][0]
        inner, plain = wrapper.loss, kd_losses[name]
        assert type(inner) is type(plain)
        # Same hyper-parameters (tau, loss_weight, reduction, ...).
        assert {k: v for k, v in vars(inner).items()
                if not k.startswith('_') and k != 'training'} == {
                    k: v for k, v in vars(plain).items()
                    if not k.startswith('_') and k != 'training'}
