# InfoBatch in the paper's regime on Fashion-MNIST, at its own r = 0.5: the
# KCD config with the distill loss wrapped (InfoBatch rescales it per
# sample, which needs ValueWeightedLoss) and strategy='infobatch'. The
# efficiency benchmark (benchmarks/run.py --mode efficiency) runs it.
#   python tools/train.py configs/kcd/kcd_infobatch_fashionmnist_500pc.py
_base_ = ['./kcd_fashionmnist_500pc.py']

model = dict(
    distiller=dict(
        distill_losses=dict(
            loss_kl=dict(
                _delete_=True,
                type='ValueWeightedLoss',
                loss={{_base_.model.distiller.distill_losses.loss_kl}}))))

custom_hooks = [
    dict(
        type='mmrazor.KCDHook',
        stage_epochs=20,
        theta=0.7,
        num_steps=6,
        summary=False,
        strategy='infobatch',
        infobatch_ratio=0.5)
]
