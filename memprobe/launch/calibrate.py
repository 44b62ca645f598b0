"""The parent side of ``memprobe calibrate``: one GPU's per-process constants for ``memprobe estimate``, measured
by :mod:`memprobe.measure.calibrate` in a process of its own and in two torchrun processes on the same GPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from memprobe.errors import MeasurementError, UsageError

if TYPE_CHECKING:
    from memprobe.estimate.calibration import Calibration

STEP_TIMEOUT_S = 180


def calibrate(out: Path, nvlinks: Optional[int] = None, gpu_index: int = 0) -> "Calibration":
    """Measure GPU ``gpu_index``'s constants (the CUDA context, a one-rank communicator and the once-per-process
    cost of a first multi-rank one, with NCCL_CUMEM_ENABLE 0 and 1) and write them to ``out``.

    The parent reads NVML only: every CUDA and NCCL call is made by ``memprobe.measure.calibrate`` in processes of
    their own, so a process's first communicator really is its first.
    """
    from memprobe.measure import nvml
    from memprobe.model.records import atomic_write_text
    from memprobe.paths import check_output_path

    check_output_path(out, "--out", suffixes=(".json",))
    visible = nvml.visible_gpus()
    if not nvml.is_available(visible) or not visible:
        raise UsageError(f"memprobe calibrate needs one NVIDIA GPU; NVML sees none ({getattr(visible, 'reason', 'no GPU')})")
    if not 0 <= gpu_index < len(visible):
        raise UsageError(f"--gpu-index {gpu_index}: this node has {len(visible)} visible GPU(s)")
    gpu = visible[gpu_index]
    links, source = _nvlinks(nvml, gpu.uuid, nvlinks)
    readings = {cumem: _measure(gpu.uuid, cumem) for cumem in (0, 1)}
    calibration = _assemble(readings, gpu.name, links, source, str(nvml.driver_version()))
    atomic_write_text(out, calibration.to_json())
    return calibration


def _nvlinks(nvml: Any, uuid: str, given: Optional[int]) -> tuple[int, str]:
    handle = nvml.handle_by_uuid(uuid)
    active = 0
    for link in range(18):  # NVML_NVLINK_MAX_LINKS on Hopper
        state = nvml.query("nvmlDeviceGetNvLinkState", handle, link)
        active += 1 if nvml.is_available(state) and int(state) == 1 else 0
    if given is not None:
        if not 1 <= given <= 18:
            raise UsageError(f"--nvlinks {given}: an NVSwitch GPU has 1 to 18 NVLinks")
        return given, f"--nvlinks {given} (NVML reports {active} active on the calibrated GPU)"
    if active == 0:
        raise UsageError("NVML reports no active NVLink on this GPU; pass --nvlinks N, the NVLinks each GPU of the "
                         "node you estimate for has (nvidia-smi topo -m there shows NV18 on HGX H100/H200)")
    return active, "NVML nvmlDeviceGetNvLinkState on the calibrated GPU"


def _measure(uuid: str, cumem: int) -> dict[str, Any]:
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=uuid, CUDA_DEVICE_ORDER="PCI_BUS_ID", NCCL_NVLS_ENABLE="0",
                       NCCL_CUMEM_ENABLE=str(cumem), OMP_NUM_THREADS="1")
    for key in ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE"):
        environment.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="memprobe-calibrate-") as work:  # torchrun's logs too: else /tmp/torchelastic_*
        _run([sys.executable, "-m", "memprobe.measure.calibrate", "single", work], environment)
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(_free_port()), "--log-dir", os.path.join(work, "torchrun"), "-m",
              "memprobe.measure.calibrate", "pair", work], environment)
        single, pair = _readings(work, "single"), _readings(work, "pair")
    if len(single) != 1 or len(pair) != 2:
        raise MeasurementError(f"calibration with NCCL_CUMEM_ENABLE={cumem}: expected 1 + 2 readings, got {len(single)} + {len(pair)}")
    return {"single": single[0], "pair": sorted(pair, key=lambda item: item["rank"])}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _readings(folder: str, mode: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(Path(folder).glob(f"{mode}-*.json"))]


def _run(command: list[str], environment: dict[str, str]) -> None:
    started = time.monotonic()
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"{' '.join(command[1:4])} took over {STEP_TIMEOUT_S} s; stopped") from None
    if done.returncode != 0:
        raise MeasurementError(f"{' '.join(command[1:4])} exited {done.returncode} after {time.monotonic() - started:.0f} s: "
                               f"{_last_error(done.stderr + done.stdout)}")


def _last_error(output: str) -> str:
    """The line that says what failed: a worker's exception, not torchrun's banner around it."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not set(line.strip()) <= set("=-*")]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]


def _assemble(readings: dict[int, dict[str, Any]], gpu_name: str, links: int, source: str, driver: str) -> "Calibration":
    from memprobe.estimate.calibration import Calibration, CalibrationPoint

    points = []
    for cumem, measured in readings.items():
        single, pair = measured["single"], measured["pair"]
        first = [_added(rank, 1) - _added(rank, 2) for rank in pair]
        points.append(CalibrationPoint(
            cumem=bool(cumem),
            cuda_context_bytes=single["context_bytes"] - single["start_bytes"],
            first_communicator_bytes=max(first),
            one_rank_communicator_bytes=_added(single, 3),
            two_rank_communicator_bytes=max(_added(rank, 2) for rank in pair),
        ))
    single = readings[0]["single"]
    return Calibration(
        gpu_model=gpu_name, compute_capability=int(single["compute_capability"]), sm_count=int(single["sm_count"]),
        nvlinks_per_gpu=links, nvlinks_source=source, driver=driver, cuda=single["cuda"], torch=single["torch"],
        nccl=single["nccl"], points=tuple(points), created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        host=socket.gethostname(),
        method="memprobe calibrate: one process (CUDA context, one-rank communicators) and two processes on one GPU "
               "joined as two nodes by NCCL_HOSTID (their first two-rank communicator minus their second)",
        extra={"readings": {f"cumem_{cumem}": measured for cumem, measured in readings.items()}},
    )


def _added(reading: dict[str, Any], index: int) -> int:
    """Bytes communicator ``index`` added outside torch's cache (its warm-up tensor's segment is torch's)."""
    before = "context" if index == 1 else f"communicator_{index - 1}"
    after = f"communicator_{index}"
    return (reading[f"{after}_bytes"] - reading[f"{before}_bytes"]) - (reading[f"{after}_reserved"] - reading[f"{before}_reserved"])
