"""Optional helper for running SGLang's parallel-state code without its model stack.

``initialize_model_parallel()`` does ``from sglang.srt.layers.sampler import
SYNC_TOKEN_IDS_ACROSS_TP`` (only to decide ``use_pynccl`` for a separate
attention-TP group). Importing the real sampler drags in the whole model layer
stack (transformers, torchvision, ...), which is not carried here.

``install_sampler_standin()`` registers a tiny ``sglang.srt.layers.sampler``
module in ``sys.modules`` that defines only that constant, computed exactly as
SGLang does (``get_bool_env_var("SYNC_TOKEN_IDS_ACROSS_TP")``). Group
construction is unchanged. Call it before ``initialize_model_parallel()``;
it does nothing if the real sampler is already imported or importable
(set ``try_real=False`` to skip attempting the real import).
"""

from __future__ import annotations

import importlib
import sys
import types

_NAME = "sglang.srt.layers.sampler"
_BOOT = "sglang.srt.distributed.bootstrap"


def _install_standin(name: str, doc: str, try_real: bool, fill) -> bool:
    """Register a stand-in module ``name`` (filled in by ``fill(module)``) unless the real one is in use.

    Return True if the stand-in was installed, False if the real module is used.
    """
    if name in sys.modules:
        return bool(getattr(sys.modules[name], "IS_STANDIN", False))
    if try_real:
        try:
            __import__(name)
            return False
        except ImportError:
            pass
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)  # the parent package must exist
    mod = types.ModuleType(name, doc)
    mod.IS_STANDIN = True
    fill(mod)

    def __getattr__(attr):
        raise AttributeError(f"{name} is a stand-in (sglang_parallel_shim); {attr!r} is not available")

    mod.__getattr__ = __getattr__
    sys.modules[name] = mod
    setattr(parent, child, mod)
    return True


def install_sampler_standin(try_real: bool = False) -> bool:
    """Return True if the stand-in was installed, False if the real module is used."""
    def fill(mod) -> None:
        from sglang.srt.utils import get_bool_env_var

        mod.SYNC_TOKEN_IDS_ACROSS_TP = get_bool_env_var("SYNC_TOKEN_IDS_ACROSS_TP")

    return _install_standin(_NAME, "stand-in: only SYNC_TOKEN_IDS_ACROSS_TP", try_real, fill)


def install_bootstrap_standin(try_real: bool = False) -> bool:
    """Return True if the stand-in was installed, False if the real module is used.

    Only releases that have ``sglang/srt/distributed/bootstrap.py`` (0.5.2x) get it; 0.5.10.post1 and
    0.5.11 have no such module and their ``destroy_model_parallel()`` does not import it.
    """
    if _BOOT not in sys.modules:
        import importlib.util

        if importlib.util.find_spec(_BOOT) is None:
            return False
    def fill(mod) -> None:
        mod._PARALLEL_INITIALISED = False

        def reset_parallel_initialised() -> None:
            mod._PARALLEL_INITIALISED = False

        mod.reset_parallel_initialised = reset_parallel_initialised

    return _install_standin(_BOOT, "stand-in: only reset_parallel_initialised", try_real, fill)


_CFG_AUTO = "transformers.models.auto.configuration_auto"


def _patch_autoconfig_register(mod) -> None:
    auto = getattr(mod, "AutoConfig", None)
    if auto is None or getattr(auto.register, "_sglang_shim", False):
        return
    orig = auto.register

    def register(model_type, config, exist_ok=False):
        return orig(model_type, config, exist_ok=True)

    register._sglang_shim = True
    auto.register = staticmethod(register)


class _ConfigAutoHook:
    """Meta-path hook: once transformers' configuration_auto is loaded, patch AutoConfig.register."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _CFG_AUTO:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _patch_autoconfig_register(module)

        spec.loader.exec_module = exec_module
        return spec


def install_autoconfig_exist_ok() -> bool:
    """Make ``transformers.AutoConfig.register`` behave as with ``exist_ok=True``.

    SGLang 0.5.11's ``sglang.srt.configs`` (imported by ``server_args`` and so by ``GroupCoordinator``)
    runs ``AutoConfig.register("qwen3_asr", ...)`` without ``exist_ok``; transformers >= 5.x (5.17 on the
    GPU image) already has ``qwen3_asr`` and raises "'qwen3_asr' is already used by a Transformers
    config". 0.5.23 itself passes ``exist_ok=True`` there. transformers is not imported here: a
    meta-path hook patches it when it is loaded (or now, if it already is). Returns True if patched now.
    """
    if _CFG_AUTO in sys.modules:
        _patch_autoconfig_register(sys.modules[_CFG_AUTO])
        return True
    if not any(isinstance(f, _ConfigAutoHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _ConfigAutoHook())
    return False


def install_standins(try_real: bool = False) -> dict:
    install_autoconfig_exist_ok()  # first: importing sglang.srt.layers may reach sglang.srt.configs
    return {
        "sampler": install_sampler_standin(try_real=try_real),
        "bootstrap": install_bootstrap_standin(try_real=try_real),
    }
