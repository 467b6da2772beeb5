# Overhaul of Feature Distillation (OFD, Heo et al., ICCV 2019) on CIFAR-10:
# WRN-28-4 teacher -> WRN-16-2 student, MMRazor's own recipe, unchanged.
#
# Reproduces MMRazor 1.0.0's installed
#   configs/distill/mmcls/ofd/ofd_backbone_resnet50_resnet18_8xb16_cifar10.py
# (its file name says ResNets; its models are MMRazor's wide ResNets,
# `_scope_='mmcls'` configs that kcd_mm.compat maps to mmpretrain): the
# OverhaulFeatureDistillation algorithm with three pre-ReLU feature losses
# (OFDLoss, margins from the teacher's BatchNorm statistics, which needs
# scipy) and the student's own cross-entropy; no logits distill loss.
# Kept as is: the teacher is built with pretrained=False in the base.
#
# Use this repository's tools/train.py (it imports kcd_mm first).
#   python tools/train.py configs/kd/kd_ofd_wrn28_wrn16_cifar10.py
#   offline: --cfg-options model.teacher_ckpt=/path/to/wrn28_4.pth
# This is the baseline that configs/kcd/kcd_ofd_wrn28_wrn16_cifar10.py
# extends.
_base_ = [
    'mmrazor::distill/mmcls/ofd/ofd_backbone_resnet50_resnet18_8xb16_cifar10.py'
]
