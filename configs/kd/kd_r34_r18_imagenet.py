# Logits KD on ImageNet-1k: ResNet-34 teacher -> ResNet-18 student.
#
# Reproduces MMRazor 1.0.0's
#   configs/distill/mmcls/kd/kd_logits_resnet34_resnet18_8xb32_in1k.py
# (MMRazor reports 71.81 top-1 for the student, vs 69.90 trained alone; the
# teacher is mmpretrain's resnet34_8xb32_in1k, 73.62 top-1) with the same
# recipe:
#   * 100 epochs, SGD lr 0.1, momentum 0.9, wd 1e-4, lr x0.1 after epochs
#     30/60/90 (mmpretrain's imagenet_bs256 schedule, stepped per epoch);
#   * 8 GPUs x 32 images = batch 256, RandomResizedCrop 224 + flip;
#   * student loss = the ResNet-18's own cross-entropy (weight 1) +
#     KLDivergence(tau=1, loss_weight=3) between head.fc logits.
# Only the config paths differ: MMRazor's file names `mmcls::` bases, which
# need the retired mmcls package; these are the same files in mmpretrain.
#
# Train: bash tools/dist_train.sh configs/kd/kd_r34_r18_imagenet.py 8
# This is the KD baseline that configs/kcd/kcd_r34_r18_imagenet.py extends.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
]

# mmpretrain's ImageNet-1k ResNet-34 (73.62 top-1). mmengine fetches the URL
# (into torch's hub cache) when the model is built; on a machine without
# internet pass a local copy: --cfg-options model.teacher_ckpt=/path/r34.pth
# The tests build this config with teacher_ckpt=None: no download in them.
teacher_ckpt = 'https://download.openmmlab.com/mmclassification/v0/resnet/resnet34_8xb32_in1k_20210831-f257d4e6.pth'  # noqa: E501

model = dict(
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    # Inside the mmrazor scope: mmengine's ImgDataPreprocessor (as MMRazor's
    # recipe), found through the registry's parent; mmpretrain's would have
    # to be written 'mmpretrain.ClsDataPreprocessor'.
    data_preprocessor=dict(
        type='ImgDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True),
    # Stock mmpretrain ResNets, built by mmengine.hub from their configs.
    architecture=dict(
        cfg_path='mmpretrain::resnet/resnet18_8xb32_in1k.py',
        pretrained=False),
    teacher=dict(
        cfg_path='mmpretrain::resnet/resnet34_8xb32_in1k.py',
        pretrained=False),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        teacher_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        distill_losses=dict(
            loss_kl=dict(type='KLDivergence', tau=1, loss_weight=3)),
        loss_forward_mappings=dict(
            loss_kl=dict(
                preds_S=dict(from_student=True, recorder='fc'),
                preds_T=dict(from_student=False, recorder='fc')))))

# The frozen teacher's parameters get no gradient.
find_unused_parameters = True

# Validates the student and the teacher each epoch.
val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
