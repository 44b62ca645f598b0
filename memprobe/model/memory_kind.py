"""The kind of memory a run, a baseline scenario or a whole baseline holds: the one place it is decided.

Bytes of different kinds are never judged against each other (not even with ``--allow-env-mismatch``,
which only waives environment differences within one kind), and one baseline file holds one kind:

* ``gpu``: GPU memory read with NVML (sampling mode ``process``, or ``device`` where NVML lists no PID);
* ``host_rss_anon``: host memory of a ``--device cpu`` rank, its resident anonymous and shared-memory
  pages (``RssAnon + RssShmem``), the same whether the rank measured in its launcher or in a forked child;
* ``host_rss``: the whole host resident set, which ``--device cpu`` read before: a forked measuring
  process lacks the file-backed pages its launcher had mapped, so it is a kind of its own;
* ``estimated_gpu``: GPU memory estimated by ``memprobe estimate`` (NCCL's rules and a calibration), never
  measured: an estimate and a measurement are never judged against each other.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

GPU = "gpu"
HOST_RSS_ANON = "host_rss_anon"
HOST_RSS = "host_rss"
ESTIMATED_GPU = "estimated_gpu"
MIXED = "mixed"

#: sampling mode (run.json's environment, a baseline's environment_key) -> kind of memory
KIND_OF_SAMPLING_MODE: dict[str, str] = {"process": GPU, "device": GPU, HOST_RSS_ANON: HOST_RSS_ANON, HOST_RSS: HOST_RSS,
                                          "estimate": ESTIMATED_GPU}
#: what a measurement on each --device reads now
KIND_OF_DEVICE: dict[str, str] = {"cuda": GPU, "cpu": HOST_RSS_ANON}

DESCRIPTIONS: dict[str, str] = {
    GPU: "GPU memory (NVML)",
    HOST_RSS_ANON: "host memory (anonymous and shared RSS, --device cpu)",
    HOST_RSS: "host memory (whole RSS, --device cpu of an earlier memprobe)",
    ESTIMATED_GPU: "ESTIMATED GPU memory (memprobe estimate, not measured)",
    MIXED: "memory of several kinds",
}


def _one_kind(kinds: Iterable[str]) -> str:
    distinct = set(kinds)
    return distinct.pop() if len(distinct) == 1 else MIXED


def kind_of_modes(modes: str, device: str = "") -> str:
    """The kind of a sampling-mode field (``"device,process"`` where ranks differ); ``device`` decides where
    no rank recorded a mode (a run that failed before its first sample)."""
    named = [mode for mode in modes.split(",") if mode]
    if not named:
        return KIND_OF_DEVICE.get(device, f"unknown device {device!r}")
    return _one_kind(KIND_OF_SAMPLING_MODE.get(mode, f"unknown sampling mode {mode!r}") for mode in named)


def memory_kind(item: Any) -> str:
    """The kind of memory of a run (:class:`~memprobe.model.records.Run` or its ``RunRecord``), of a baseline
    scenario (parsed, or its object in a baseline document), or of a whole baseline (parsed or a document:
    :data:`MIXED` where its scenarios differ)."""
    record = getattr(item, "record", item)
    if hasattr(record, "environment") and hasattr(record, "device"):
        return kind_of_modes(str((record.environment or {}).get("sampling_mode") or ""), record.device)
    key = item.get("environment_key") if isinstance(item, Mapping) else getattr(item, "environment_key", None)
    if isinstance(key, Mapping):
        return kind_of_modes(str(key.get("sampling_mode") or ""))
    scenarios = item.get("scenarios") if isinstance(item, Mapping) else getattr(item, "scenarios", None)
    if isinstance(scenarios, Mapping):
        return _one_kind(memory_kind(scenario) for scenario in scenarios.values())
    raise TypeError(f"no kind of memory for {type(item).__name__}")


def describe(kind: str) -> str:
    return DESCRIPTIONS.get(kind, kind)
