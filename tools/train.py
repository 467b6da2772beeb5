"""Train a model (an MMRazor distillation, KCD or not) from a config.

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
        [--resume [CHECKPOINT]] [--cfg-options KEY=VALUE ...]
        [--launcher {none,pytorch,slurm,mpi}]

``--resume`` alone resumes from the work dir's latest checkpoint; with a
path it resumes from that checkpoint. Multi-process runs go through
``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``: the tool sets
``cfg.launcher`` and mmengine's Runner starts the process group; without
CUDA it is a gloo group on the CPU (``kcd_mm.compat`` adapts mmengine's
launcher and DDP wrapping). The shared argument and Runner helpers are in
``tools/tool_utils.py``.
"""
import argparse
import logging
import os.path as osp
import sys

# kcd_mm.compat must run before anything imports torchvision, mmpretrain or
# mmrazor. Make the repository importable when kcd_mm is not installed.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

import kcd_mm  # noqa: E402,F401  registers kcd_mm's modules
from kcd_mm.compat.mmengine_checkpoints import latest_checkpoint  # noqa
import tool_utils  # noqa: E402  tools/tool_utils.py, a sibling


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a model (e.g. an MMRazor distillation)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='mixed precision: AmpOptimWrapper with dynamic loss scaling on '
        'GPU; bfloat16 autocast on a machine without CUDA')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the total batch size, using the '
        "config's auto_scale_lr.base_batch_size")
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        default=None,
        metavar='CHECKPOINT',
        help='resume from this checkpoint; with no path, from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, KEY=VALUE pairs merged into the '
        'config; a list is written key="[a,b]" or key=a,b, nested '
        'lists/tuples key="[(a,b),(c,d)]" (quotes needed, no spaces)')
    tool_utils.add_launcher_args(parser)
    args = parser.parse_args(argv)
    tool_utils.set_local_rank_env(args.local_rank)
    return args


def _amp_targets(optim_wrapper):
    """The optimizer-wrapper dicts ``--amp`` should switch.

    A plain ``optim_wrapper``; or, for a config with a ``constructor``
    (e.g. one wrapper per sub-model), each sub-dict that is itself an
    optimizer-wrapper config.
    """
    if 'constructor' not in optim_wrapper:
        return {'optim_wrapper': optim_wrapper}
    return {
        f'optim_wrapper.{key}': value
        for key, value in optim_wrapper.items()
        if isinstance(value, dict) and 'optimizer' in value
    }


def enable_amp(cfg) -> None:
    """Switch the config's optimizer wrapper(s) to mixed precision.

    With CUDA: ``AmpOptimWrapper`` with ``loss_scale='dynamic'``. Without:
    ``mmrazor.CPUBF16AmpOptimWrapper`` (CPU bfloat16 autocast, which
    mmengine 0.10.7's AmpOptimWrapper refuses without an accelerator);
    no loss scaling is needed for bf16.
    """
    on_gpu = torch.cuda.is_available()
    for name, wrapper in _amp_targets(cfg.optim_wrapper).items():
        wrapper_type = wrapper.get('type', 'OptimWrapper')
        if wrapper_type == 'AmpOptimWrapper':
            print_log(f'AMP is already enabled in {name}.', logger='current',
                      level=logging.WARNING)
        elif wrapper_type != 'OptimWrapper':
            raise ValueError('--amp needs OptimWrapper (or AmpOptimWrapper) '
                             f'in {name}, got {wrapper_type}')
        if on_gpu:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
        else:
            wrapper.type = 'mmrazor.CPUBF16AmpOptimWrapper'
            wrapper.pop('loss_scale', None)
            wrapper.dtype = 'bfloat16'
    if on_gpu:
        print_log('--amp: AmpOptimWrapper with dynamic loss scaling.',
                  logger='current')
    else:
        print_log(
            '--amp without CUDA: training under CPU bfloat16 autocast '
            '(mmrazor.CPUBF16AmpOptimWrapper, no loss scaling). It is '
            'fast only on CPUs with native bf16 (AVX512-BF16/AMX).',
            logger='current',
            level=logging.WARNING)


def enable_auto_scale_lr(cfg) -> None:
    """Turn on ``auto_scale_lr``; the config must give a base batch size."""
    scale = cfg.get('auto_scale_lr', None)
    if not scale or 'base_batch_size' not in scale:
        raise RuntimeError('--auto-scale-lr needs auto_scale_lr = dict('
                           'base_batch_size=...) in the config')
    cfg.auto_scale_lr.enable = True


def set_resume(cfg, resume) -> None:
    """Apply ``--resume``: ``'auto'`` for the latest checkpoint in the work
    dir, a path for that checkpoint, None to leave the config as it is.

    ``'auto'`` takes the checkpoint ``last_checkpoint`` names; if that is
    missing, empty, truncated or gone (a run killed while saving), the
    complete ``epoch_N.pth``/``iter_N.pth`` of the highest step in the work
    dir, with a warning naming the damaged file
    (``kcd_mm.compat.mmengine_checkpoints.latest_checkpoint``). With none,
    or without ``last_checkpoint`` (as in mmengine), training starts from
    scratch.
    """
    if resume is None:
        return
    cfg.resume = True
    if resume == 'auto':
        latest, warning = latest_checkpoint(cfg.work_dir)
        if warning is not None:
            print_log(warning, logger='current', level=logging.WARNING)
        cfg.load_from = latest
        if latest is None:
            print_log(
                f'--resume: no checkpoint to resume from in {cfg.work_dir}; '
                'training starts from scratch.',
                logger='current',
                level=logging.WARNING)
        else:
            print_log(f'--resume: resuming from {latest}', logger='current')
    else:
        cfg.load_from = resume


def main(argv=None):
    args = parse_args(argv)

    tool_utils.set_cpu_threads()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    tool_utils.resolve_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    set_resume(cfg, args.resume)
    # mmengine's Runner initialises distribution from cfg.launcher
    # (with gloo on a machine without CUDA: kcd_mm.compat).
    cfg.launcher = args.launcher

    runner = tool_utils.build_runner(cfg)
    runner.train()
    # Drop the Runner (its DDP wrapper holds the process group) before the
    # group is torn down; see tool_utils.destroy_process_group.
    del runner
    tool_utils.destroy_process_group()


if __name__ == '__main__':
    main()
