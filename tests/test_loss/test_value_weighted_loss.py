"""ValueWeightedLoss around MMRazor's logits losses, and value measures."""
import pytest
import torch
import torch.nn.functional as F
from mmrazor.registry import MODELS as _MODELS

import kcd_mm  # noqa: F401  (compat + registration)
from kcd_mm.core import per_sample
from kcd_mm.core.values import get_value_measure, student_entropy

B, C = 12, 7
WRAPPED = [
    dict(type='KLDivergence', tau=4, loss_weight=0.9),
    dict(type='KLDivergence', reduction='sum'),
    dict(type='DKDLoss', tau=2, beta=0.5),
    dict(type='DKDLoss', reduction='mean'),
    dict(type='DISTLoss', tau=2, inter_loss_weight=1, intra_loss_weight=2),
    dict(type='WSLD', tau=2, num_classes=C),
]


class MODELS:
    """mmrazor's registry, whatever default scope an earlier Runner left."""

    @staticmethod
    def build(cfg):
        return _MODELS.build(dict(cfg, _scope_='mmrazor'))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(B, C, generator=g)).requires_grad_()
    t = 3 * torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B, ), generator=g)
    return s, t, y


def _args(cfg, s, t, y):
    return (s, t, y) if cfg['type'] in ('DKDLoss', 'WSLD') else (s, t)


def _wrap(cfg, **kwargs):
    loss = MODELS.build(dict(type='ValueWeightedLoss', loss=cfg, **kwargs))
    loss.train()
    return loss


@pytest.mark.parametrize('cfg', WRAPPED, ids=lambda c: c['type'])
def test_uniform_weighting_equals_wrapped_loss(cfg):
    s, t, y = _batch()
    wrapped = MODELS.build(cfg)
    loss = _wrap(cfg)
    loss.set_batch(torch.arange(B), y)
    out = loss(*_args(cfg, s, t, y))
    assert torch.equal(out, wrapped(*_args(cfg, s, t, y)))
    (idx, values), = loss.pop_records()
    assert torch.equal(idx, torch.arange(B))
    assert torch.allclose(values, student_entropy(s.detach()))


@pytest.mark.parametrize('cfg', WRAPPED, ids=lambda c: c['type'])
def test_per_sample_rules_average_to_the_batch_loss(cfg):
    s, t, y = _batch(1)
    module = MODELS.build(cfg)
    rows = per_sample.per_sample_loss(module, *_args(cfg, s, t, y))
    assert rows.shape == (B, )
    assert torch.allclose(rows.mean(), module(*_args(cfg, s, t, y)),
                          rtol=1e-5)


@pytest.mark.parametrize('cfg', WRAPPED, ids=lambda c: c['type'])
def test_value_weighting_weights_samples_by_normalised_value(cfg):
    s, t, y = _batch(2)
    loss = _wrap(cfg, weighting='value')
    loss.set_batch(torch.arange(B), y)
    out = loss(*_args(cfg, s, t, y))
    rows = per_sample.per_sample_loss(MODELS.build(cfg), *_args(cfg, s, t, y))
    w = student_entropy(s.detach())
    assert torch.allclose(out, (w / w.mean() * rows).mean(), rtol=1e-5)
    out.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_signature_matches_wrapped_loss_for_the_distiller():
    import inspect
    loss = _wrap(dict(type='DKDLoss'))
    assert list(inspect.signature(loss.forward).parameters) == [
        'preds_S', 'preds_T', 'gt_labels'
    ]


def test_unknown_loss_refused_only_where_it_must_be_split():
    s, t, y = _batch()
    with pytest.raises(TypeError, match="cannot wrap L2Loss with weighting"):
        _wrap(dict(type='L2Loss'), weighting='value')
    # Uniform weighting never splits: the wrapped loss comes back as is,
    # and values are still recorded from the logits.
    plain = _wrap(dict(type='L2Loss'))
    plain.set_batch(torch.arange(B), y)
    assert torch.equal(plain(s, t), MODELS.build(dict(type='L2Loss'))(s, t))
    assert plain.pop_records()[0][1].shape == (B, )
    with pytest.raises(TypeError, match="strategy='infobatch'"):
        plain.check_splittable("KCDHook(strategy='infobatch')")
    with pytest.raises(ValueError, match="value='nope'"):
        _wrap(dict(type='KLDivergence'), value='nope')
    with pytest.raises(ValueError, match='weighting'):
        _wrap(dict(type='KLDivergence'), weighting='loss')


def test_vmap_split_checked_on_first_batch():
    s, t, y = _batch(3)
    ok = _wrap(dict(type='KLDivergence'), per_sample='vmap',
               weighting='value')
    ok.set_batch(torch.arange(B), y)
    ok(s, t)
    bad = _wrap(dict(type='KLDivergence', reduction='sum'),
                per_sample='vmap', weighting='value')
    bad.set_batch(torch.arange(B), y)
    with pytest.raises(ValueError, match='not a mean over samples'):
        bad(s, t)


def test_recording_needs_the_hook():
    s, t, _ = _batch()
    loss = _wrap(dict(type='KLDivergence'))
    with pytest.raises(RuntimeError, match='KCDHook'):
        loss(s, t)
    loss.eval()  # validation: no recording, plain loss
    assert torch.equal(loss(s, t), MODELS.build(dict(type='KLDivergence'))(
        s, t))


def test_value_measures_are_stable_and_meaningful():
    big = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1])
    ent = get_value_measure('entropy')(big)
    assert torch.isfinite(ent).all()  # p*log(p) of an underflow is not NaN
    assert ent[0] < 1e-6 and torch.isclose(ent[1], torch.log(torch.tensor(3.)))
    kl = get_value_measure('teacher_kl')(big, teacher)
    assert torch.isfinite(kl).all() and kl[1] == 0
    ce = get_value_measure('ce')(big, None, labels)
    assert torch.allclose(ce, F.cross_entropy(big, labels, reduction='none'))
    margin = get_value_measure('margin')(big, teacher, labels)
    assert margin[0] < 0 and abs(float(margin[1])) < 1e-6
