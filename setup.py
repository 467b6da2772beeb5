"""kcd_mm: Knowledge Condensation Distillation (ECCV 2022) for MMRazor."""
import os
from importlib import metadata
from setuptools import find_packages, setup


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

setup(
    name='kcd_mm',
    version='0.1.0',
    description='Knowledge Condensation Distillation as an MMRazor plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['kcd_mm', 'kcd_mm.*']),
    python_requires='>=3.8',
    install_requires=INSTALL_REQUIRES,
    # flake8, isort: as .pre-commit-config.yaml pins them; .ci/run runs both
    extras_require={
        'tests': ['pytest', 'tensorboard', 'flake8==7.1.1', 'isort==5.13.2']
    },
    license='Apache-2.0',
)
