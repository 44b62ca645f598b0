"""Sampling logic and the NVML boundary, with a fake NVML (unit tests only: real GPU evidence is in results/)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from memprobe.measure import nvml
from memprobe.engines.sglang.sizes import v2_supported_world_sizes, v2_workspace
from memprobe.measure.sampling import GpuSampler, HostSampler, host_rss_bytes

MiB = 1 << 20


class FakeNvml:
    """A scripted driver: per-GPU process tables and device memory that tests change between reads."""

    NotAvailable = nvml.NotAvailable
    is_available = staticmethod(nvml.is_available)

    def __init__(self, gpus: int = 2) -> None:
        self.gpus = [nvml.GpuIdentity(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", f"0000:0{i}:00.0") for i in range(gpus)]
        self.processes: dict[str, dict[int, int | None]] = {g.uuid: {} for g in self.gpus}
        self.used: dict[str, int] = {g.uuid: 500 * MiB for g in self.gpus}
        self.reads = 0
        self.fail_processes = False

    def handle_by_uuid(self, uuid: str):
        return uuid if uuid in self.processes else nvml.NotAvailable("no such GPU")

    def all_gpus(self):
        return list(self.gpus)

    def process_memory(self, handle):
        self.reads += 1
        if self.fail_processes:
            return nvml.NotAvailable("nvmlDeviceGetComputeRunningProcesses: Unknown Error")
        return dict(self.processes[handle])

    def device_memory(self, handle):
        return nvml.DeviceMemory(total=80 * 1024 * MiB, used=self.used[handle], free=0, reserved=0, api="v2")


def test_process_mode_reads_the_own_pid_and_other_gpus():
    fake = FakeNvml()
    fake.processes["GPU-0"] = {100: 700 * MiB, 200: 300 * MiB}
    fake.processes["GPU-1"] = {100: 500 * MiB}  # a stray context of this rank on another GPU
    sampler = GpuSampler(100, "GPU-0", nvml=fake, torch_reserved=lambda: 2 * MiB)
    assert sampler.decide_mode() == "process"
    sample = sampler.sample()
    assert sample.process_bytes == 700 * MiB
    assert sample.device_used_bytes == 500 * MiB
    assert sample.other_gpus_bytes == 500 * MiB
    assert sample.torch_reserved_bytes == 2 * MiB
    assert sampler.primary(sample) == 700 * MiB
    assert sampler.other_processes() == {200: 300 * MiB}


def test_pid_namespace_falls_back_to_device_figures_and_says_so():
    fake = FakeNvml()
    fake.processes["GPU-0"] = {4242: 0}  # the driver shows a host PID we cannot match, or 0 bytes
    sampler = GpuSampler(100, "GPU-0", nvml=fake)
    assert sampler.decide_mode() == "device"
    assert "PID namespace" in sampler.warnings[0]
    sample = sampler.sample()
    assert sample.process_bytes is None  # not available, never a silent zero
    assert sampler.primary(sample) == 500 * MiB


def test_a_failed_query_is_not_available_never_zero():
    fake = FakeNvml()
    fake.processes["GPU-0"] = {100: 700 * MiB}
    sampler = GpuSampler(100, "GPU-0", nvml=fake)
    sampler.decide_mode()
    fake.fail_processes = True
    sample = sampler.sample()
    assert sample.process_bytes is None and sample.other_gpus_bytes is None
    assert sampler.primary(sample) is None


def test_sample_waits_for_two_agreeing_reads():
    fake = FakeNvml(gpus=1)
    values = iter([600 * MiB, 700 * MiB, 700 * MiB, 700 * MiB])

    def moving(handle):
        return {100: next(values)}

    fake.process_memory = moving
    sampler = GpuSampler(100, "GPU-0", nvml=fake)
    assert sampler.sample().process_bytes == 700 * MiB


def test_a_sample_queries_the_other_gpus_once_not_in_every_stable_read():
    """NVML process queries slow down with many processes on the GPUs; a stable sample on 4 GPUs costs
    two reads of its own GPU and one of each other GPU, not all four GPUs in each of its two reads."""
    fake = FakeNvml(gpus=4)
    fake.processes["GPU-0"] = {100: 700 * MiB}
    fake.processes["GPU-3"] = {100: 4 * MiB}
    enumerations = []
    listed = fake.all_gpus
    fake.all_gpus = lambda: enumerations.append(1) or listed()
    sampler = GpuSampler(100, "GPU-0", nvml=fake)
    fake.reads = 0
    first = sampler.sample()
    assert fake.reads == 2 + 3
    assert first.other_gpus_bytes == 4 * MiB and first.process_bytes == 700 * MiB
    sampler.sample()
    assert len(enumerations) == 1  # the other GPUs' handles are looked up once per sampler


def test_unknown_uuid_is_an_error():
    with pytest.raises(RuntimeError, match="no NVML device"):
        GpuSampler(1, "GPU-missing", nvml=FakeNvml())


def test_host_sampler_reads_real_rss():
    rss = host_rss_bytes()
    assert rss is not None and rss > 10 * MiB
    sample = HostSampler().sample()
    assert sample.device_used_bytes is None and HostSampler().primary(sample) > 10 * MiB


def test_visible_gpus_follow_pci_order_and_cuda_visible_devices(monkeypatch):
    gpus = [nvml.GpuIdentity(0, "GPU-bbb", "H100", "00000000:1B:00.0"), nvml.GpuIdentity(1, "GPU-aaa", "H100", "00000000:0A:00.0"),
            nvml.GpuIdentity(2, "GPU-ccc", "H100", "00000000:2C:00.0")]
    monkeypatch.setattr(nvml, "all_gpus", lambda: gpus)
    assert [g.uuid for g in nvml.visible_gpus({})] == ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    assert [g.uuid for g in nvml.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,0"})] == ["GPU-ccc", "GPU-aaa"]
    assert [g.uuid for g in nvml.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-bbb,ccc"})] == ["GPU-bbb", "GPU-ccc"]
    assert [g.uuid for g in nvml.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,7,2"})] == ["GPU-bbb"]  # CUDA stops at 7
    assert nvml.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_query_turns_errors_into_not_available(monkeypatch):
    def broken(*args):
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    monkeypatch.setattr(nvml, "_module", lambda: SimpleNamespace(nvmlDeviceGetCount=broken))
    value = nvml.query("nvmlDeviceGetCount")
    assert not nvml.is_available(value) and "GPU_IS_LOST" in value.reason
    assert not nvml.is_available(nvml.query("nvmlNoSuchFunction"))


def test_custom_allreduce_v2_sizes_match_sglang_tables():
    # research notes section 4: SM90 80.01 / 23.01 / 18.01 MiB for 2 / 4 / 8 GPUs; SM100 48.01 MiB for 4 and 8
    assert v2_workspace(2, 9, 0, 132).symmetric_bytes == 4 * 16 * MiB + 16 * MiB + 64 * 128
    assert v2_workspace(4, 9, 0, 132).symmetric_bytes == 8 * 896 * 1024 + 16 * MiB + 64 * 128
    assert v2_workspace(8, 9, 0, 132).symmetric_bytes == 16 * 128 * 1024 + 16 * MiB + 64 * 128
    assert v2_workspace(4, 10, 0, 148).symmetric_bytes == 8 * 4 * MiB + 16 * MiB + 96 * 128
    assert v2_workspace(4, 9, 0, 132).graph_params_bytes == 4 * MiB
    assert v2_supported_world_sizes(9, 0) == (2, 3, 4, 5, 6, 7, 8)
    assert 16 in v2_supported_world_sizes(10, 0)
    with pytest.raises(ValueError):
        v2_workspace(16, 9, 0, 132)


# ------------------------------------------------------------------ waiting for the driver to let go

def _patch_launcher_nvml(monkeypatch, fake: FakeNvml) -> None:
    from memprobe.launch import processes as launcher

    monkeypatch.setattr(launcher.nvml, "visible_gpus", lambda environment=None: list(fake.gpus))
    monkeypatch.setattr(launcher.nvml, "handle_by_uuid", fake.handle_by_uuid)
    monkeypatch.setattr(launcher.nvml, "process_memory", fake.process_memory)


def test_wait_for_gpu_release_waits_while_nvml_still_lists_a_worker(monkeypatch):
    from memprobe.launch.processes import wait_for_gpu_release

    fake = FakeNvml()
    fake.processes["GPU-1"] = {4242: 600 * MiB, 7: 1 * MiB}  # 7: someone else's process, not waited for
    original = fake.process_memory

    def releasing(handle):
        if fake.reads >= 10:  # the driver tears the context down after a few polls
            fake.processes["GPU-1"].pop(4242, None)
        return original(handle)

    monkeypatch.setattr(fake, "process_memory", releasing)
    _patch_launcher_nvml(monkeypatch, fake)
    waited = wait_for_gpu_release({4241, 4242}, {}, timeout_s=5.0)
    assert 0.1 <= waited < 5.0
    assert 4242 not in fake.processes["GPU-1"] and 7 in fake.processes["GPU-1"]


def test_wait_for_gpu_release_gives_up_at_its_timeout_and_never_waits_without_pids_or_nvml(monkeypatch):
    from memprobe.launch.processes import wait_for_gpu_release

    fake = FakeNvml()
    fake.processes["GPU-0"] = {4242: 600 * MiB}
    _patch_launcher_nvml(monkeypatch, fake)
    assert 0.3 <= wait_for_gpu_release({4242}, {}, timeout_s=0.3) < 1.0
    assert wait_for_gpu_release(set(), {}) == 0.0
    assert wait_for_gpu_release({99}, {}) < 0.05  # a PID NVML does not list (another PID namespace)
    fake.fail_processes = True
    assert wait_for_gpu_release({4242}, {}) < 0.05  # a failed query is not a reason to wait
    from memprobe.launch import processes as launcher

    monkeypatch.setattr(launcher.nvml, "visible_gpus", lambda environment=None: nvml.NotAvailable("no driver"))
    assert wait_for_gpu_release({4242}, {}) == 0.0


def test_host_sampler_reads_the_same_in_a_forked_child_as_in_its_parent():
    """A measuring process forked from its launcher must read what the launcher would: fork() leaves a child's
    file-backed pages unmapped until touched, so the whole RSS of a child lacks them; its own (anonymous and
    shared) pages are what both hold."""
    import os

    import memprobe.reports  # noqa: F401  (maps pandas' libraries, as a launcher maps torch's)

    reader, writer = os.pipe()
    parent = HostSampler().sample().process_bytes
    pid = os.fork()
    if pid == 0:
        os.write(writer, str(HostSampler().sample().process_bytes).encode())
        os._exit(0)
    os.close(writer)
    child = int(os.read(reader, 64).decode())
    os.close(reader)
    os.waitpid(pid, 0)
    assert abs(child - parent) <= 1 * MiB, (parent, child)
