# OFD + KCD on CIFAR-10: WRN-28-4 teacher -> WRN-16-2 student.
#
# configs/kd/kd_ofd_wrn28_wrn16_cifar10.py (MMRazor's feature-distillation
# recipe: three OFDLoss feature losses, no logits loss) plus KCD in three
# lines. KCD reads the student's class logits from its head.fc during the
# training forward, so OFDLoss stays unwrapped (the OFD algorithm checks
# its losses' type and margins) and the connectors and mappings stay as the
# base has them. The base trains 200 epochs; T = 34 keeps the reference's
# six stages (E-steps after epochs 34, 68, 102, 136, 170), theta 0.7, K = 6:
# 50,000 -> 37,500 kept (75%), 87.75% of KD's sample-iterations. CIFAR-10
# is held in memory, so the reference's persistent summary is exact here.
#   python tools/train.py configs/kcd/kcd_ofd_wrn28_wrn16_cifar10.py
# Stage records: <work_dir>/kcd_stages.jsonl
_base_ = ['../kd/kd_ofd_wrn28_wrn16_cifar10.py']

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
        stage_epochs=34,
        theta=0.7,
        num_steps=6,
        summary='persistent')
]
