# Plain logits KD on Fashion-MNIST: ResNet-18 w16 teacher -> ResNet-18 w4
# student, the loss of the KCD reference (0.1 * CE + 0.9 * T^2 * KL, T = 4).
# The KD arm of the embedded demo; configs/kcd/kcd_demo_fashionmnist.py is
# this file plus the KCD lines.
#   python tools/train.py configs/kd/kd_demo_fashionmnist.py
# Another teacher file: --cfg-options model.teacher_ckpt=PATH (the top-level
# `teacher_ckpt` is read when this file is parsed; overriding it afterwards
# does not reach `model`).
_base_ = ['../students/resnet18_w4_fashionmnist.py']

# Weights-only teacher file, made by tools/run_demo.sh (teacher training +
# tools/model_converters/extract_state_dict.py).
teacher_ckpt = 'work_dirs/demo_teacher/teacher.pth'

model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    # The student of configs/students/, with its cross-entropy weighted 0.1.
    architecture=dict(
        _scope_='mmpretrain',
        type=_base_.model.type,
        data_preprocessor=_base_.model.data_preprocessor,
        backbone=_base_.model.backbone,
        neck=_base_.model.neck,
        head=dict(
            _base_.model.head,
            loss=dict(type='CrossEntropyLoss', loss_weight=0.1))),
    # Must match configs/_base_/models/resnet18_cifar_w16_fashionmnist.py,
    # the model configs/teachers/resnet18_w16_fashionmnist.py trains.
    teacher=dict(
        _scope_='mmpretrain',
        type='ImageClassifier',
        backbone=dict(
            type='ResNet_CIFAR',
            depth=18,
            in_channels=1,
            stem_channels=16,
            base_channels=16,
            num_stages=4,
            out_indices=(3, )),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=10,
            in_channels=128,
            loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
            topk=(1, ))),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        teacher_recorders=dict(
            fc=dict(type='ModuleOutputs', source='head.fc')),
        distill_losses=dict(
            # KLDivergence multiplies by tau^2 itself.
            loss_kl=dict(type='KLDivergence', tau=4, loss_weight=0.9)),
        loss_forward_mappings=dict(
            loss_kl=dict(
                preds_S=dict(from_student=True, recorder='fc'),
                preds_T=dict(from_student=False, recorder='fc')))))

# Validate the student and, as a check on the loaded weights, the teacher.
val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
