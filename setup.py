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
# mmrazor before anything of kcd_mm; kcd_mm/mmrazor_hook.py (its docstring
# says how) makes that import kcd_mm first. MMRAZOR_HOOK_PTH, installed
# beside the package, runs MMRAZOR_HOOK at every interpreter start-up: a
# finder that imports nothing and answers for 'mmrazor' only, by running
# kcd_mm/mmrazor_hook.py (found without importing kcd_mm) the first time.
MMRAZOR_HOOK_PTH = 'kcd_mm_mmrazor_hook.pth'
MMRAZOR_HOOK = """\
import sys


class KcdMmrazorHook:
    impl = None  # kcd_mm/mmrazor_hook.py's namespace, once run

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != 'mmrazor':
            return None
        if cls.impl is None:
            from importlib.util import find_spec
            kcd_mm = find_spec('kcd_mm')  # finds it, imports nothing
            if kcd_mm is None or not kcd_mm.submodule_search_locations:
                return None  # kcd_mm is gone: mmrazor loads as it is
            folder = list(kcd_mm.submodule_search_locations)[0]
            try:
                with open(folder + '/mmrazor_hook.py', encoding='utf-8') as f:
                    source = f.read()
            except OSError:  # a kcd_mm without the hook: leave mmrazor be
                return None
            cls.impl = {'__name__': __name__}
            exec(source, cls.impl)
            cls.impl['hook'] = cls
        return cls.impl['find_spec'](fullname, path, target)


# Once, though site.py may read this file twice (a venv's lib64 -> lib).
if not any(getattr(f, '__qualname__', None) == 'KcdMmrazorHook'
           and getattr(f, '__module__', None) == __name__
           for f in sys.meta_path):
    sys.meta_path.insert(0, KcdMmrazorHook)
"""


def mmrazor_hook_pth() -> str:
    """The one line of MMRAZOR_HOOK_PTH: site.py runs lines that start with
    ``import``; the hook's source runs in a namespace of its own, unless
    KCD_MM_MMRAZOR_HOOK=0."""
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
