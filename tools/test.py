"""Evaluate a checkpoint on a config's test set.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.pkl]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

Works for distillation configs (the student is evaluated; the checkpoint
holds the whole algorithm, as saved by ``tools/train.py``) and for plain
mmpretrain configs. ``CHECKPOINT`` may be ``none`` to test the weights the
config itself loads (``init_cfg``/``teacher_ckpt``). Multi-process runs go
through ``tools/dist_test.sh`` or ``tools/slurm_test.sh``; mmengine's Runner
starts the process group from ``cfg.launcher`` (gloo without CUDA, see
``kcd_mm.compat``). Shared helpers are in ``tools/tool_utils.py``.
"""
import argparse
import os.path as osp
import sys

# kcd_mm.compat must run before anything imports torchvision, mmpretrain or
# mmrazor. Make the repository importable when kcd_mm is not installed.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import kcd_mm.compat  # noqa: E402,F401,I001  isort:skip
from mmengine.config import Config, DictAction  # noqa: E402

import kcd_mm  # noqa: E402,F401  registers kcd_mm's modules
import tool_utils  # noqa: E402  tools/tool_utils.py, a sibling


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
    tool_utils.add_launcher_args(parser)
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    tool_utils.set_local_rank_env(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)

    tool_utils.set_cpu_threads()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    tool_utils.resolve_work_dir(cfg, args.config, args.work_dir)
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
    # mmengine's Runner initialises distribution from cfg.launcher
    # (with gloo on a machine without CUDA: kcd_mm.compat).
    cfg.launcher = args.launcher

    runner = tool_utils.build_runner(cfg)
    if args.out is not None:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out))
    runner.test()
    # Drop the Runner (its DDP wrapper holds the process group) before the
    # group is torn down; see tool_utils.destroy_process_group.
    del runner
    tool_utils.destroy_process_group()


if __name__ == '__main__':
    main()
