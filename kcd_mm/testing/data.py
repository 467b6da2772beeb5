"""Tiny image data for real Runner runs: class folders, an ImageNet
layout, MNIST idx files (see :mod:`kcd_mm.testing`)."""
import os
import os.path as osp
from typing import Dict


def make_image_folder(root: str,
                      num_images: int = 64,
                      num_classes: int = 2,
                      size: int = 16,
                      channels: int = 3,
                      seed: int = 0) -> str:
    """Write ``num_images`` random PNGs as a CustomDataset class-folder tree.

    Images are split evenly (round robin) over ``class_0 ... class_{C-1}``;
    class ``c`` has mean brightness rising with ``c`` plus noise, so the
    classes are learnable but not trivially separable by one pixel.

    Args:
        root (str): Folder to create; it will hold one folder per class.
        num_images (int): Total number of images. Defaults to 64.
        num_classes (int): Number of classes. Defaults to 2.
        size (int): Height and width in pixels. Defaults to 16.
        channels (int): 1 (grey) or 3 (colour). Defaults to 3.
        seed (int): Seed of the noise. Defaults to 0.

    Returns:
        str: ``root``.
    """
    import cv2
    import numpy as np
    assert channels in (1, 3), 'channels must be 1 or 3'
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        os.makedirs(osp.join(root, f'class_{c}'), exist_ok=True)
    for i in range(num_images):
        c = i % num_classes
        mean = 255.0 * (c + 1) / (num_classes + 1)
        shape = (size, size) if channels == 1 else (size, size, channels)
        img = np.clip(rng.normal(mean, 40.0, shape), 0, 255).astype(np.uint8)
        cv2.imwrite(osp.join(root, f'class_{c}', f'{i:05d}.png'), img)
    return root


def make_imagenet_folder(root: str,
                         num_train: int,
                         num_val: int,
                         num_classes: int = 3,
                         size: int = 32) -> str:
    """An ImageNet-layout folder: ``train/``, ``val/`` and ``meta/*.txt``.

    mmpretrain's ImageNet asserts 1000 class folders when it scans them,
    but an annotation file may hold any labels, so the splits are listed
    in ``meta/train.txt`` and ``meta/val.txt``.

    Args:
        root (str): Folder to create (it must not exist yet).
        num_train (int): Training images (seed 0).
        num_val (int): Validation images (seed 1).
        num_classes (int): Number of classes. Defaults to 3.
        size (int): Height and width in pixels. Defaults to 32.

    Returns:
        str: ``root``.
    """
    os.makedirs(osp.join(root, 'meta'))
    for split, num, seed in (('train', num_train, 0), ('val', num_val, 1)):
        folder = make_image_folder(
            osp.join(root, split), num_images=num, num_classes=num_classes,
            size=size, seed=seed)
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            for c in range(num_classes):
                for name in sorted(os.listdir(osp.join(folder, f'class_{c}'))):
                    f.write(f'class_{c}/{name} {c}\n')
    return root


def make_mnist_folder(root: str, num_images: int = 64,
                      num_classes: int = 3, size: int = 16,
                      seed: int = 0) -> str:
    """Grey images of :func:`make_image_folder`'s kind as MNIST idx files
    (``train-*`` and ``t10k-*``, the same images), which mmpretrain's
    ``MNIST`` and ``FashionMNIST`` load into memory.

    Returns:
        str: ``root``.
    """
    import numpy as np
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images, dtype=np.uint8) % num_classes
    mean = 255.0 * (labels.astype(np.float64) + 1) / (num_classes + 1)
    images = np.clip(
        rng.normal(mean[:, None, None], 40.0, (num_images, size, size)), 0,
        255).astype(np.uint8)
    os.makedirs(root, exist_ok=True)
    for prefix in ('train', 't10k'):
        for kind, array, code in (('images-idx3', images, 0x803),
                                  ('labels-idx1', labels, 0x801)):
            header = np.array((code, ) + array.shape, dtype='>i4')
            with open(osp.join(root, f'{prefix}-{kind}-ubyte'), 'wb') as f:
                f.write(header.tobytes() + array.tobytes())
    return root


def use_mnist(cfg: Dict, data_root: str) -> Dict:
    """Point a tiny config (built with ``in_channels=1``) at a
    :func:`make_mnist_folder` folder: every dataset becomes mmpretrain's
    in-memory ``MNIST``, the pipelines lose their ``LoadImageFromFile``.
    Changes and returns ``cfg``."""
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        dataset = loader['dataset']
        while dataset.get('type', '').endswith('KnowledgeSummaryDataset'):
            dataset = dataset['dataset']
        pipeline = [t for t in dataset['pipeline']
                    if t['type'] != 'LoadImageFromFile']
        dataset.clear()
        dataset.update(type='MNIST', data_root=data_root, download=False,
                       split='train' if name == 'train_dataloader' else
                       'test', test_mode=name != 'train_dataloader',
                       pipeline=pipeline)
    return cfg
