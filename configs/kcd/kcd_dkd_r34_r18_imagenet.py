# DKD + KCD on ImageNet-1k: ResNet-34 teacher -> ResNet-18 student.
#
# MMRazor 1.0.0's installed Decoupled KD recipe
#   configs/distill/mmcls/dkd/dkd_resnet34_resnet18_8xb32_in1k.py
# (100 epochs, lr x0.1 after 30/60/90, 8 GPUs x 32, DKDLoss tau 1 beta 0.5;
# MMRazor reports 71.37 top-1 for the student) plus Knowledge Condensation
# Distillation (Li et al., ECCV 2022), added the way
# docs/add_kcd_to_your_config.md describes. Its KD twin, for a fair
# comparison, is configs/kd/kd_dkd_r34_r18_imagenet.py (same base, no KCD).
#
# KCD settings as configs/kcd/kcd_r34_r18_imagenet.py, whose header gives
# the reasoning: T = 17 (the reference's six equal stages, scaled from 240
# to 100 epochs), theta = 0.7, K = 6. With N = 1,281,167:
#   epochs   1-17   18-34     35-51     52-68     69-85     86-100
#   kept  1281167 1217109   1153051   1088993   1024935   960877 (75.0%)
#   -> 87.75% of KD's sample-iterations (439,201 iterations per GPU at
#      8 x 32 instead of 500,500).
# The base's DKDLoss and its loss_forward_mappings stay untouched: KCD reads
# the student's class logits from its head.fc.
#
# The base's `mmcls::` paths are read from mmpretrain by kcd_mm.compat, so
# kcd_mm must be imported before the file is parsed (custom_imports runs
# only afterwards): train with this repository's tools/train.py.
#   bash tools/dist_train.sh configs/kcd/kcd_dkd_r34_r18_imagenet.py 8
#   offline: --cfg-options model.teacher_ckpt=/path/to/resnet34.pth
# Stage records: <work_dir>/kcd_stages.jsonl
_base_ = ['mmrazor::distill/mmcls/dkd/dkd_resnet34_resnet18_8xb32_in1k.py']

# Registers mmrazor.KCDHook, KCDSampler and KnowledgeSummaryDataset (and
# applies kcd_mm's stack shims). The distill losses stay as in the base:
# KCD reads the student's class logits from its head.fc.
custom_imports = dict(imports=['kcd_mm'], allow_failed_imports=False)

# The base's ImageNet train set, wrapped so kept tail samples can be blended
# on the fly with their dropped partners (VAKS summary); the sampler draws
# from the current kept set only (DefaultSampler semantics otherwise).
train_dataloader = dict(
    sampler=dict(_delete_=True, type='mmrazor.KCDSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='mmrazor.KnowledgeSummaryDataset',
        dataset={{_base_.train_dataloader.dataset}}))

custom_hooks = [
    dict(
        type='mmrazor.KCDHook',
        stage_epochs=17,
        theta=0.7,
        num_steps=6,
        score_exponent=0.03,
        lam_range=(0.7, 1.0),
        # This stage's pairs only: on JPEG files a persistent image is up
        # to 4 loads (1.43x the loader's CPU at a 23% share, 1.05x for
        # 'stage'; docs/results.md), and its gain is unmeasured here.
        summary='stage')
]

model = dict(
    # The stock config also downloads the teacher through mmengine.hub
    # (pretrained=True) before loading teacher_ckpt; one source is enough.
    teacher=dict(pretrained=False))
