# KD + KCD on CIFAR-100: ResNet_CIFAR-50 teacher -> ResNet_CIFAR-18 student.
#
# configs/kd/kd_r50_r18_cifar100.py (the KCD paper's CIFAR-100 KD recipe:
# 240 epochs, batch 64, SGD lr 0.05, lr x0.1 after 150/180/210,
# 0.1 CE + 0.9 KL with tau 4) plus Knowledge Condensation Distillation
# (Li et al., ECCV 2022) in the reference code's setting: stages of
# T = 40 epochs, theta = 0.7, K = 6, student entropy as the knowledge value,
# score exponent 0.03, VAKS summary with lam from 1.0 down to 0.7.
# Everything else is identical to the KD config, so the two compare fairly.
#
# With N = 50,000 the kept set is (E-steps after epochs 40, 80, ..., 200;
# the reference's condensation after the last epoch changes nothing):
#   epochs  1-40   41-80  81-120  121-160  161-200  201-240
#   kept   50000   47500   45000    42500    40000    37500 (75%)
#   -> 87.5% of KD's sample-iterations: 164,200 iterations at batch 64
#      instead of 187,680.
# Teacher checkpoint: see configs/kd/kd_r50_r18_cifar100.py.
#
# Train: python tools/train.py configs/kcd/kcd_r50_r18_cifar100.py
# Stage records: <work_dir>/kcd_stages.jsonl
_base_ = ['../kd/kd_r50_r18_cifar100.py']

# Registers mmrazor.KCDHook, KCDSampler and KnowledgeSummaryDataset (and
# applies kcd_mm's stack shims). The distill losses stay as in the base:
# KCD reads the student's class logits from its head.fc.
custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)

# The base's CIFAR-100 train set, wrapped so kept tail samples can be
# blended with their dropped partners (VAKS summary); the sampler draws from
# the current kept set only.
train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}))

custom_hooks = [
    dict(
        type='mmrazor.KCDHook',
        stage_epochs=40,
        theta=0.7,
        num_steps=6,
        score_exponent=0.03,
        lam_range=(0.7, 1.0),
        # The reference's summary: blends stay and accumulate (in memory).
        summary='persistent')
]
