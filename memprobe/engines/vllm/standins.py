"""What vLLM's parallel-state code needs on a CPU runner with ``pip install --no-deps vllm==X`` alone.

Checked on the wheel of vLLM 0.33.0 from PyPI (``vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl``, its Python
sources: no ``vllm._C`` is loadable without CUDA) with torch 2.13 (CPU), memprobe's own dependencies and the
packages of :data:`memprobe.engines.vllm.install.REQUIREMENTS`, by importing ``vllm.distributed.parallel_state``,
``vllm.config`` and ``device_communicators.cuda_communicator`` and running ``init_distributed_environment`` +
``ensure_model_parallel_initialized`` on gloo, adding the module that failed until the groups were built. vLLM's
full dependency set cannot be the answer on CPU: it pins a CUDA build of torch (0.33.0: ``torch==2.14.0``) and
GPU-only packages (``flashinfer-python``, ``xgrammar``'s CUDA torch).

Only third-party modules that the chain imports at module level (:data:`MODULES`); each stood in only where the real
one is not installed (:mod:`memprobe.engines.standins` says how, and why only in ``--device cpu`` workers).
Building vLLM's groups calls none of them: the chain reaches them through ``vllm.config`` (the model and
structured-output configs) and ``cuda_communicator.py``'s import of ``vllm._aiter_ops``, which reaches the
attention backends, the KV-transfer connectors and from there the OpenAI server's protocol types.
"""

from __future__ import annotations

from memprobe.engines import standins

#: top-level module -> where vLLM 0.33.0's chain imports it (file:line in the ``vllm`` package, module level)
MODULES: dict[str, str] = {
    "psutil": "utils/network_utils.py:18",
    "urllib3": "utils/network_utils.py:21",
    "regex": "utils/import_utils.py:17",
    "cbor2": "utils/hashing.py:12",
    "transformers": "model_executor/layers/quantization/base_config.py:11 (vllm.config's model config)",
    "huggingface_hub": "transformers_utils/config.py:13",
    "safetensors": "transformers_utils/config.py:18",
    "aiohttp": "connections.py:12",
    "requests": "connections.py:13",
    "openai_harmony": "entrypoints/mcp/tool_server.py:7",
    "openai": "entrypoints/mcp/tool.py:8; renderers/chat_utils/chat_message.py:89 builds a pydantic TypeAdapter "
              "over its types (a stand-in answers pydantic with an any-schema)",
    "pybase64": "multimodal/media/audio.py:10",
    "cachetools": "utils/cache.py:8 (LRUCache subclassed and subscripted in annotations)",
    "cloudpickle": "v1/serial_utils.py:14",
    "uvloop": "v1/utils.py:26",
    "cpuinfo": "usage/usage_lib.py:16 (py-cpuinfo)",
    "prometheus_client": "v1/metrics/perf.py:15",
    "xgrammar": "parser/abstract_parser.py:12; from PyPI it pulls a CUDA torch",
    "fastapi": "entrypoints/serve/__init__.py:4",
    "partial_json_parser": "tool_parsers/utils.py:14",
    "llguidance": "v1/structured_output/backend_guidance.py:32 (a LazyLoader read at class level, :219)",
}


def install() -> None:
    """Stand in for :data:`MODULES` wherever they are not installed, before vLLM is imported (a ``--device cpu``
    worker)."""
    standins.install(tuple(MODULES))


def stood_in() -> list[str]:
    return [name for name in standins.stood_in() if name in MODULES]


def note() -> str | None:
    """One line: what vLLM's import chain could not import here, and what memprobe did about it (None: nothing)."""
    missing = stood_in()
    if not missing:
        return None
    return (f"vLLM's import chain could not import {', '.join(missing)} here (not installed with --no-deps); "
            f"memprobe stood them in (memprobe/engines/vllm/standins.py), vLLM's group code ran as installed")


__all__ = ["MODULES", "install", "note", "stood_in"]
