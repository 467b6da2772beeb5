# RKD + KCD on ImageNet-1k: ResNet-34 teacher -> ResNet-18 student.
#
# configs/kd/kd_rkd_r34_r18_imagenet.py (MMRazor's relational KD recipe:
# its two losses compare pooled neck features, there are no logits in any
# distill loss) plus KCD in three lines. KCD does not need a logits loss:
# it reads each sample's knowledge value (the student's entropy) from the
# student's own classifier, head.fc, during the training forward; the RKD
# losses and their mappings stay as the base has them.
# KCD settings as configs/kcd/kcd_r34_r18_imagenet.py (100 epochs): T = 17,
# theta = 0.7, K = 6, 87.75% of KD's sample-iterations.
#   bash tools/dist_train.sh configs/kcd/kcd_rkd_r34_r18_imagenet.py 8
#   offline: --cfg-options model.teacher_ckpt=/path/to/resnet34.pth
# Stage records: <work_dir>/kcd_stages.jsonl
_base_ = ['../kd/kd_rkd_r34_r18_imagenet.py']

custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)

train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}))

custom_hooks = [
    dict(type='mmrazor.KCDHook', stage_epochs=17, theta=0.7, num_steps=6)
]
