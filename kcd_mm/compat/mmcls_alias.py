"""mmcls: MMRazor 1.0.0's mmcls 1.x code, configs and names read from
mmpretrain, where no real mmcls is installed.

Every function here does nothing where mmcls is installed (decided once,
before the alias module finder is in place): then MMRazor uses it.
"""
import functools
import importlib
import importlib.util
import os.path as osp
import re
import sys
import types
from typing import Optional

_MMCLS_RENAMES = {
    'PackClsInputs': 'PackInputs',  # TRANSFORMS, datasets.transforms
    'ClsVisualizer': 'UniversalVisualizer',  # VISUALIZERS, visualization
    'ClsDataSample': 'DataSample',  # structures
}
# mmcls 1.x config files that mmpretrain renamed: the DeiT ones lost their
# ``_pt``/``_ft`` (``deit/deit-base_pt-16xb64_in1k.py`` ->
# ``deit/deit-base_16xb64_in1k.py``, the base of MMRazor's DeiT recipe).
_MMCLS_CONFIG_RENAME = re.compile(r'^(deit/deit-[^/]*?)_(?:pt|ft)-')
_MMCLS_MISSING: Optional[bool] = None  # decided once, before the alias


def _mmcls_missing() -> bool:
    """Whether no real mmcls is installed (kcd_mm's alias aside)."""
    global _MMCLS_MISSING
    if _MMCLS_MISSING is None:
        _MMCLS_MISSING = ('mmcls' not in sys.modules
                          and importlib.util.find_spec('mmcls') is None)
    return _MMCLS_MISSING


def _mmpretrain_config(relative: str) -> str:
    """``relative`` (an mmcls 1.x config path) as mmpretrain names it."""
    renamed = _MMCLS_CONFIG_RENAME.sub(r'\1_', relative)
    if renamed == relative or importlib.util.find_spec('mmpretrain') is None:
        return relative
    from mmengine.utils import get_installed_path
    configs = osp.join(get_installed_path('mmpretrain'), '.mim', 'configs')
    if (not osp.isfile(osp.join(configs, relative))
            and osp.isfile(osp.join(configs, renamed))):
        return renamed
    return relative


def _mmcls_config_paths() -> None:
    """mmengine tries to ``pip install mmcls`` for a ``mmcls::`` path.

    MMRazor's shipped configs name ``mmcls::`` bases and ``cfg_path`` models;
    mmcls is gone, and its configs live on in mmpretrain under the same
    relative paths, except the DeiT ones, which lost ``_pt``/``_ft``
    (``FileNotFoundError: .../mmpretrain/.mim/configs/deit/
    deit-base_pt-16xb64_in1k.py`` for MMRazor's DeiT recipe). Rewrite the
    prefix, and such a name when mmpretrain has only the new one, where
    mmengine resolves config paths. Nothing is rewritten where a real
    mmcls is installed.
    """
    from mmengine import hub
    from mmengine.config import Config
    if not _mmcls_missing():
        return

    def rewrite(path):
        if isinstance(path, str) and path.startswith('mmcls::'):
            return 'mmpretrain::' + _mmpretrain_config(path[len('mmcls::'):])
        return path

    original = Config._get_cfg_path
    if getattr(original, '_kcd_rewrites', False):
        return

    def _get_cfg_path(cfg_path, filename):
        return original(rewrite(cfg_path), filename)

    _get_cfg_path._kcd_rewrites = True
    Config._get_cfg_path = staticmethod(_get_cfg_path)
    for fn_name in ('get_config', 'get_model'):
        fn = getattr(hub, fn_name)

        def wrapped(cfg_path, *args, _fn=fn, **kwargs):
            return _fn(rewrite(cfg_path), *args, **kwargs)

        wrapped.__doc__ = fn.__doc__
        setattr(hub, fn_name, wrapped)
        setattr(sys.modules['mmengine.hub.hub'], fn_name, wrapped)


def _mmpretrain_type(name: str, scoped: bool = False) -> str:
    """The mmpretrain name of the mmcls 1.x type ``name`` (``mmcls.X``):
    ``mmpretrain.X``, or ``X`` when it is built in the mmpretrain scope
    (``scoped``); a renamed class (:data:`_MMCLS_RENAMES`) by its new name.
    """
    module, _, last = name[len('mmcls.'):].rpartition('.')
    last = _MMCLS_RENAMES.get(last, last)
    if scoped and not module:
        return last
    return '.'.join(p for p in ('mmpretrain', module, last) if p)


def _mmcls_registry_names() -> None:
    """``KeyError: 'ImageClassifier is not in the mmengine::model registry'``
    (a dict with ``_scope_='mmcls'``: OFD's WRN models, CRD's datasets,
    DeiT's teacher), ``KeyError: 'mmcls.ImageClassifier is not in the
    mmrazor::model registry'`` (an ``mmcls.X`` type: BYOT, DeiT), then
    ``KeyError: 'ClsDataPreprocessor is not in the mmrazor::model
    registry'`` (BYOT's ``mmcls.ImageClassifier``), and ``KeyError:
    'PackClsInputs is not in the mmpretrain::transform registry'`` (BYOT's
    data) when MMRazor configs written for mmcls 1.x are built.

    mmcls 1.x's registries live on in mmpretrain, under the scope
    ``mmpretrain``. For scope ``mmcls`` mmengine finds no registry, warns,
    and searches the registry it was asked (often mmengine's root), where
    mmpretrain's classes are not; and mmcls 1.x's classes named their own
    defaults ``mmcls.X`` (ImageClassifier's ``mmcls.ClsDataPreprocessor``),
    where mmpretrain's name plain ``X``, found only in the mmpretrain scope.
    Where no real mmcls is installed:

    - a ``DefaultScope`` made with the scope name ``mmcls`` (``_scope_``,
      ``default_scope``, ``init_default_scope``) gets ``mmpretrain``;
    - ``Registry.build`` builds a dict typed ``mmcls.X`` (and no
      ``_scope_``) as ``X`` with ``_scope_='mmpretrain'`` (every plain type
      nested in such a dict in MMRazor 1.0.0's configs is an mmpretrain
      one); ``Registry.get`` reads ``mmcls.X`` as ``mmpretrain.X``;
    - a registry of scope ``mmpretrain`` with nothing under a name that
      mmpretrain renamed (``PackClsInputs``, ``ClsVisualizer``) returns the
      class of the new name (``PackInputs``, ``UniversalVisualizer``).

    Every other build and lookup is mmengine's own; a name found nowhere
    fails as before, with the config's spelling in the message.
    """
    from mmengine.registry import DefaultScope, Registry
    if not _mmcls_missing():
        return
    original_get = Registry.get
    if getattr(original_get, '_kcd_mmcls', False):
        return

    @functools.wraps(original_get)
    def get(self, key):
        if isinstance(key, str) and key.startswith('mmcls.'):
            key = _mmpretrain_type(key)
        found = original_get(self, key)
        if (found is None and key in _MMCLS_RENAMES
                and self.scope == 'mmpretrain'):
            found = original_get(self, _MMCLS_RENAMES[key])
        return found

    get._kcd_mmcls = True
    Registry.get = get

    original_build = Registry.build

    @functools.wraps(original_build)
    def build(self, cfg, *args, **kwargs):
        kind = cfg.get('type') if isinstance(cfg, dict) else None
        if (isinstance(kind, str) and kind.startswith('mmcls.')
                and cfg.get('_scope_') is None
                and get(self, kind) is not None):
            cfg = cfg.copy()
            cfg['type'] = _mmpretrain_type(kind, scoped=True)
            cfg['_scope_'] = 'mmpretrain'
        return original_build(self, cfg, *args, **kwargs)

    Registry.build = build

    original_init = DefaultScope.__init__

    @functools.wraps(original_init)
    def __init__(self, name, scope_name):
        if scope_name == 'mmcls':
            scope_name = 'mmpretrain'
        original_init(self, name, scope_name)

    DefaultScope.__init__ = __init__


class _MmclsModule(types.ModuleType):
    """``mmcls`` or ``mmcls.<sub>`` where mmcls is not installed: a package
    whose attributes are those of ``mmpretrain[.<sub>]``, mmcls 1.x's
    renamed names (:data:`_MMCLS_RENAMES`) under their old names."""

    def __getattr__(self, name):
        target = self.__dict__.get('_kcd_target')
        if target is None or (name.startswith('__')
                              and name not in ('__all__', '__version__')):
            raise AttributeError(name)
        if hasattr(target, name) or name not in _MMCLS_RENAMES:
            return getattr(target, name)
        return getattr(target, _MMCLS_RENAMES[name])


class _MmclsAlias:
    """Meta path finder and loader of :class:`_MmclsModule` modules."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != 'mmcls' and not fullname.startswith('mmcls.'):
            return None
        # Every one a package, so that its submodules come here too; the
        # mmpretrain module is imported (and its absence found) in
        # create_module, outside the import system's global lock.
        return importlib.util.spec_from_loader(fullname, cls, is_package=True)

    @staticmethod
    def create_module(spec):
        real = 'mmpretrain' + spec.name[len('mmcls'):]
        try:
            target = importlib.import_module(real)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f'No module named {spec.name!r} (kcd_mm.compat reads mmcls '
                f'as mmpretrain, and found no {real!r}: {exc})',
                name=spec.name) from None
        module = _MmclsModule(spec.name, getattr(target, '__doc__', None))
        module._kcd_target = target
        return module

    @staticmethod
    def exec_module(module):
        pass


def _mmcls_modules() -> None:
    """``ImportError: `mmcls` is not installed properly, plz check.`` when
    MMRazor builds ``PackCRDClsInputs`` (CRD's data), ``DeiTClsHead``
    (DeiT) or another of its classes made on mmcls.

    mmrazor 1.0.0 derives some classes from mmcls 1.x ones
    (``from mmcls.datasets.transforms.formatting import PackClsInputs``,
    ``from mmcls.models import VisionTransformerClsHead``, ...), and where
    the import fails it uses a placeholder base whose ``__init__`` raises.
    mmcls 1.x's code lives on in mmpretrain, in modules of the same paths.
    Where no real mmcls is installed, a meta path finder (last on
    ``sys.meta_path``) answers ``import mmcls[.X]`` with a module whose
    attributes are ``mmpretrain[.X]``'s, and mmcls 1.x's renamed names
    (``PackClsInputs``, ``ClsDataSample``, ``ClsVisualizer``) give the
    classes of their new names. Applied before mmrazor is imported (kcd_mm
    imports this module first, and kcd_mm's ``.pth`` hook imports kcd_mm
    before mmrazor). The modules have no ``__file__``, so mmengine's
    ``is_installed('mmcls')`` still says False and ``mmcls::`` paths keep
    going through :func:`_mmcls_config_paths`.
    """
    if not _mmcls_missing() or _MmclsAlias in sys.meta_path:
        return
    sys.meta_path.append(_MmclsAlias)


def apply() -> None:
    """The module alias (before mmrazor is imported), config paths and
    registry names; each a no-op where mmcls is installed."""
    _mmcls_modules()
    _mmcls_config_paths()
    _mmcls_registry_names()
