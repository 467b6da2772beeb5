"""Import kcd_mm whenever a process imports mmrazor (MMRazor's own tools).

MMRazor's entry points (its tools/train.py, ``mim train mmrazor``) import
mmrazor before anything of kcd_mm, and mmrazor 1.0.0 cannot be imported on
torch 2 without :mod:`kcd_mm.compat` (docs/troubleshooting.md). setup.py
installs ``kcd_mm_mmrazor_hook.pth`` beside the package: at interpreter
start-up it puts a small finder first on ``sys.meta_path`` that imports
nothing and only compares each imported name with ``'mmrazor'``. The first
time mmrazor is imported, the finder runs this file's source in a namespace
of its own, with itself as ``hook`` (the file is never imported as
``kcd_mm.mmrazor_hook``: importing kcd_mm is what it arranges), and asks
:func:`find_spec`. That wraps mmrazor's loader: the hook leaves
``sys.meta_path`` and imports kcd_mm (kcd_mm.compat first, then mmrazor and
KCD's modules), and mmrazor's import returns the module kcd_mm loaded.
Where importing kcd_mm fails it prints one line and mmrazor loads as it is.
``KCD_MM_MMRAZOR_HOOK=0`` leaves mmrazor alone. Standard library only.
"""
import sys

hook = None  # the .pth file's finder, set before this source runs


def find_spec(fullname, path, target):
    """mmrazor's spec from the other finders, its loader wrapped."""
    for finder in sys.meta_path:
        find = getattr(finder, 'find_spec', None)
        if finder is hook or find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            if spec.loader is not None:
                spec.loader = Loader(spec.loader)
            return spec
    return None


class Loader:
    """mmrazor's loader, with kcd_mm imported first."""

    def __init__(self, loader):
        self.loader = loader
        self.spec = None

    def create_module(self, spec):
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        if 'kcd_mm' not in sys.modules:
            try:
                import kcd_mm  # noqa: F401  kcd_mm.compat, then mmrazor
            except ModuleNotFoundError as exc:
                if exc.name != 'kcd_mm':  # kcd_mm is gone: say nothing
                    warn(exc)
            except Exception as exc:
                warn(exc)
        module = sys.modules.get(spec.name)
        if module is None:  # mmrazor was not imported: load it as it is
            spec.loader = self.loader
            return self.loader.create_module(spec)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # mmrazor's own, from kcd_mm's import

    def __getattr__(self, name):  # the rest of the loader protocol
        return getattr(self.loader, name)


def warn(exc):
    text = ' '.join(str(exc).split())
    if 'kcd_mm.compat' in sys.modules:
        done = "kcd_mm's stack shims are applied, KCD's modules are not"
    else:
        done = ('mmrazor loads without its stack shims: on torch 2 train '
                "with kcd_mm's tools/train.py")
    sys.stderr.write(
        f'kcd_mm: import kcd_mm failed ({type(exc).__name__}: {text}); '
        f'{done} (KCD_MM_MMRAZOR_HOOK=0 turns this hook off)\n')
