"""Tiny KCD configs for tests: tests/helpers' KD config plus the KCD lines."""
import copy
from typing import Dict

from helpers import tiny_kd_config


def add_kcd(cfg: Dict,
            stage_epochs: int = 1,
            theta: float = 0.5,
            num_steps: int = 3,
            summary: bool = True,
            value: str = 'entropy',
            **hook_kwargs) -> Dict:
    """Turn a KD config dict into KCD the way a user's config does."""
    cfg = copy.deepcopy(cfg)
    cfg['custom_imports'] = dict(imports=['kcd_mm'], allow_failed_imports=False)
    loader = cfg['train_dataloader']
    if summary:
        loader['dataset'] = dict(type='mmrazor.KnowledgeSummaryDataset',
                                 dataset=loader['dataset'])
    loader['sampler'] = dict(type='mmrazor.KCDSampler', shuffle=True)
    cfg['custom_hooks'] = [
        dict(type='mmrazor.KCDHook', stage_epochs=stage_epochs, theta=theta,
             num_steps=num_steps, summary=summary, **hook_kwargs)
    ]
    losses = cfg['model']['distiller']['distill_losses']
    for name, loss in losses.items():
        losses[name] = dict(type='ValueWeightedLoss', loss=loss, value=value)
    return cfg


def tiny_kcd_config(data_root: str, max_epochs: int = 4, batch_size: int = 8,
                    num_classes: int = 3, **kcd_kwargs) -> Dict:
    """A 16-px, 3-class KD run with KCD; validation only at the end."""
    cfg = tiny_kd_config(data_root, num_classes=num_classes,
                         max_epochs=max_epochs, batch_size=batch_size)
    cfg['train_cfg']['val_interval'] = max_epochs
    cfg['default_hooks']['logger']['interval'] = 50
    return add_kcd(cfg, **kcd_kwargs)
