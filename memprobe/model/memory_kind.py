"""The kind of memory a run, a baseline scenario or a whole baseline holds: the one place it is decided.

Bytes of different kinds are never judged against each other (not even with ``--allow-env-mismatch``,
which only waives environment differences within one kind), and one baseline file holds one kind:

* ``gpu``: GPU memory read with NVML (sampling mode ``process``, or ``device`` where NVML lists no PID);
* ``host_rss_anon``: host memory of a ``--device cpu`` rank, its resident anonymous and shared-memory
  pages (``RssAnon + RssShmem``), the same whether the rank measured in its launcher or in a forked child;
* ``host_rss``: the whole host resident set, which ``--device cpu`` read before: a forked measuring
  process lacks the file-backed pages its launcher had mapped, so it is a kind of its own.
"""

from __future__ import annotations

from typing import Any, Mapping

GPU = "gpu"
HOST_RSS_ANON = "host_rss_anon"
HOST_RSS = "host_rss"
MIXED = "mixed"

#: sampling mode (run.json's environment, a baseline's environment_key) -> kind of memory
KIND_OF_SAMPLING_MODE: dict[str, str] = {"process": GPU, "device": GPU, HOST_RSS_ANON: HOST_RSS_ANON, HOST_RSS: HOST_RSS}
#: what a measurement on each --device reads now
KIND_OF_DEVICE: dict[str, str] = {"cuda": GPU, "cpu": HOST_RSS_ANON}

DESCRIPTIONS: dict[str, str] = {
    GPU: "GPU memory (NVML)",
    HOST_RSS_ANON: "host memory (anonymous and shared RSS, --device cpu)",
    HOST_RSS: "host memory (whole RSS, --device cpu of an earlier memprobe)",
    MIXED: "memory of several kinds",
}


def kind_of_modes(modes: str, device: str = "") -> str:
    """The kind of a sampling-mode field (``"device,process"`` where ranks differ); ``device`` decides where
    no rank recorded a mode (a run that failed before its first sample)."""
    kinds = {KIND_OF_SAMPLING_MODE.get(mode, f"unknown sampling mode {mode}") for mode in modes.split(",") if mode}
    if not kinds:
        return KIND_OF_DEVICE.get(device, f"unknown device {device}")
    return kinds.pop() if len(kinds) == 1 else MIXED


def memory_kind(item: Any) -> str:
    """The kind of memory of a :class:`~memprobe.model.records.Run` or ``RunRecord``, a baseline scenario
    (anything with an ``environment_key``), a loaded baseline or a baseline document (all its scenarios)."""
    record = getattr(item, "record", item)
    if hasattr(record, "environment") and hasattr(record, "device"):
        return kind_of_modes(str((record.environment or {}).get("sampling_mode") or ""), record.device)
    if hasattr(item, "environment_key"):
        return kind_of_modes(str(item.environment_key.get("sampling_mode") or ""))
    scenarios = getattr(item, "scenarios", None)
    if scenarios is None and isinstance(item, Mapping):
        scenarios = item.get("scenarios")
        if isinstance(scenarios, Mapping):
            kinds = {kind_of_modes(str((value.get("environment_key") or {}).get("sampling_mode") or ""))
                     for value in scenarios.values() if isinstance(value, Mapping)}
            return kinds.pop() if len(kinds) == 1 else MIXED
    if isinstance(scenarios, Mapping):
        kinds = {memory_kind(scenario) for scenario in scenarios.values()}
        return kinds.pop() if len(kinds) == 1 else MIXED
    raise TypeError(f"no kind of memory for {type(item).__name__}")


def describe(kind: str) -> str:
    return DESCRIPTIONS.get(kind, kind)
