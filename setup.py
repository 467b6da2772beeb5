"""kcd_mm: Knowledge Condensation Distillation (ECCV 2022) for MMRazor."""
import os
from importlib import metadata
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


def _mmcv_requirement():
    """mmcv-lite, unless the user already has (or asks for) full mmcv.

    Both packages install the module ``mmcv``; having both breaks it. A GPU
    user with a full mmcv 2.1.0 sets KCD_MM_FULL_MMCV=1 (needed with pip's
    build isolation, which hides the installed one from this check).
    """
    if os.environ.get('KCD_MM_FULL_MMCV') == '1':
        return 'mmcv==2.1.0'
    try:
        metadata.distribution('mmcv')
        return 'mmcv==2.1.0'
    except metadata.PackageNotFoundError:
        return 'mmcv-lite==2.1.0'


# The OpenMMLab stack kcd_mm is tested on (docs/troubleshooting.md says
# why each pin). torch is deliberately not listed: pip would replace a
# user's CUDA build; install it first (`pip install torch==2.13.0` here).
INSTALL_REQUIRES = [
    'setuptools<82',  # mmengine imports pkg_resources, removed in 82
    'mmengine==0.10.7',
    _mmcv_requirement(),  # mmrazor 1.0.0 asserts mmcv<=2.1.0
    'mmpretrain==1.2.0',
    'mmrazor==1.0.0',
    'torchvision==0.28.0',
    'joblib',  # mmrazor imports it without declaring it
]


# MMRazor's own entry points (its tools/train.py, `mim train mmrazor`) import
# mmrazor before anything of kcd_mm, and mmrazor 1.0.0 cannot be imported on
# torch 2 without kcd_mm.compat (docs/troubleshooting.md). The .pth file
# MMRAZOR_HOOK_PTH, installed beside the package, puts a meta path finder
# first on sys.meta_path at interpreter start-up: MMRAZOR_HOOK, a few lines
# that import nothing (sys is loaded already) and only compare each imported
# name with 'mmrazor'. The first time mmrazor is imported it compiles
# MMRAZOR_HOOK_LOADER, which wraps mmrazor's loader: that takes the finder
# off sys.meta_path and imports kcd_mm (kcd_mm.compat first, then mmrazor and
# KCD's modules), and mmrazor's import then returns the module kcd_mm
# loaded. Where importing kcd_mm fails it prints one line and mmrazor loads
# as it is. KCD_MM_MMRAZOR_HOOK=0 leaves mmrazor alone.
MMRAZOR_HOOK_PTH = 'kcd_mm_mmrazor_hook.pth'
MMRAZOR_HOOK_LOADER = """\
import sys


def find_spec(fullname, path, target):
    for finder in sys.meta_path:
        find = getattr(finder, 'find_spec', None)
        if finder is hook or find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            if spec.loader is not None:
                spec.loader = Loader(spec.loader)
            return spec
    return None


class Loader:

    def __init__(self, loader):
        self.loader = loader
        self.spec = None

    def create_module(self, spec):
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        if 'kcd_mm' not in sys.modules:
            try:
                import kcd_mm  # noqa: F401  kcd_mm.compat, then mmrazor
            except ModuleNotFoundError as exc:
                if exc.name != 'kcd_mm':  # kcd_mm is gone: say nothing
                    warn(exc)
            except Exception as exc:
                warn(exc)
        module = sys.modules.get(spec.name)
        if module is None:  # mmrazor was not imported: load it as it is
            spec.loader = self.loader
            return self.loader.create_module(spec)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # mmrazor's own, from kcd_mm's import

    def __getattr__(self, name):  # the rest of the loader protocol
        return getattr(self.loader, name)


def warn(exc):
    text = ' '.join(str(exc).split())
    if 'kcd_mm.compat' in sys.modules:
        done = "kcd_mm's stack shims are applied, KCD's modules are not"
    else:
        done = ('mmrazor loads without its stack shims: on torch 2 train '
                "with kcd_mm's tools/train.py")
    sys.stderr.write(
        f'kcd_mm: import kcd_mm failed ({type(exc).__name__}: {text}); '
        f'{done} (KCD_MM_MMRAZOR_HOOK=0 turns this hook off)\\n')
"""
MMRAZOR_HOOK = """\
import sys


class KcdMmrazorHook:
    # kcd_mm's mmrazor import hook; kcd_mm's setup.py says why.
    impl = None  # LOADER's namespace, once compiled

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != 'mmrazor':
            return None
        if cls.impl is None:
            cls.impl = {'__name__': __name__, 'hook': cls}
            exec(LOADER, cls.impl)
        return cls.impl['find_spec'](fullname, path, target)


LOADER = %r
# Once, though site.py may read this file twice (a venv's lib64 -> lib).
if not any(getattr(f, '__qualname__', None) == 'KcdMmrazorHook'
           and getattr(f, '__module__', None) == __name__
           for f in sys.meta_path):
    sys.meta_path.insert(0, KcdMmrazorHook)
""" % MMRAZOR_HOOK_LOADER


def mmrazor_hook_pth() -> str:
    """The one line of MMRAZOR_HOOK_PTH: site.py runs lines that start with
    ``import``; the hook's source runs in a namespace of its own."""
    return ('import os, sys; exec(%r, {"__name__": "kcd_mm_mmrazor_hook"}) '
            "if os.environ.get('KCD_MM_MMRAZOR_HOOK', '1') != '0' else None\n"
            % MMRAZOR_HOOK)


class BuildPyWithMmrazorHook(build_py):
    """build_py that also writes MMRAZOR_HOOK_PTH, beside the package.

    A wheel (``pip install .``) takes it from build_lib into
    site-packages. An editable wheel (``pip install -e .``, setuptools >=
    64) leaves build_lib out and packs the install folder it has set up,
    so in editable mode the file is written there.
    """

    def run(self):
        super().run()
        folder = self.build_lib
        if getattr(self, 'editable_mode', False):
            folder = self.get_finalized_command('install').install_lib
        self.mkpath(folder)
        with open(os.path.join(folder, MMRAZOR_HOOK_PTH), 'w') as f:
            f.write(mmrazor_hook_pth())

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, 'editable_mode', False):
            outputs.append(os.path.join(self.build_lib, MMRAZOR_HOOK_PTH))
        return outputs


setup(
    name='kcd_mm',
    version='0.1.0',
    description='Knowledge Condensation Distillation as an MMRazor plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['kcd_mm', 'kcd_mm.*']),
    python_requires='>=3.8',
    install_requires=INSTALL_REQUIRES,
    cmdclass={'build_py': BuildPyWithMmrazorHook},
    # flake8, isort: as .pre-commit-config.yaml pins them; .ci/run runs both
    extras_require={
        # scipy: MMRazor's OFD (configs/kcd/kcd_ofd_*) needs it, undeclared
        'tests': [
            'pytest', 'tensorboard', 'scipy', 'flake8==7.1.1', 'isort==5.13.2'
        ]
    },
    license='Apache-2.0',
)
