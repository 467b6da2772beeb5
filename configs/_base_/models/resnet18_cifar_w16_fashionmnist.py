# CIFAR-style ResNet-18 (3x3 stem, no max-pool) for 28x28 grey images,
# stage widths 16-32-64-128 (0.70M parameters): the demo's teacher.
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(
        # mmpretrain's image data preprocessor; handles 1-channel input.
        type='ClsDataPreprocessor',
        num_classes=10,
        # Fashion-MNIST train-set statistics on the 0-255 scale, 1 channel.
        mean=[72.94],
        std=[90.02],
        to_rgb=False),
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        in_channels=1,
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)
