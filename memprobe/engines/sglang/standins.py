"""What SGLang's parallel-state code needs on a CPU runner with ``pip install --no-deps sglang==X`` alone.

Checked on the wheels of SGLang 0.5.10.post1, 0.5.11 and 0.5.23 from PyPI, with torch 2.13 (CPU) and memprobe's
own dependencies, by importing ``parallel_state``, ``pynccl`` and ``custom_all_reduce`` and running
``initialize_model_parallel`` on gloo (``--device cpu``), adding the module that failed until the groups were
built. SGLang's full dependency set cannot be the answer on CPU: it pins a CUDA build of torch (0.5.23:
``torch==2.14.1``, 0.5.11: ``torch==2.11.0``) and GPU-only packages (``sglang-kernel``, ``flashinfer_python``,
``nvidia-cutlass-dsl``).

Two kinds of stand-in, both only in ``--device cpu`` workers (:mod:`memprobe.engines.standins` says why):

* third-party modules imported at module level on the chain (:data:`MODULES`), stood in only where the real
  one is not installed: an installed ``orjson`` is used as it is;
* three of SGLang's own modules that reach its model stack (transformers, flashinfer, openai) for a name or
  three that building the groups reads (:func:`install_own_standins`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Callable

from memprobe.engines import standins

#: top-level module -> where SGLang's chain imports it (file:line in the release named), checked on 0.5.10.post1,
#: 0.5.11 and 0.5.23 unless the entry says otherwise
MODULES: dict[str, str] = {
    "orjson": "srt/utils/common.py:85 (0.5.23), :77 (0.5.11), module level",
    "psutil": "srt/utils/common.py, module level",
    "pybase64": "srt/utils/common.py, module level",
    "requests": "srt/utils/common.py, module level",
    "triton": "srt/utils/common.py and the kernels it imports; GPU kernels, never launched on CPU",
    "starlette": "srt/utils/common.py (starlette.routing), module level",
    "IPython": "srt/utils/common.py (IPython.display), module level",
    "aiohttp": "lang/backend/runtime_endpoint.py, reached by `import sglang`",
    "tqdm": "lang/interpreter.py, reached by `import sglang`",
    "torchvision": "srt/utils/common.py (0.5.10.post1, 0.5.11: torchvision.io.decode_jpeg); from PyPI it pulls a CUDA torch",
    "tvm_ffi": "custom all-reduce v2's JIT (apache-tvm-ffi), imported by dp_attention from GroupCoordinator.__init__ (0.5.23); not called on CPU",
}

SAMPLER = "sglang.srt.layers.sampler"
BOOTSTRAP = "sglang.srt.distributed.bootstrap"
ALLOCATOR = "sglang.srt.distributed.device_communicators.pynccl_allocator"


def _own_standin(name: str, fill: Callable[[types.ModuleType], None]) -> None:
    """Register SGLang module ``name`` as a stand-in filled by ``fill`` (its parent package is SGLang's own)."""
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)
    module = types.ModuleType(name, f"memprobe stand-in for {name}")
    setattr(module, standins.STOOD_IN_ATTRIBUTE, True)
    fill(module)
    sys.modules[name] = module
    setattr(parent, child, module)


def _fill_sampler(module: types.ModuleType) -> None:
    # initialize_model_parallel imports the sampler for this one flag (use_pynccl of a separate attention-TP
    # group); the real module imports flashinfer and the model layers. The same expression as the real one.
    from sglang.srt.utils import get_bool_env_var

    vars(module).update(SYNC_TOKEN_IDS_ACROSS_TP=get_bool_env_var("SYNC_TOKEN_IDS_ACROSS_TP"))


def _fill_bootstrap(module: types.ModuleType) -> None:
    # 0.5.23's destroy_model_parallel imports reset_parallel_initialised; the real module reaches transformers.
    vars(module).update(reset_parallel_initialised=lambda: None)


def _fill_allocator(module: types.ModuleType) -> None:
    # 0.5.10.post1 and 0.5.11: GroupCoordinator.__init__ imports these three from pynccl_allocator, whose module
    # imports server_args and from there the model configs (transformers, openai's protocol types). Each answers
    # as the real one does when no ServerArgs are published (memprobe publishes none): symmetric memory is off
    # (is_symmetric_memory_enabled catches get_global_server_args' ValueError and returns False), so
    # use_symmetric_memory is a nullcontext and the debug check is never reached.
    import contextlib

    vars(module).update(is_symmetric_memory_enabled=lambda: False,
                        use_symmetric_memory=lambda *args, **keywords: contextlib.nullcontext(),
                        debug_check_symmetric_mempool=lambda *args, **keywords: None)


def _allocator_reaches_server_args() -> bool:
    spec = importlib.util.find_spec(ALLOCATOR)
    if spec is None or not spec.origin:
        return False
    with open(spec.origin, encoding="utf-8") as source:
        return "from sglang.srt.server_args import" in source.read()


def install_own_standins() -> list[str]:
    """Stand in for SGLang's sampler, (0.5.2x) bootstrap and (0.5.1x) pynccl_allocator modules; the names stood in."""
    done = []
    for name, fill, needed in ((SAMPLER, _fill_sampler, True),
                               (BOOTSTRAP, _fill_bootstrap, importlib.util.find_spec(BOOTSTRAP) is not None),
                               (ALLOCATOR, _fill_allocator, _allocator_reaches_server_args())):
        if needed and name not in sys.modules:
            _own_standin(name, fill)
            done.append(name)
    return done


def install() -> None:
    """Everything above, before SGLang is imported (a ``--device cpu`` worker, the parent's import check)."""
    standins.install(tuple(MODULES))
    install_own_standins()


def stood_in() -> list[str]:
    return standins.stood_in()


def import_note() -> str | None:
    """After SGLang's ``parallel_state`` is imported: the module ``GroupCoordinator.__init__`` imports lazily in every
    release checked (``sglang.srt.layers.dp_attention``, which reaches ``triton`` and, in 0.5.23, ``tvm_ffi``) is
    imported too, so that the note names all the chain could not import; None if nothing was stood in."""
    importlib.import_module("sglang.srt.layers.dp_attention")
    return note() if stood_in() else None


def note() -> str:
    """One line: what SGLang's import chain could not import here, and what memprobe did about it."""
    return (f"SGLang's import chain could not import {', '.join(stood_in())} here (not installed with --no-deps); "
            f"memprobe stood them in (memprobe/engines/sglang/standins.py), SGLang's group code ran as installed")


__all__ = ["MODULES", "import_note", "install", "install_own_standins", "note", "stood_in"]
