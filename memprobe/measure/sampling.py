"""Memory samples for one rank: per-process and device NVML figures, torch's reserved bytes, host RSS.

The sampler never decides *when* to sample (the engine does, after a synchronize and a
barrier); it only reads. The NVML boundary is injected (``nvml`` argument) so that the
sampling logic can be tested with a fake driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from memprobe.measure import nvml as real_nvml

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class MemorySample:
    process_bytes: int | None
    device_used_bytes: int | None
    torch_reserved_bytes: int | None
    other_gpus_bytes: int | None


def host_rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size from ``/proc/<pid>/statm`` (Linux), in bytes: every resident page, file-backed ones too."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as stream:
            return int(stream.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


#: The parts of the resident set a process holds of its own (``/proc/PID/status``, in KiB).
OWN_RSS_FIELDS: tuple[str, ...] = ("RssAnon", "RssShmem")


def host_own_rss_bytes(pid: int | None = None) -> int | None:
    """Resident anonymous and shared-memory bytes (``RssAnon + RssShmem``): the RSS without file-backed pages.

    Why not the whole RSS: fork() does not copy the page-table entries of file-backed mappings (Linux,
    mm/memory.c: copy_page_range skips a VMA without anon_vma; its pages are faulted in when touched), so a
    measuring process forked from its launcher starts without the ~200 MiB of torch's library pages the
    launcher had mapped, and reads ~200 MiB less than the same scenario measured in the launcher itself.
    Anonymous pages are shared copy-on-write and counted in both; library pages are page cache either way.
    """
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as stream:
            fields = dict(line.split(":", 1) for line in stream if line.startswith(OWN_RSS_FIELDS))
        return sum(int(fields[name].split()[0]) * 1024 for name in OWN_RSS_FIELDS)
    except (OSError, ValueError, IndexError, KeyError):
        return None


class HostSampler:
    """``--device cpu``: the rank's own host RSS (:func:`host_own_rss_bytes`) is the primary figure; there is no GPU."""

    mode = "host_rss_anon"

    def sample(self) -> MemorySample:
        return MemorySample(process_bytes=host_own_rss_bytes(), device_used_bytes=None, torch_reserved_bytes=None,
                            other_gpus_bytes=None)

    def primary(self, sample: MemorySample) -> int | None:
        return sample.process_bytes


class GpuSampler:
    """NVML figures for the rank's own process on its own GPU (found by UUID, never by index)."""

    def __init__(self, pid: int, gpu_uuid: str, *, nvml: Any = real_nvml,
                 torch_reserved: Callable[[], int | None] | None = None, stable_reads: int = 5) -> None:
        self.pid = pid
        self.gpu_uuid = gpu_uuid
        self.nvml = nvml
        self.torch_reserved = torch_reserved or (lambda: None)
        self.stable_reads = stable_reads
        self.handle = nvml.handle_by_uuid(gpu_uuid)
        if not nvml.is_available(self.handle):
            raise RuntimeError(f"no NVML device with UUID {gpu_uuid}: {self.handle.reason}")
        self.mode = "process"  # until decide_mode() sees otherwise
        self.memory_api = ""
        self.warnings: list[str] = []
        self._others: list[Any] | None = None

    # -- raw reads -----------------------------------------------------------------
    def _own_process_bytes(self) -> int | None:
        processes = self.nvml.process_memory(self.handle)
        if not self.nvml.is_available(processes):
            return None
        return processes.get(self.pid)

    def _device_used_bytes(self) -> int | None:
        memory = self.nvml.device_memory(self.handle)
        if not self.nvml.is_available(memory):
            return None
        self.memory_api = memory.api
        return memory.used

    def _other_handles(self) -> list[Any] | None:
        """The other GPUs' handles, looked up once (enumerating GPUs on every read costs NVML calls)."""
        if self._others is None:
            gpus = self.nvml.all_gpus()
            if not self.nvml.is_available(gpus):
                return None
            self._others = [self.nvml.handle_by_uuid(gpu.uuid) for gpu in gpus if gpu.uuid != self.gpu_uuid]
        return self._others

    def _other_gpus_bytes(self) -> int | None:
        handles = self._other_handles()
        if handles is None:
            return None
        total = 0
        for handle in handles:
            processes = self.nvml.process_memory(handle) if self.nvml.is_available(handle) else handle
            if not self.nvml.is_available(processes):
                return None
            total += processes.get(self.pid) or 0
        return total

    def other_processes(self) -> dict[int, int | None]:
        """Other compute processes on this rank's GPU (a shared GPU makes device figures wrong)."""
        processes = self.nvml.process_memory(self.handle)
        if not self.nvml.is_available(processes):
            return {}
        return {pid: used for pid, used in processes.items() if pid != self.pid}

    def decide_mode(self) -> str:
        """Call once the CUDA context exists: per-process figures if NVML lists our PID, else device figures."""
        used = self._own_process_bytes()
        if used is None or used == 0:
            self.mode = "device"
            self.warnings.append(
                f"NVML does not list this process (pid {self.pid}) on {self.gpu_uuid} with its memory "
                "(PID namespace?); falling back to device-level used memory"
            )
        else:
            self.mode = "process"
        return self.mode

    # -- the sample ------------------------------------------------------------------
    def _read(self) -> tuple[int | None, int | None]:
        return self._own_process_bytes(), self._device_used_bytes()

    def sample(self) -> MemorySample:
        """Read until two consecutive reads agree (NVML lags freshly mapped memory briefly); the other GPUs
        and torch's cache once, after that. Each NVML process query costs time that grows with the processes
        on the GPUs (side by side, 12 workers queried at once), so the stable loop reads only what it compares."""
        previous = self._read()
        for _ in range(self.stable_reads - 1):
            current = self._read()
            if current == previous:
                break
            previous = current
        process, device_used = previous
        return MemorySample(process_bytes=process, device_used_bytes=device_used,
                            torch_reserved_bytes=self.torch_reserved(), other_gpus_bytes=self._other_gpus_bytes())

    def primary(self, sample: MemorySample) -> int | None:
        return sample.process_bytes if self.mode == "process" else sample.device_used_bytes
