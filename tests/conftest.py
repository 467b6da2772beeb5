"""Make tests/helpers.py importable and apply kcd_mm's stack shims first.

Tiny models run fastest on one thread; two OpenMP threads on a 2-core
machine that is doing anything else spin against each other (measured:
5 s -> 60 s for a tiny Runner run), so in-process runs use one, as the
subprocess runs of tests/helpers.run_tool do.
"""
import os
import os.path as osp
import sys

os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import torch  # noqa: E402

import kcd_mm  # noqa: E402,F401

torch.set_num_threads(1)
