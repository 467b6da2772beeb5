"""Tiny Runner configs: a classifier, MMRazor logits KD, KD with KCD
(see :mod:`kcd_mm.testing`)."""
import copy
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence


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
