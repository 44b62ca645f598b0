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

import sys
import types

_NAME = "sglang.srt.layers.sampler"


def install_sampler_standin(try_real: bool = False) -> bool:
    """Return True if the stand-in was installed, False if the real module is used."""
    if _NAME in sys.modules:
        return bool(getattr(sys.modules[_NAME], "IS_STANDIN", False))
    if try_real:
        try:
            __import__(_NAME)
            return False
        except ImportError:
            pass
    import sglang.srt.layers  # noqa: F401  (parent package must exist)
    from sglang.srt.utils import get_bool_env_var

    mod = types.ModuleType(_NAME, "stand-in: only SYNC_TOKEN_IDS_ACROSS_TP")
    mod.SYNC_TOKEN_IDS_ACROSS_TP = get_bool_env_var("SYNC_TOKEN_IDS_ACROSS_TP")
    mod.IS_STANDIN = True

    def __getattr__(attr):
        raise AttributeError(
            f"{_NAME} is a stand-in (sglang_parallel_shim); {attr!r} is not available"
        )

    mod.__getattr__ = __getattr__
    sys.modules[_NAME] = mod
    setattr(sys.modules["sglang.srt.layers"], "sampler", mod)
    return True


_BOOT = "sglang.srt.distributed.bootstrap"


def install_bootstrap_standin(try_real: bool = False) -> bool:
    """Return True if the stand-in was installed, False if the real module is used."""
    if _BOOT in sys.modules:
        return bool(getattr(sys.modules[_BOOT], "IS_STANDIN", False))
    if try_real:
        try:
            __import__(_BOOT)
            return False
        except ImportError:
            pass
    import sglang.srt.distributed  # noqa: F401

    mod = types.ModuleType(_BOOT, "stand-in: only reset_parallel_initialised")
    mod._PARALLEL_INITIALISED = False
    mod.IS_STANDIN = True

    def reset_parallel_initialised() -> None:
        mod._PARALLEL_INITIALISED = False

    def __getattr__(attr):
        raise AttributeError(
            f"{_BOOT} is a stand-in (sglang_parallel_shim); {attr!r} is not available"
        )

    mod.reset_parallel_initialised = reset_parallel_initialised
    mod.__getattr__ = __getattr__
    sys.modules[_BOOT] = mod
    setattr(sys.modules["sglang.srt.distributed"], "bootstrap", mod)
    return True


def install_standins(try_real: bool = False) -> dict:
    return {
        "sampler": install_sampler_standin(try_real=try_real),
        "bootstrap": install_bootstrap_standin(try_real=try_real),
    }
