"""The only module that talks to NVML (nvidia-ml-py, imported as ``pynvml``).

Every query goes through :func:`query`, which turns a failure into :data:`NA` (with the
reason) instead of raising, following nvitop's ``nvmlQuery``. A failed query is never
a silent zero: callers check ``is_available``.
NVML never creates a CUDA context, so the parent CLI process may use this module.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:  # typing.TypeIs is Python 3.13's; the checker reads it from typing_extensions
    from typing_extensions import TypeIs

T = TypeVar("T")


class NotAvailable:
    """The value of a query that could not be answered, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str = "not available") -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NA({self.reason!r})"

    def __bool__(self) -> bool:
        return False


NA = NotAvailable()


def is_available(value: T | NotAvailable) -> TypeIs[T]:
    return not isinstance(value, NotAvailable)


_lock = threading.Lock()
_state: dict[str, Any] = {"initialised": False, "error": None, "module": None}


def _module() -> Any:
    """Import and initialise NVML once; returns the module or a NotAvailable."""
    with _lock:
        if _state["initialised"]:
            return _state["module"] if _state["error"] is None else NotAvailable(_state["error"])
        _state["initialised"] = True
        try:
            import pynvml  # provided by nvidia-ml-py (the deprecated "pynvml" package is not used)

            pynvml.nvmlInit()
            _state["module"] = pynvml
        except Exception as error:  # no driver, no library, no permission
            _state["error"] = f"NVML unavailable: {error}"
            return NotAvailable(_state["error"])
        return pynvml


def query(function_name: str, *args: Any, default: Any = None) -> Any:
    """Call ``pynvml.<function_name>(*args)``; on any NVML error return ``NotAvailable``."""
    module = _module()
    if isinstance(module, NotAvailable):
        return module if default is None else default
    function: Callable[..., Any] | None = getattr(module, function_name, None)
    if function is None:
        return NotAvailable(f"{function_name} not in this nvidia-ml-py") if default is None else default
    try:
        return function(*args)
    except Exception as error:
        return NotAvailable(f"{function_name}: {error}") if default is None else default


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class GpuIdentity:
    nvml_index: int
    uuid: str
    name: str
    pci_bus_id: str


def all_gpus() -> list[GpuIdentity] | NotAvailable:
    count = query("nvmlDeviceGetCount")
    if not is_available(count):
        return count
    gpus = []
    for index in range(count):
        handle = query("nvmlDeviceGetHandleByIndex", index)
        if not is_available(handle):
            return handle
        gpus.append(
            GpuIdentity(
                nvml_index=index,
                uuid=str(_text(query("nvmlDeviceGetUUID", handle))),
                name=str(_text(query("nvmlDeviceGetName", handle))),
                pci_bus_id=str(_text(getattr(query("nvmlDeviceGetPciInfo", handle), "busId", "")) or ""),
            )
        )
    return gpus


def visible_gpus(environ: dict[str, str] | None = None) -> list[GpuIdentity] | NotAvailable:
    """GPUs in CUDA's device order, as a process launched with ``environ`` would see them.

    NVML ignores ``CUDA_VISIBLE_DEVICES`` and enumerates in its own order, so the mapping is
    done here by PCI bus id (the order CUDA uses with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which
    the launcher sets) and by UUID/index entries of ``CUDA_VISIBLE_DEVICES``
    (research notes C3; TensorRT-LLM PR #16595).
    """
    environ = dict(os.environ if environ is None else environ)
    gpus = all_gpus()
    if not is_available(gpus):
        return gpus
    ordered = sorted(gpus, key=lambda gpu: gpu.pci_bus_id.lower())
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return ordered
    chosen: list[GpuIdentity] = []
    for entry in [item.strip() for item in visible.split(",")]:
        if not entry:
            break
        if entry.isdigit():
            position = int(entry)
            if position >= len(ordered):
                break  # CUDA stops at the first invalid entry
            chosen.append(ordered[position])
        else:
            matches = [gpu for gpu in ordered if gpu.uuid.startswith(entry) or gpu.uuid.startswith(f"GPU-{entry}")]
            if len(matches) != 1:
                break
            chosen.append(matches[0])
    return chosen


def handle_by_uuid(uuid: str) -> Any:
    return query("nvmlDeviceGetHandleByUUID", uuid)


def driver_version() -> str | NotAvailable:
    value = query("nvmlSystemGetDriverVersion")
    return _text(value) if is_available(value) else value


@dataclass(frozen=True)
class DeviceMemory:
    total: int
    used: int
    free: int
    reserved: int | None
    api: str  # "v2" or "v1"


def device_memory(handle: Any) -> DeviceMemory | NotAvailable:
    """Device memory, v2 API first (``used`` without the driver's reservation), else v1.

    Which API answered is recorded because the two disagree by hundreds of MiB
    (gpustat #141, nvitop #13; research notes C1).
    """
    module = _module()
    if isinstance(module, NotAvailable):
        return module
    version = getattr(module, "nvmlMemory_v2", None)
    if version is not None:
        info = query("nvmlDeviceGetMemoryInfo", handle, version)
        if is_available(info):
            return DeviceMemory(int(info.total), int(info.used), int(info.free), int(getattr(info, "reserved", 0)), "v2")
    info = query("nvmlDeviceGetMemoryInfo", handle)
    if not is_available(info):
        return info
    return DeviceMemory(int(info.total), int(info.used), int(info.free), None, "v1")


def process_memory(handle: Any) -> dict[int, int | None] | NotAvailable:
    """``{pid: usedGpuMemory bytes or None}`` for compute processes on one GPU.

    PIDs are host PIDs: inside a PID namespace the rank's own PID is missing or shows 0
    (nvidia-docker #1483, HAMi-core #112), and the sampler falls back to device figures.
    """
    processes = query("nvmlDeviceGetComputeRunningProcesses", handle)
    if not is_available(processes):
        return processes
    result: dict[int, int | None] = {}
    for process in processes:
        used = getattr(process, "usedGpuMemory", None)
        result[int(process.pid)] = int(used) if isinstance(used, int) else None
    return result


def nvlink_connected(handle_a: Any, handle_b: Any) -> bool | NotAvailable:
    """NVLink P2P status between two GPUs, as SGLang's ``is_full_nvlink`` checks it."""
    module = _module()
    if isinstance(module, NotAvailable):
        return module
    status = query("nvmlDeviceGetP2PStatus", handle_a, handle_b, getattr(module, "NVML_P2P_CAPS_INDEX_NVLINK", 4))
    if not is_available(status):
        return status
    return status == getattr(module, "NVML_P2P_STATUS_OK", 0)
