# The demo's student trained alone (cross-entropy only): the baseline that
# KD and KCD must beat. configs/kd/ and configs/kcd/ inherit this file, so
# all three arms share data, schedule and runtime; only the loss differs.
#   python tools/train.py configs/students/resnet18_w4_fashionmnist.py
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/datasets/fashion_mnist.py',
    '../_base_/models/resnet18_cifar_w4_fashionmnist.py',
]

max_epochs = 6

# SGD as in the KCD reference (lr 0.05 at batch 64 -> 0.1 at batch 128).
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
# Cosine decay stepped once per epoch (never per iteration: KCD changes the
# number of iterations in an epoch, so schedules must count epochs).
param_scheduler = dict(
    type='CosineAnnealingLR', by_epoch=True, T_max=max_epochs, eta_min=0.0)

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# kcd_mm's CheckpointHook (atomic writes, old checkpoint deleted after the
# new one is complete), so that the KD and KCD arms built on this config
# save alike; mmengine's own would delete first with max_keep_ckpts=1.
custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(
        type='mmrazor.AtomicCheckpointHook',
        interval=1,
        max_keep_ckpts=1,
        save_last=True))

randomness = dict(seed=0, deterministic=False)
