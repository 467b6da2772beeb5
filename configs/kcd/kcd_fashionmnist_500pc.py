# KCD in the paper's regime on Fashion-MNIST: configs/kd/kd_fashionmnist_500pc.py
# plus the KCD lines, with the reference's theta 0.7 and K = 6 in 20-epoch
# stages (the reference's 40 of 240, halved with the schedule): kept
# 5,000 -> 4,750 -> ... -> 3,750 (75%) after 5 E-steps, 87.5% of KD's
# samples, and the reference's persistent summary.
#   python tools/prepare_fashion_mnist.py --per-class 500
#   python tools/train.py configs/kcd/kcd_fashionmnist_500pc.py
_base_ = ['../kd/kd_fashionmnist_500pc.py']

custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)

train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}))

custom_hooks = [
    dict(
        type='mmrazor.KCDHook',
        stage_epochs=20,
        theta=0.7,
        num_steps=6,
        summary='persistent')
]
