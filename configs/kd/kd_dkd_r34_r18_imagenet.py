# Decoupled KD (DKD, Zhao et al., CVPR 2022) on ImageNet-1k:
# ResNet-34 teacher -> ResNet-18 student, MMRazor's own recipe, unchanged.
#
# Reproduces MMRazor 1.0.0's installed
#   configs/distill/mmcls/dkd/dkd_resnet34_resnet18_8xb32_in1k.py
# (MMRazor reports 71.37 top-1 for the student, vs 69.90 trained alone; the
# teacher is mmpretrain's resnet34_8xb32_in1k, 73.62 top-1):
#   * 100 epochs, SGD lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 after epochs
#     30/60/90; 8 GPUs x 32 images, RandomResizedCrop 224 + flip;
#   * student loss = the ResNet-18's own cross-entropy + DKDLoss(tau 1,
#     alpha 1, beta 0.5, weight 1) between head.fc logits, with the labels
#     recorded at the input of the student's head.loss_module.
# It is read from the installed MMRazor package (the `mmrazor::` base
# below), so it stays MMRazor's file. The one change: the teacher is built
# with pretrained=False, since its weights come from `teacher_ckpt` (the
# stock config also asks mmengine.hub to download them a second time).
#
# The base names `mmcls::` paths; kcd_mm.compat reads them from mmpretrain,
# so kcd_mm must be imported before the config is parsed: use this
# repository's tools/train.py and tools/test.py (custom_imports is applied
# only after the bases are resolved). See docs/add_kcd_to_your_config.md.
#
# Train: bash tools/dist_train.sh configs/kd/kd_dkd_r34_r18_imagenet.py 8
# Offline: --cfg-options model.teacher_ckpt=/path/to/resnet34.pth
# This is the KD baseline that configs/kcd/kcd_dkd_r34_r18_imagenet.py
# extends.
_base_ = ['mmrazor::distill/mmcls/dkd/dkd_resnet34_resnet18_8xb32_in1k.py']

model = dict(teacher=dict(pretrained=False))
