# KCD on Fashion-MNIST: the embedded demo (real data that ships offline).
# configs/kd/kd_demo_fashionmnist.py plus KCD, as a user adds it to any KD
# config. 6 epochs in 1-epoch stages (T = 1) with the reference's theta 0.7
# and K = 6: kept 60,000 -> 57,000 -> ... -> 45,000 (75%) after 5 E-steps,
# 87.5% of KD's sample-iterations, the reference's ratio at 1/40 the epochs.
#   bash tools/run_demo.sh        (prepares data, trains the teacher first)
#   python tools/train.py configs/kcd/kcd_demo_fashionmnist.py
_base_ = ['../kd/kd_demo_fashionmnist.py']

custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)

train_dataloader = dict(
    # DefaultSampler semantics over the kept set.
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    # Blends each kept tail sample with its dropped partner on the fly.
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}))

custom_hooks = [
    dict(
        type='mmrazor.KCDHook',
        stage_epochs=1,
        theta=0.7,
        num_steps=6,
        score_exponent=0.03,
        lam_range=(0.7, 1.0),
        # The demo's and the quick/full benchmark modes' figures were
        # measured with this stage's pairs only.
        summary='stage')
]
