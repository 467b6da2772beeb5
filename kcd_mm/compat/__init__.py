"""Fixes of the pinned OpenMMLab stack's import and version errors on
torch 2, one module per upstream.

Imported first by ``kcd_mm/__init__.py`` and by every tool, before anything
imports torchvision, mmpretrain or mmrazor; and, through the
``kcd_mm_mmrazor_hook.pth`` setup.py installs, by any process the first time
it imports mmrazor. So the rule (docs/architecture.md, "A guest in every
process"): what :func:`apply` does acts only where the stack would
otherwise raise (an import or version error, or a launch that cannot work
on this machine), and leaves every run that works without kcd_mm exactly
as it is. Each fix names the symptom it fixes (docs/troubleshooting.md)
and does nothing where the stack is healthy.

Applied at import:

* :mod:`.torchvision_ops`: the PyPI CUDA torchvision imports beside a CPU
  torch.
* :mod:`.mmcls_alias`: MMRazor's mmcls 1.x modules, ``mmcls::`` configs
  and ``mmcls.X`` names read from mmpretrain, where mmcls is not installed.
* :mod:`.mmrazor_quantization`: ``import mmrazor.models`` on torch 2.
* :mod:`.safe_loading`: mmengine loads its own checkpoints under torch's
  weights-only default; the allow-list is touched only during those loads.
* :mod:`.cpu_launch`: mmengine's distributed launchers start gloo where no
  accelerator exists (where they raise otherwise).

Offered, never applied to a run that does not ask (KCDHook asks):

* :mod:`.mmengine_checkpoints`: ``AtomicCheckpointHook`` and the resume
  choice that skips a damaged ``last_checkpoint``.
* :mod:`.cpu_amp`: ``CPUBF16AmpOptimWrapper``, bfloat16 autocast on CPU.

Call :func:`apply` any number of times; it runs once.
"""
from . import (cpu_launch, mmcls_alias, mmrazor_quantization, safe_loading,
               torchvision_ops)

_APPLIED = False


def apply() -> None:
    """Apply every import-time fix once, in dependency order: torchvision
    and the mmcls module alias before anything imports mmrazor."""
    global _APPLIED
    if _APPLIED:
        return
    torchvision_ops.apply()
    mmcls_alias.apply()
    mmrazor_quantization.apply()
    safe_loading.apply()
    cpu_launch.apply()
    _APPLIED = True


apply()
