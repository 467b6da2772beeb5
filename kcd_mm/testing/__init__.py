"""Tiny data and configs for real mmengine Runner runs, in seconds.

Like ``mmengine.testing``: builders that the tests and the benchmarks
(``benchmarks/bench_overhead.py``) share, so a script need not reach into
``tests/``. Not imported by ``kcd_mm`` itself; mmengine and cv2 are
imported only inside the functions that need them.

* :func:`make_image_folder` writes a small mmpretrain ``CustomDataset``
  folder (one sub-folder per class) of random PNG images whose classes are
  separable by brightness, so a few epochs give a visible accuracy;
  :func:`make_imagenet_folder` lays such folders out as ImageNet does;
  :func:`make_mnist_folder` writes such images as MNIST's idx files, for
  mmpretrain's in-memory ``MNIST`` dataset (:func:`use_mnist`).
* :func:`tiny_classifier` returns an mmpretrain ``ImageClassifier`` dict
  (a narrow ``ResNet_CIFAR``).
* :func:`tiny_classifier_config` / :func:`tiny_kd_config` return complete
  Runner config dicts: a plain classifier, and an MMRazor logits-KD
  ``SingleTeacherDistill`` (KL divergence on ``head.fc`` outputs) validated
  with ``mmrazor.SingleTeacherDistillValLoop``.
* :func:`add_kcd` turns such a KD config into KCD the way a user's config
  does; :func:`tiny_kcd_config` is a tiny KD run with KCD.
* :func:`write_config` dumps such a dict to a ``.py`` config file.

The data builders are in :mod:`.data`, the configs in :mod:`.configs`.
"""
from .configs import (add_kcd, tiny_classifier, tiny_classifier_config,
                      tiny_kcd_config, tiny_kd_config, write_config)
from .data import (make_image_folder, make_imagenet_folder, make_mnist_folder,
                   use_mnist)

__all__ = [
    'make_image_folder', 'make_imagenet_folder', 'make_mnist_folder',
    'use_mnist', 'tiny_classifier', 'tiny_classifier_config',
    'tiny_kd_config', 'add_kcd', 'tiny_kcd_config', 'write_config'
]
