"""Evaluate a checkpoint on a config's test set.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Works for distillation configs (the student is evaluated; the checkpoint
holds the whole algorithm, as saved by ``tools/train.py``) and for plain
mmpretrain configs. ``CHECKPOINT`` may be ``none`` to test the weights the
config itself loads (``init_cfg``/``teacher_ckpt``). Multi-process runs go
through ``tools/dist_test.sh`` or ``tools/slurm_test.sh``.
"""
import argparse
import os.path as osp
import sys

# kcd_mm.compat must run before anything imports torchvision, mmpretrain or
# mmrazor. Make the repository importable when kcd_mm is not installed.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
import kcd_mm  # noqa: E402,F401  registers kcd_mm's modules
from kcd_mm import launch  # noqa: E402

from mmengine.config import Config, DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument(
        'checkpoint', help="checkpoint file, or 'none' to keep the config's")
    parser.add_argument(
        '--work-dir', help='the dir to save logs and evaluation metrics')
    parser.add_argument(
        '--out',
        help='also dump the test predictions to this .pkl file '
        "(mmengine's DumpResults)")
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, KEY=VALUE pairs merged into the '
        'config; a list is written key="[a,b]" or key=a,b, nested '
        'lists/tuples key="[(a,b),(c,d)]" (quotes needed, no spaces)')
    launch.add_launcher_args(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    launch.set_local_rank_env(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)

    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    launch.resolve_work_dir(cfg, args.config, args.work_dir)
    if args.checkpoint.lower() == 'none':
        cfg.load_from = None
    else:
        cfg.load_from = args.checkpoint
    # Testing never resumes training state.
    cfg.resume = False
    test_cfg = cfg.get('test_cfg', None) or {}
    if str(test_cfg.get('type', '')).endswith('PTQLoop'):
        # MMRazor's quantization test loop: evaluate only, no calibration.
        cfg.test_cfg.only_val = True
    launch.setup_launcher(cfg, args.launcher)

    runner = launch.build_runner(cfg)
    if args.out is not None:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    runner.test()
    # Drop the Runner (its DDP wrapper holds the process group) before the
    # group is torn down; see launch.destroy_process_group.
    del runner
    launch.destroy_process_group()


if __name__ == '__main__':
    main()
