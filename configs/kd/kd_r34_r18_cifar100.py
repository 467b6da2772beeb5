# Logits KD on CIFAR-100: ResNet_CIFAR-34 teacher -> ResNet_CIFAR-18 student.
#
# Reproduces the KD baseline of the KCD paper's CIFAR-100 benchmark (the
# authors' reference code, itself the CRD/RepDistiller recipe) with
# mmpretrain's CIFAR ResNets (3x3 stem, no max-pool):
#   * 240 epochs, batch 64 on one GPU, SGD lr 0.05, momentum 0.9, wd 5e-4,
#     lr x0.1 after epochs 150/180/210; RandomCrop(32, pad 4) + flip;
#   * loss = 0.1 * CE(student, label) + 0.9 * tau^2 * KL(teacher || student)
#     with tau = 4 (MMRazor's KLDivergence: tau^2 * batch-mean KL, times
#     loss_weight; the CE weight sits in the student's head).
# The paper has no ResNet_CIFAR-34 -> ResNet_CIFAR-18 row; this pair uses
# only models mmpretrain ships. configs/kcd/kcd_r34_r18_cifar100.py is the
# same recipe plus KCD.
#
# Teacher checkpoint (made locally, nothing is downloaded):
# mmpretrain ships no CIFAR-100 ResNet-34 config; its CIFAR-100 ResNet-50
# recipe (200 epochs) with the backbone switched to depth 34 trains one,
# on one GPU at the recipe's total batch of 128:
#   CFGS=$(python -c 'import mmpretrain,os;print(os.path.dirname(mmpretrain.__file__))')/.mim/configs  # noqa: E501
#   python tools/train.py $CFGS/resnet/resnet50_8xb16_cifar100.py \
#       --work-dir work_dirs/resnet34_cifar100 \
#       --cfg-options train_dataloader.batch_size=128 \
#       model.backbone.depth=34 model.head.in_channels=512
#   mkdir -p checkpoints && cp work_dirs/resnet34_cifar100/epoch_200.pth \
#       checkpoints/resnet34_cifar100.pth
# A Runner checkpoint loads as is (its 'state_dict' is used); any path can
# be given with --cfg-options model.teacher_ckpt=PATH.
#
# Train: python tools/train.py configs/kd/kd_r34_r18_cifar100.py
_base_ = [
    '../_base_/datasets/cifar100_kd.py',
    '../_base_/schedules/cifar100_kd_bs64_240e.py',
    'mmpretrain::_base_/default_runtime.py',
]

teacher_ckpt = 'checkpoints/resnet34_cifar100.pth'

model = dict(
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    data_preprocessor={{_base_.data_preprocessor}},
    # Inline mmpretrain models need their scope inside the mmrazor model.
    architecture=dict(
        _scope_='mmpretrain',
        type='ImageClassifier',
        backbone=dict(
            type='ResNet_CIFAR',
            depth=18,
            num_stages=4,
            out_indices=(3, ),
            style='pytorch'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=100,
            in_channels=512,
            # gamma = 0.1 of the reference: the hard-label term.
            loss=dict(type='CrossEntropyLoss', loss_weight=0.1),
            topk=(1, 5))),
    teacher=dict(
        _scope_='mmpretrain',
        type='ImageClassifier',
        backbone=dict(
            type='ResNet_CIFAR',
            depth=34,
            num_stages=4,
            out_indices=(3, ),
            style='pytorch'),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=100,
            in_channels=512,
            loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
            topk=(1, 5))),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        teacher_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        distill_losses=dict(
            # alpha = 0.9 of the reference: the distillation term.
            loss_kl=dict(type='KLDivergence', tau=4, loss_weight=0.9)),
        loss_forward_mappings=dict(
            loss_kl=dict(
                preds_S=dict(from_student=True, recorder='fc'),
                preds_T=dict(from_student=False, recorder='fc')))))

# The frozen teacher's parameters get no gradient.
find_unused_parameters = True

# Validates the student and the teacher each epoch.
val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')

# 240 epochs: a checkpoint every 10 (teacher + student + optimizer state),
# the last and the best (student top-1) kept.
default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(
        interval=10,
        max_keep_ckpts=2,
        save_last=True,
        save_best='accuracy/top1'))
