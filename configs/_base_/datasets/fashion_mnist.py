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

# Loader settings measured on a 2-core CPU (128 images a batch): loading in
# the main process with `default_collate` (one stacked tensor, normalised
# in one step by the preprocessor) costs ~7 ms a batch, ~3 s an epoch;
# `pseudo_collate` costs ~20 ms, and 1 or 2 worker processes 30-40 ms,
# since they compete with the training threads for the two cores and pickle
# every DataSample. With cores to spare (a GPU machine) raise num_workers
# and add persistent_workers=True.
train_dataloader = dict(
    batch_size=128,
    num_workers=0,
    collate_fn=dict(type='default_collate'),
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
    num_workers=0,
    collate_fn=dict(type='default_collate'),
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
