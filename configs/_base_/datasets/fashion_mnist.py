# Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey, 10 classes).
# Prepare the data once with `python tools/prepare_fashion_mnist.py`
# (offline, from the Debian package dataset-fashion-mnist).
#
# mmpretrain 1.2.0's FashionMNIST picks the train or test files by
# `test_mode`, not by `split`; both are set so that neither warns.
# Fashion-MNIST has no validation split: as in the CIFAR recipes, the test
# set is used for validation too.
dataset_type = 'FashionMNIST'
data_root = 'data/fashion_mnist'

# Images stay single-channel uint8 (H, W); PackInputs makes them (1, H, W).
train_pipeline = [
    dict(type='RandomCrop', crop_size=28, padding=2),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        test_mode=False,
        download=False,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=500,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        test_mode=True,
        download=False,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
