"""Turn a KCD (or any MMRazor distillation) checkpoint into the student.

Usage::

    python tools/model_converters/convert_kcd_ckpt_to_student.py SRC DST
        [--config KCD_CONFIG --out-config STUDENT_CONFIG.py]

``DST`` holds ``{'meta': ..., 'state_dict': ...}`` with the student's
weights only (the keys under ``architecture.``, prefix removed): mmpretrain
loads it directly, and the student's own config plus ``DST`` predicts
exactly what the distilled student did.

The student's own config: with ``--config`` (the KCD config the run used,
e.g. the copy mmengine dumped into the work dir) and ``--out-config``, this
also writes a plain mmpretrain config for the student alone: the
distillation's ``model.architecture`` (its ``_scope_`` becoming the
``default_scope``), the data preprocessor the distillation used, and the
KCD config's val/test dataloaders, evaluators and runtime settings, without
the teacher, the training set-up and KCD. Then::

    python tools/test.py STUDENT_CONFIG.py DST

evaluates the student; the converted weights are checked to load into the
model built from that config, key for key.
"""
import argparse
import copy
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
from kcd_mm.export import extract  # noqa: E402

STUDENT_PREFIX = 'architecture'
# Runtime settings carried over unchanged from the distillation config.
RUNTIME_KEYS = ('env_cfg', 'log_level', 'log_processor', 'visualizer',
                'vis_backends', 'randomness', 'launcher')
EVAL_KEYS = ('val_dataloader', 'val_evaluator', 'test_dataloader',
             'test_evaluator')
# Hooks of default_hooks that only make sense while training.
TRAIN_ONLY_HOOKS = ('param_scheduler', 'sampler_seed')


def _resolve_cfg_path(student: dict) -> dict:
    """``dict(cfg_path='pkg::x.py', pretrained=..., **kw)``, MMRazor's
    shorthand (built with ``mmengine.hub.get_model``), as a model dict."""
    from mmengine.hub import get_config
    student = dict(student)
    cfg_path = student.pop('cfg_path')
    student.pop('pretrained', None)  # weights come from the checkpoint
    package = cfg_path.split('::')[0]
    cfg = get_config(cfg_path)
    model = cfg.model.to_dict()
    if 'data_preprocessor' in cfg:  # as get_model does
        model['data_preprocessor'] = cfg.data_preprocessor.to_dict()
    model.update(student)  # get_model's default_args
    model.setdefault('_scope_', package)
    return model


def _registered(type_name, scope):
    """The class a config type resolves to in a scope (None if unknown)."""
    from mmengine.registry import MODELS
    if not isinstance(type_name, str):
        return type_name
    with MODELS.switch_scope_and_registry(scope) as registry:
        return registry.get(type_name)


def _as_cls_preprocessor(preprocessor: dict) -> dict:
    """mmengine's ``ImgDataPreprocessor`` (MMRazor's ImageNet recipes) as
    mmpretrain's ``ClsDataPreprocessor``: the same float conversion,
    channel flip, normalisation and padding (checked equal bit for bit),
    and one that mmpretrain's ``ImageClassifier`` can build (it passes
    ``batch_augments``, which ``ImgDataPreprocessor`` does not take)."""
    out = dict(type='ClsDataPreprocessor')
    for key in ('mean', 'std', 'pad_size_divisor', 'pad_value',
                'non_blocking'):
        if key in preprocessor:
            out[key] = preprocessor[key]
    out['to_rgb'] = bool(preprocessor.get('bgr_to_rgb')
                         or preprocessor.get('rgb_to_bgr'))
    return out


def _preprocessor_for(preprocessor: dict, built_in: str, scope: str,
                      student_type) -> dict:
    """The algorithm's preprocessor, for a student built in ``scope``.

    It was built in scope ``built_in`` (its own ``_scope_``, else the
    algorithm's); ``_scope_`` is written only when the student's scope
    would resolve its type to another class.
    """
    from mmengine.model import ImgDataPreprocessor
    preprocessor = copy.deepcopy(preprocessor)
    built_in = preprocessor.pop('_scope_', None) or built_in
    type_name = preprocessor.get('type')
    cls = _registered(type_name, built_in)
    if cls is ImgDataPreprocessor and _is_mmpretrain_classifier(
            student_type, scope):
        return _as_cls_preprocessor(preprocessor)
    if isinstance(type_name, str) and type_name.startswith(scope + '.'):
        preprocessor['type'] = type_name[len(scope) + 1:]
    elif built_in != scope and cls is not _registered(type_name, scope):
        preprocessor['_scope_'] = built_in
    return preprocessor


def _is_mmpretrain_classifier(student_type, scope) -> bool:
    try:
        from mmpretrain.models import ImageClassifier
    except ImportError:
        return False
    cls = _registered(student_type, scope)
    return isinstance(cls, type) and issubclass(cls, ImageClassifier)


def _plain_loop(loop_cfg):
    """A distillation-only val/test loop becomes mmengine's default one."""
    loop_type = str((loop_cfg or {}).get('type', ''))
    if loop_type.startswith('mmrazor.') or 'Distill' in loop_type:
        return dict()
    return copy.deepcopy(loop_cfg) if loop_cfg is not None else dict()


def student_config(kcd_cfg) -> dict:
    """An mmpretrain config dict for the student of a distillation config.

    Args:
        kcd_cfg (mmengine.Config): The distillation (KCD) config.

    Returns:
        dict: ``default_scope``, ``model`` (the student with the
        distillation's data preprocessor), the val/test dataloaders,
        evaluators and loops, and runtime settings.
    """
    full = kcd_cfg.to_dict()
    algorithm = full['model']
    if 'architecture' not in algorithm:
        raise KeyError('the config has no model.architecture: it is not an '
                       'MMRazor distillation config')
    student = copy.deepcopy(algorithm['architecture'])
    if not isinstance(student, dict):
        raise TypeError('model.architecture is not a config dict')
    if student.get('cfg_path') and not student.get('type'):
        student = _resolve_cfg_path(student)
    default_scope = full.get('default_scope') or 'mmpretrain'
    scope = student.pop('_scope_', None) or default_scope
    # The preprocessor the algorithm used: its own, else the top-level
    # one (mmengine's Runner merges it into the model), else the student's.
    preprocessor = (algorithm.get('data_preprocessor')
                    or full.get('data_preprocessor'))
    if preprocessor:
        student['data_preprocessor'] = _preprocessor_for(
            preprocessor, algorithm.get('_scope_') or default_scope, scope,
            student.get('type'))
    elif isinstance(student.get('data_preprocessor'), dict):
        student['data_preprocessor'] = _preprocessor_for(
            student['data_preprocessor'], scope, scope, student.get('type'))
    cfg = dict(default_scope=scope, model=student)
    for key in EVAL_KEYS + RUNTIME_KEYS:
        if full.get(key) is not None:
            cfg[key] = copy.deepcopy(full[key])
    cfg['val_cfg'] = _plain_loop(full.get('val_cfg'))
    cfg['test_cfg'] = _plain_loop(full.get('test_cfg'))
    hooks = {
        k: v
        for k, v in (full.get('default_hooks') or {}).items()
        if k not in TRAIN_ONLY_HOOKS
    }
    if hooks:
        cfg['default_hooks'] = hooks
    imports = (full.get('custom_imports') or {}).get('imports') or []
    imports = [m for m in imports if m != 'kcd_mm']
    if imports:
        cfg['custom_imports'] = dict(full['custom_imports'], imports=imports)
    cfg['load_from'] = None
    cfg['resume'] = False
    return cfg


def write_student_config(kcd_config: str, out_config: str) -> dict:
    """Write the student config of ``kcd_config`` to ``out_config``."""
    from mmengine.config import Config
    if not out_config.endswith('.py'):
        raise ValueError('--out-config must be a .py file')
    cfg = student_config(Config.fromfile(kcd_config))
    os.makedirs(osp.dirname(osp.abspath(out_config)), exist_ok=True)
    Config(cfg).dump(out_config)
    return cfg


def check_loads(student_cfg: dict, checkpoint: str) -> None:
    """Build the student from its config; load the weights strictly."""
    from mmengine.registry import MODELS, DefaultScope

    from kcd_mm.compat.safe_loading import load
    with DefaultScope.overwrite_default_scope(student_cfg['default_scope']):
        model = MODELS.build(copy.deepcopy(student_cfg['model']))
    state = load(checkpoint, map_location='cpu',
                 weights_only=True)['state_dict']
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f'the converted weights do not fit the student config: missing '
            f'{missing[:5]}..., unexpected {unexpected[:5]}...')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write the student of a KCD/MMRazor distillation '
        'checkpoint as a plain mmpretrain checkpoint')
    parser.add_argument('src', help='distillation checkpoint (.pth)')
    parser.add_argument('dst', help='student checkpoint to write')
    parser.add_argument('--config', help='the distillation (KCD) config')
    parser.add_argument('--out-config',
                        help='write the student-only config here (.py)')
    args = parser.parse_args(argv)
    if bool(args.config) != bool(args.out_config):
        parser.error('--config and --out-config go together')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    count = extract(args.src, args.dst, prefix=STUDENT_PREFIX)
    print(f'{count} student tensors from {args.src} -> {args.dst}')
    if args.config:
        cfg = write_student_config(args.config, args.out_config)
        check_loads(cfg, args.dst)
        print(f'student config -> {args.out_config} (weights checked: '
              'every key loads)\n'
              f'evaluate: python tools/test.py {args.out_config} {args.dst}')


if __name__ == '__main__':
    main()
