# The KCD reference code's CIFAR-100 schedule (the CRD/RepDistiller one):
# 240 epochs, SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64 on one
# GPU, lr x0.1 after epochs 150, 180 and 210. For MobileNetV2/ShuffleNet
# students the reference uses lr 0.01.
#
# The lr steps count epochs (by_epoch=True, not converted to iterations):
# KCD shortens epochs, so an iteration-based schedule would run behind.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(
    type='MultiStepLR', by_epoch=True, milestones=[150, 180, 210], gamma=0.1)

train_cfg = dict(by_epoch=True, max_epochs=240, val_interval=1)
val_cfg = dict()
test_cfg = dict()

# For --auto-scale-lr: lr 0.05 belongs to a total batch of 64.
auto_scale_lr = dict(base_batch_size=64)
