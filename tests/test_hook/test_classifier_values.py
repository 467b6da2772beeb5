"""KCD's values read from the student classifier: no loss wrapper needed,
the same values as the wrapper's, and non-logits refused up front."""
import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from kcd_mm.testing import make_image_folder, tiny_kcd_config
from helpers import kcd_hook, stage_records


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp('data')), 60, 3, 16)


def _run(data_root, work_dir, train=True, **kwargs):
    cfg = Config(tiny_kcd_config(data_root, **kwargs))
    cfg.work_dir = str(work_dir)
    runner = Runner.from_cfg(cfg)
    if train:
        runner.train()
    return runner


@pytest.mark.slow
@pytest.mark.parametrize('value', ['entropy', 'teacher_kl'])
def test_classifier_values_equal_the_wrapped_loss_values(data_root, tmp_path,
                                                         value):
    """The same run with the distill loss left alone: the classifier tap
    sees the logits the wrapper saw, so every stage is the same."""
    wrapped = _run(data_root, tmp_path / 'wrapped', value=value)
    plain = _run(data_root, tmp_path / 'plain', value=value,
                 wrap_losses=False)
    losses = plain.cfg.model.distiller.distill_losses
    assert losses.loss_kl.type == 'KLDivergence'  # nothing wrapped
    want = stage_records(str(tmp_path / 'wrapped'), timings=False)
    got = stage_records(str(tmp_path / 'plain'), timings=False)
    assert len(got) == 3 and got == want
    assert kcd_hook(plain).state.value_measure == value
    assert kcd_hook(wrapped).state.value_measure == value


def test_a_feature_module_is_refused_before_training(data_root, tmp_path):
    runner = _run(data_root, tmp_path / 'w', train=False, wrap_losses=False,
                  classifier='neck')
    with pytest.raises(TypeError, match="classifier='head.fc'"):
        runner.train()
    assert runner.iter == 0


def test_a_wrapped_feature_loss_is_refused_before_training(data_root,
                                                           tmp_path):
    cfg = tiny_kcd_config(data_root)
    distiller = cfg['model']['distiller']
    # The wrapped loss now gets the student's pooled features (B, C).
    distiller['student_recorders']['fc']['source'] = 'neck'
    runner = Runner.from_cfg(Config(dict(cfg, work_dir=str(tmp_path / 'x'))))
    with pytest.raises(TypeError, match="'neck'.*Remove the wrapper"):
        runner.train()
    assert runner.iter == 0


def test_infobatch_without_a_wrapper_names_the_fix(data_root, tmp_path):
    runner = _run(data_root, tmp_path / 'w', train=False, wrap_losses=False,
                  strategy='infobatch', summary=False)
    with pytest.raises(TypeError, match='ValueWeightedLoss'):
        runner.train()


def test_unknown_value_fails_at_build():
    from kcd_mm import KCDHook
    with pytest.raises(ValueError, match='Unknown knowledge value'):
        KCDHook(value='entropie')
