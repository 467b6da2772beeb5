# Plain KD in the KCD paper's regime on Fashion-MNIST (500 images a class,
# 120 epochs, step decay; see configs/students/resnet18_w4_fashionmnist_500pc.py)
# from the w8 teacher trained on the same 5,000 images
# (configs/teachers/resnet18_w8_fashionmnist_500pc.py).
#   python tools/train.py configs/kd/kd_fashionmnist_500pc.py
# The demo's w16 teacher (all 60,000 images) instead: --cfg-options
#   model.teacher.backbone.stem_channels=16
#   model.teacher.backbone.base_channels=16 model.teacher.head.in_channels=128
#   model.teacher_ckpt=work_dirs/demo_teacher/teacher.pth
_base_ = ['./kd_demo_fashionmnist.py']

max_epochs = 120

model = dict(
    teacher=dict(
        backbone=dict(stem_channels=8, base_channels=8),
        head=dict(in_channels=64)),
    teacher_ckpt='work_dirs/teacher_500pc/teacher.pth')
# As configs/students/resnet18_w4_fashionmnist_500pc.py:
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(
    _delete_=True,
    type='MultiStepLR',
    by_epoch=True,
    milestones=[75, 90, 105],
    gamma=0.1)
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
train_dataloader = dict(
    batch_size=64, dataset=dict(data_root='data/fashion_mnist_500pc'))
default_hooks = dict(logger=dict(interval=50))
