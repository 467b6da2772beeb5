# The teacher of the paper-regime benchmark: trained on the same 5,000
# images (500 a class) as its students, as the KCD paper's teachers see
# only the training set. CIFAR-style ResNet-18 at widths 8-64 (4x the
# student's FLOPs at w4): with the w16 demo teacher a 120-epoch KD run costs
# 3x as much on CPU (measured in docs/results.md), and the benchmark must
# fit one session. 60 epochs, step decay at 50/75%.
#   python tools/prepare_fashion_mnist.py --per-class 500
#   python tools/train.py configs/teachers/resnet18_w8_fashionmnist_500pc.py \
#       --work-dir work_dirs/teacher_500pc
#   python tools/model_converters/extract_state_dict.py \
#       work_dirs/teacher_500pc/epoch_60.pth work_dirs/teacher_500pc/teacher.pth
_base_ = ['./resnet18_w16_fashionmnist.py']

max_epochs = 60

model = dict(
    backbone=dict(stem_channels=8, base_channels=8),
    head=dict(in_channels=64))
optim_wrapper = dict(optimizer=dict(lr=0.05))
param_scheduler = dict(
    _delete_=True,
    type='MultiStepLR',
    by_epoch=True,
    milestones=[30, 45],
    gamma=0.1)
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
train_dataloader = dict(
    batch_size=64, dataset=dict(data_root='data/fashion_mnist_500pc'))
default_hooks = dict(logger=dict(interval=50))
