"""Stand-in for the compiled ``sgl_kernel`` package (pip name ``sglang-kernel``).

SGLang imports ``sgl_kernel`` (and submodules such as ``sgl_kernel.kvcacheio``,
``sgl_kernel.flash_attn``, ``sgl_kernel.scalar_type``) at import time in many
modules, but its parallel-state code never calls it.  This stub:

* imports cleanly, and any ``sgl_kernel.<anything>`` submodule import succeeds
  (a meta-path finder synthesises the submodule on demand);
* returns, for any attribute, a placeholder that raises ``NotImplementedError``
  when called (or when used as a class base, indexed, iterated, ...).

It never registers ``torch.ops.sgl_kernel.*`` ops, so checks like
``hasattr(torch.ops.sgl_kernel, "shm_allreduce")`` stay False.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+stub"
IS_STUB = True

_PKG = __name__


class SglKernelStubError(NotImplementedError):
    pass


class _Missing:
    """Placeholder for any sgl_kernel attribute: raises when it is used."""

    __slots__ = ("_sgl_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_sgl_name", name)

    def _fail(self, *args, **kwargs):
        raise SglKernelStubError(
            f"{self._sgl_name} is a stand-in: the real sgl_kernel "
            f"(sglang-kernel) is not installed here"
        )

    __call__ = _fail
    __getitem__ = _fail
    __iter__ = _fail
    __mro_entries__ = _fail

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._sgl_name}.{attr}")

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<sgl_kernel stub {self._sgl_name}>"


def _module_getattr_for(modname: str):
    def __getattr__(attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(f"module {modname!r} has no attribute {attr!r}")
        return _Missing(f"{modname}.{attr}")

    return __getattr__


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # default module creation

    def exec_module(self, module):
        module.__path__ = []  # make every stub submodule a package too
        module.__getattr__ = _module_getattr_for(module.__name__)
        module.IS_STUB = True


class _StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(_PKG + "."):
            return importlib.machinery.ModuleSpec(
                fullname, _StubLoader(), is_package=True
            )
        return None


if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
    sys.meta_path.append(_StubFinder())

__getattr__ = _module_getattr_for(_PKG)
