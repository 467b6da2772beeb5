"""Make tests/helpers.py importable and apply kcd_mm's stack shims first."""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import kcd_mm  # noqa: E402,F401
