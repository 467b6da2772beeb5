# Trains the demo's teacher with plain mmpretrain: CIFAR-style ResNet-18,
# widths 16-128, on the full Fashion-MNIST train set.
#   python tools/train.py configs/teachers/resnet18_w16_fashionmnist.py \
#       --work-dir work_dirs/demo_teacher
# then turn the Runner checkpoint into a plain weights file for KD configs:
#   python tools/model_converters/extract_state_dict.py \
#       work_dirs/demo_teacher/epoch_5.pth work_dirs/demo_teacher/teacher.pth
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/datasets/fashion_mnist.py',
    '../_base_/models/resnet18_cifar_w16_fashionmnist.py',
]

max_epochs = 5

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

# kcd_mm's CheckpointHook: with max_keep_ckpts=1 mmengine's own deletes the
# old checkpoint before writing the new one, so a kill while saving would
# lose the teacher; this one writes atomically and deletes afterwards.
custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(
        type='mmrazor.AtomicCheckpointHook',
        interval=1,
        max_keep_ckpts=1,
        save_last=True))

randomness = dict(seed=0, deterministic=False)
