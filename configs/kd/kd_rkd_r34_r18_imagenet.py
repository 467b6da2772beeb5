# Relational KD (RKD, Park et al., CVPR 2019) on ImageNet-1k: ResNet-34
# teacher -> ResNet-18 student, MMRazor's own recipe, unchanged.
#
# Reproduces MMRazor 1.0.0's installed
#   configs/distill/mmcls/rkd/rkd_neck_resnet34_resnet18_8xb32_in1k.py
# (100 epochs, lr x0.1 after 30/60/90, 8 GPUs x 32): distance-wise (weight
# 25) and angle-wise (weight 50) RKD losses between the pooled neck
# features (neck.gap) of student and teacher; no logits loss at all. The one
# change: the teacher is built with pretrained=False, since its weights
# come from `teacher_ckpt`.
#
# The base names `mmcls::` paths; use this repository's tools/train.py
# (it imports kcd_mm, whose compat reads them from mmpretrain).
#   bash tools/dist_train.sh configs/kd/kd_rkd_r34_r18_imagenet.py 8
#   offline: --cfg-options model.teacher_ckpt=/path/to/resnet34.pth
# This is the baseline that configs/kcd/kcd_rkd_r34_r18_imagenet.py extends.
_base_ = ['mmrazor::distill/mmcls/rkd/rkd_neck_resnet34_resnet18_8xb32_in1k.py']

model = dict(teacher=dict(pretrained=False))
