# CIFAR-style ResNet-18 (3x3 stem, no max-pool) for 28x28 grey images,
# stage widths 4-8-16-32 (0.04M parameters): the demo's student.
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
        stem_channels=4,
        base_channels=4,
        num_stages=4,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=32,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)
