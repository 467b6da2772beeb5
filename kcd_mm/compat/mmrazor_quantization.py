"""mmrazor 1.0.0: ``import mmrazor.models`` on torch 2."""
import importlib.util
import sys
import types


def apply() -> None:
    """``ImportError: `torch>=1.13` is not installed properly, plz check.``

    torch 2 renamed ``reverse2``/``reverse3`` to private names and dropped
    ``reverse_sequential_wrapper2``; mmrazor 1.0.0 imports all three, then
    builds quantization backend configs eagerly with torch-1.13-only APIs.
    Distillation never uses quantization, so the configs are stubbed to the
    ``None`` entries mmrazor itself uses on old torch.
    """
    from torch.ao.quantization import fuser_method_mappings as fmm
    if not hasattr(fmm, 'reverse2') and hasattr(fmm, '_reverse2'):
        fmm.reverse2 = fmm._reverse2
    if not hasattr(fmm, 'reverse3') and hasattr(fmm, '_reverse3'):
        fmm.reverse3 = fmm._reverse3
    if not hasattr(fmm, 'reverse_sequential_wrapper2'):

        def reverse_sequential_wrapper2(sequential):

            def fuser_method(is_qat, m1, m2):
                return sequential(m2, m1)

            return fuser_method

        fmm.reverse_sequential_wrapper2 = reverse_sequential_wrapper2
    name = 'mmrazor.structures.quantization.backend_config.mapping'
    if name not in sys.modules and importlib.util.find_spec('mmrazor'):
        stub = types.ModuleType(name)
        stub.__doc__ = 'kcd_mm stub: quantization backends unused here.'
        stub.BackendConfigs = dict.fromkeys(
            ('academic', 'native', 'tensorrt', 'openvino'))
        sys.modules[name] = stub
