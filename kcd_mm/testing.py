"""Tiny data and configs for real mmengine Runner runs, in seconds.

Why one long module: the builders compose (folder -> classifier -> KD ->
KCD config), and tests and benchmarks import them from one place.

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
"""
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence


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


def tiny_classifier(num_classes: int = 2,
                    in_channels: int = 3,
                    base_channels: int = 8,
                    depth: int = 18) -> Dict:
    """Return a narrow mmpretrain ``ImageClassifier`` config dict.

    Args:
        num_classes (int): Output classes. Defaults to 2.
        in_channels (int): Input image channels. Defaults to 3.
        base_channels (int): Stem and first-stage width of the
            ``ResNet_CIFAR``; the head sees ``8 * base_channels`` features.
            Defaults to 8.
        depth (int): ResNet depth (18 or 34 keep the basic block).
            Defaults to 18.
    """
    return dict(
        type='ImageClassifier',
        backbone=dict(
            type='ResNet_CIFAR',
            depth=depth,
            in_channels=in_channels,
            stem_channels=base_channels,
            base_channels=base_channels,
            num_stages=4,
            out_indices=(3, ),
            style='pytorch'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=num_classes,
            in_channels=8 * base_channels,
            loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
            topk=(1, )))


def _data_preprocessor(num_classes: int, in_channels: int) -> Dict:
    return dict(
        type='ClsDataPreprocessor',
        num_classes=num_classes,
        mean=[127.5] * in_channels,
        std=[64.0] * in_channels,
        to_rgb=False)


def _dataloader(data_root: str, batch_size: int, train: bool,
                num_workers: int, in_channels: int) -> Dict:
    load = dict(type='LoadImageFromFile')
    if in_channels == 1:
        load['color_type'] = 'grayscale'
    pipeline: List[Dict] = [load]
    if train:
        pipeline.append(dict(type='RandomFlip', prob=0.5,
                             direction='horizontal'))
    pipeline.append(dict(type='PackInputs'))
    return dict(
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        dataset=dict(
            type='CustomDataset',
            data_root=data_root,
            with_label=True,
            pipeline=pipeline),
        sampler=dict(type='DefaultSampler', shuffle=train),
        collate_fn=dict(type='default_collate'))


def tiny_classifier_config(data_root: str,
                           num_classes: int = 2,
                           in_channels: int = 3,
                           base_channels: int = 8,
                           max_epochs: int = 2,
                           batch_size: int = 16,
                           num_workers: int = 0,
                           lr: float = 0.05,
                           val_data_root: Optional[str] = None) -> Dict:
    """Return a complete plain mmpretrain classification config dict.

    Training and validation/test read ``CustomDataset`` folders (see
    :func:`make_image_folder`); validation and test use ``val_data_root``
    when given, else the training folder. A checkpoint is saved every
    epoch; logs every iteration.

    Args:
        data_root (str): Training image folder.
        num_classes (int): Classes in the folder. Defaults to 2.
        in_channels (int): Image channels. Defaults to 3.
        base_channels (int): Width of the ResNet. Defaults to 8.
        max_epochs (int): Training epochs. Defaults to 2.
        batch_size (int): Per-process batch size. Defaults to 16.
        num_workers (int): Dataloader workers. Defaults to 0.
        lr (float): SGD learning rate. Defaults to 0.05.
        val_data_root (str, optional): Validation/test image folder.
    """
    val_root = val_data_root or data_root
    val_loader = _dataloader(val_root, batch_size, False, num_workers,
                             in_channels)
    model = tiny_classifier(num_classes, in_channels, base_channels)
    model['data_preprocessor'] = _data_preprocessor(num_classes, in_channels)
    return dict(
        default_scope='mmpretrain',
        model=model,
        train_dataloader=_dataloader(data_root, batch_size, True, num_workers,
                                     in_channels),
        val_dataloader=val_loader,
        test_dataloader=dict(val_loader),
        val_evaluator=dict(type='Accuracy', topk=(1, )),
        test_evaluator=dict(type='Accuracy', topk=(1, )),
        optim_wrapper=dict(
            type='OptimWrapper',
            optimizer=dict(
                type='SGD', lr=lr, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=[],
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs, val_interval=1),
        val_cfg=dict(),
        test_cfg=dict(),
        auto_scale_lr=dict(enable=False, base_batch_size=batch_size),
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', interval=1),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        env_cfg=dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
            dist_cfg=dict(backend='nccl')),
        log_level='INFO',
        load_from=None,
        resume=False,
        randomness=dict(seed=0, deterministic=False))


def tiny_kd_config(data_root: str,
                   num_classes: int = 2,
                   in_channels: int = 3,
                   student_channels: int = 8,
                   teacher_channels: int = 16,
                   teacher_ckpt: Optional[str] = None,
                   tau: float = 4.0,
                   max_epochs: int = 2,
                   batch_size: int = 16,
                   num_workers: int = 0,
                   lr: float = 0.05,
                   val_data_root: Optional[str] = None,
                   custom_imports: Sequence[str] = ()) -> Dict:
    """Return a plain MMRazor logits-KD config dict (no KCD).

    ``mmrazor.SingleTeacherDistill`` with a ``ConfigurableDistiller`` that
    records ``head.fc`` outputs of student and teacher and applies
    ``KLDivergence(tau)``; validation runs
    ``mmrazor.SingleTeacherDistillValLoop`` (student and teacher accuracy),
    test the stock ``TestLoop`` (student). Other arguments as in
    :func:`tiny_classifier_config`.

    Args:
        student_channels (int): Student ResNet width. Defaults to 8.
        teacher_channels (int): Teacher ResNet width. Defaults to 16.
        teacher_ckpt (str, optional): Teacher checkpoint to load; a
            randomly initialised teacher is used when None.
        tau (float): KL temperature. Defaults to 4.
        custom_imports (Sequence[str]): Modules for ``custom_imports``
            (e.g. ``['kcd_mm']``); none when empty.
    """
    cfg = tiny_classifier_config(
        data_root,
        num_classes=num_classes,
        in_channels=in_channels,
        base_channels=student_channels,
        max_epochs=max_epochs,
        batch_size=batch_size,
        num_workers=num_workers,
        lr=lr,
        val_data_root=val_data_root)
    student = cfg.pop('model')
    preprocessor = student.pop('data_preprocessor')
    # Built by the mmrazor algorithm, inside the mmrazor scope.
    preprocessor['_scope_'] = 'mmpretrain'
    student['_scope_'] = 'mmpretrain'
    teacher = tiny_classifier(num_classes, in_channels, teacher_channels)
    teacher['_scope_'] = 'mmpretrain'
    cfg['model'] = dict(
        _scope_='mmrazor',
        type='SingleTeacherDistill',
        data_preprocessor=preprocessor,
        architecture=student,
        teacher=teacher,
        teacher_ckpt=teacher_ckpt,
        distiller=dict(
            type='ConfigurableDistiller',
            student_recorders=dict(
                fc=dict(type='ModuleOutputs', source='head.fc')),
            teacher_recorders=dict(
                fc=dict(type='ModuleOutputs', source='head.fc')),
            distill_losses=dict(
                loss_kl=dict(type='KLDivergence', tau=tau, loss_weight=1.0)),
            loss_forward_mappings=dict(
                loss_kl=dict(
                    preds_S=dict(from_student=True, recorder='fc'),
                    preds_T=dict(from_student=False, recorder='fc')))))
    cfg['val_cfg'] = dict(type='mmrazor.SingleTeacherDistillValLoop')
    cfg['find_unused_parameters'] = False
    if custom_imports:
        cfg['custom_imports'] = dict(
            imports=list(custom_imports), allow_failed_imports=False)
    return cfg


def add_kcd(cfg: Dict,
            stage_epochs: int = 1,
            theta: float = 0.5,
            num_steps: int = 3,
            summary='stage',
            value: str = 'entropy',
            wrap_losses: bool = True,
            **hook_kwargs) -> Dict:
    """Turn a KD config dict into KCD the way a user's config does.

    Imports ``kcd_mm``, wraps the training set in
    ``KnowledgeSummaryDataset`` (when ``summary``), samples it with
    ``KCDSampler``, adds ``KCDHook`` and wraps every distillation loss in
    ``ValueWeightedLoss``.

    Args:
        cfg (dict): A KD config such as :func:`tiny_kd_config` returns; it
            is copied, not changed.
        stage_epochs (int): KCDHook's ``stage_epochs``. Defaults to 1.
        theta (float): KCDHook's ``theta``. Defaults to 0.5.
        num_steps (int): KCDHook's ``num_steps``. Defaults to 3.
        summary (str | bool): KCDHook's ``summary`` (``'stage'``,
            ``'persistent'`` or False); the dataset is wrapped unless False.
            Defaults to ``'stage'``.
        value (str): the value measure (``ValueWeightedLoss``'s, or
            KCDHook's without wrapping). Defaults to ``'entropy'``.
        wrap_losses (bool): wrap every distill loss in
            ``ValueWeightedLoss``; False leaves them as they are (the
            three-line recipe: KCD reads the student classifier).
            Defaults to True.
        **hook_kwargs: Further KCDHook options.

    Returns:
        dict: The KCD config.
    """
    cfg = copy.deepcopy(cfg)
    cfg['custom_imports'] = dict(imports=['kcd_mm'],
                                 allow_failed_imports=False)
    loader = cfg['train_dataloader']
    if summary:
        loader['dataset'] = dict(type='mmrazor.KnowledgeSummaryDataset',
                                 dataset=loader['dataset'])
    loader['sampler'] = dict(type='mmrazor.KCDSampler', shuffle=True)
    cfg['custom_hooks'] = [
        dict(type='mmrazor.KCDHook', stage_epochs=stage_epochs, theta=theta,
             num_steps=num_steps, summary=summary, **hook_kwargs)
    ]
    if not wrap_losses:
        cfg['custom_hooks'][0]['value'] = value
        return cfg
    losses = cfg['model']['distiller']['distill_losses']
    for name, loss in losses.items():
        losses[name] = dict(type='ValueWeightedLoss', loss=loss, value=value)
    return cfg


def tiny_kcd_config(data_root: str, max_epochs: int = 4, batch_size: int = 8,
                    num_classes: int = 3, **kcd_kwargs) -> Dict:
    """A 16-px, 3-class KD run with KCD; validation only at the end.

    Args:
        data_root (str): Image folder (see :func:`make_image_folder`).
        max_epochs (int): Training epochs. Defaults to 4.
        batch_size (int): Per-process batch size. Defaults to 8.
        num_classes (int): Classes in the folder. Defaults to 3.
        **kcd_kwargs: Arguments of :func:`add_kcd`.

    Returns:
        dict: The KCD config (logging every 50 iterations).
    """
    cfg = tiny_kd_config(data_root, num_classes=num_classes,
                         max_epochs=max_epochs, batch_size=batch_size)
    cfg['train_cfg']['val_interval'] = max_epochs
    cfg['default_hooks']['logger']['interval'] = 50
    return add_kcd(cfg, **kcd_kwargs)


def write_config(cfg: Dict, path: str) -> str:
    """Dump a config dict to a ``.py`` file readable by ``Config.fromfile``.

    Args:
        cfg (dict): The config.
        path (str): Target file; must end with ``.py``.

    Returns:
        str: ``path``.
    """
    from mmengine.config import Config
    assert path.endswith('.py'), 'write the config as a .py file'
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    Config(cfg).dump(path)
    return path
