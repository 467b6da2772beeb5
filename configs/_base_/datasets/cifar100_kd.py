# CIFAR-100 (50,000 train / 10,000 test, 32x32 RGB, 100 classes) as the KCD
# reference code trains on it: batch 64 on one GPU, RandomCrop(32, pad 4) +
# horizontal flip, per-channel normalisation; the test set doubles as the
# validation set (as in every CIFAR KD paper).
#
# Data: mmpretrain's CIFAR100 reads the python pickles from
# data/cifar100/cifar-100-python/. With download=True it fetches them
# (cifar-100-python.tar.gz, 161 MB) on first use; on a machine without
# internet extract that archive into data/cifar100 yourself.
dataset_type = 'CIFAR100'
data_root = 'data/cifar100'

# Used by the distillation model (see configs/kd/*_cifar100.py). Inside the
# mmrazor scope mmpretrain's preprocessor needs its scope in the type.
# CIFAR-100 train-set mean/std on the 0-255 scale (the reference's
# (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762)); mmpretrain's CIFAR
# already yields RGB arrays, so no channel flip.
data_preprocessor = dict(
    type='mmpretrain.ClsDataPreprocessor',
    num_classes=100,
    mean=[129.304, 124.070, 112.434],
    std=[68.170, 65.392, 70.418],
    to_rgb=False)

train_pipeline = [
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=True,
        pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=4,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        test_mode=True,
        download=True,
        pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
