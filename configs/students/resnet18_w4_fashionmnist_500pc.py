# The student alone in the KCD paper's regime, on Fashion-MNIST: 500
# images a class (5,000, as CIFAR-100 has 500 a class), trained long with
# step decay: the reference's CIFAR-100 schedule (240 epochs, lr 0.05 at
# batch 64, x0.1 at epochs 150/180/210) at half the length, 120 epochs with
# the steps at the same fractions (62.5/75/87.5%).
# Prepare the subset once with
#   python tools/prepare_fashion_mnist.py --per-class 500
# The held-out part of the training file (its last 10,000 images) is for
# choosing settings; benchmarks/run.py --mode paper validates there.
#   python tools/train.py configs/students/resnet18_w4_fashionmnist_500pc.py
_base_ = ['./resnet18_w4_fashionmnist.py']

max_epochs = 120

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
