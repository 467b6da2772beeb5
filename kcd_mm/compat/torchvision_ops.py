"""torchvision: the PyPI CUDA wheel imports beside a CPU torch."""
import importlib.util
import os
import os.path as osp
import sys

import torch

# torch.library definitions are dropped when their Library object dies.
_TV_LIBRARY = None


def _defined(op: str) -> bool:
    """Whether ``torchvision::op`` has a schema (its library, or another
    fix, defined it)."""
    try:
        getattr(torch.ops.torchvision, op)
    except (AttributeError, RuntimeError):
        return False
    return True


def apply() -> None:
    """``RuntimeError: operator torchvision::nms does not exist``.

    The PyPI torchvision 0.28 wheel is a CUDA build whose ``_C.so`` does not
    load next to a CPU torch; its Python part then registers fake kernels for
    two ops nobody defined. Defining just their schemas lets it import;
    compiled ops still raise when called (classification never calls them).
    """
    global _TV_LIBRARY
    spec = importlib.util.find_spec('torchvision')
    if spec is None or 'torchvision' in sys.modules or _defined('nms'):
        return
    pkg_dir = list(spec.submodule_search_locations)[0]
    so_files = [f for f in os.listdir(pkg_dir) if f.startswith('_C.')]
    if so_files:
        try:
            torch.ops.load_library(osp.join(pkg_dir, so_files[0]))
            return
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library('torchvision', 'DEF')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    lib.define('qnms(Tensor qdets, Tensor scores, float iou_threshold) '
               '-> Tensor')
    _TV_LIBRARY = lib
