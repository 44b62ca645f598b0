"""After a launch: each scenario's run record, status and readings from what its processes left on disk."""

from __future__ import annotations

import json
import platform
import signal
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memprobe import __version__
from memprobe.errors import Interrupted, MeasurementError, OutputError, interrupt_signal
from memprobe.launch.follow import StreamFollower, root_cause
from memprobe.launch.options import LaunchOptions, recorded_environment
from memprobe.launch.plan import Member
from memprobe.measure import nvml
from memprobe.model.events import InfoReported, load_stream
from memprobe.model.records import (
    WORKERS_LOG, Failure, RankInfo, Run, RunRecord, RunStatus, ScenarioStatus, atomic_write_text, readings_from_csv, readings_to_csv,
    stream_path,
)
from memprobe.model.timings import run_timings


@dataclass
class Tracked:
    """One scenario of a launch while the supervisor follows it."""

    member: Member
    record: RunRecord
    follower: StreamFollower
    total: int  # readings each rank takes
    state: ScenarioStatus = ScenarioStatus.WAITING
    failure: Failure | None = None  # a silent rank; an error is found again from the streams
    error_seen_at: float | None = None
    kill_at: float | None = None  # failed: when whatever of it is left gets SIGKILL
    workers_exited_at: float | None = None
    gone: set[int] = field(default_factory=set)  # its processes seen gone, never signalled again

    @property
    def ended(self) -> bool:
        return self.state in (ScenarioStatus.DONE, ScenarioStatus.FAILED)


@dataclass
class LaunchOutcome:
    """How one torchrun launch ended (the supervisor's answer; it knows nothing of reports)."""

    return_code: int | None = None
    interrupted: KeyboardInterrupt | None = None  # what the stop signal raised (memprobe's handlers raise one)
    launched_at: float = 0.0  # time.time(), the clock the workers stamp their events with
    exited_at: float = 0.0
    gpu_release_s: float | None = None


def environment_summary(environment: dict[str, str], infos: list[RankInfo], device: str, world_size: int) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "memprobe": __version__,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "device": device,
        "nccl_env": recorded_environment(environment),
        "torch": next((i.torch_version for i in infos if i.torch_version), ""),
        "cuda": next((i.cuda_version for i in infos if i.cuda_version), ""),
        "nccl": next((i.nccl_version for i in infos if i.nccl_version), ""),
        "sampling_mode": ",".join(sorted({i.sampling_mode for i in infos if i.sampling_mode})) or "",
        "gpu_model": "",
        "gpu_count": 0,
        "driver": "",
        "nvml_memory_api": "",
    }
    if device == "cuda":
        driver = nvml.driver_version()
        summary["driver"] = driver if nvml.is_available(driver) else ""
        names = sorted({i.gpu_name for i in infos if i.gpu_name})
        summary["gpu_model"] = ",".join(names)
        summary["gpu_count"] = len({i.gpu_uuid for i in infos if i.gpu_uuid}) or world_size
        first = next((i.gpu_uuid for i in infos if i.gpu_uuid), None)
        if first:
            memory = nvml.device_memory(nvml.handle_by_uuid(first))
            summary["nvml_memory_api"] = memory.api if nvml.is_available(memory) else ""
    return summary


def rank_infos(run_dir: Path, world_size: int) -> list[RankInfo]:
    ranks_file = run_dir / "ranks.json"
    if ranks_file.is_file():
        try:
            return [RankInfo(**item) for item in json.loads(ranks_file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError):
            pass
    infos = []
    for rank in range(world_size):
        events, _ = load_stream(stream_path(run_dir, rank))
        reported = [event.info for event in events if isinstance(event, InfoReported)]
        if reported:
            infos.append(reported[-1])
    return infos



def assemble(tracked: Tracked, options: LaunchOptions, outcome: LaunchOutcome, torchrun_log: Path) -> Run:
    """The run's record and status from what the processes left on disk; raises on failure or interrupt.

    A run folder that cannot take its last files (a full disk) or is gone is a :class:`MeasurementError`
    (exit 3): what the ranks streamed so far stays where it is, nothing is left half-written or recreated."""
    run_dir = tracked.member.run_dir
    # run.json is written before the launch; a launcher still streaming can make ranks/ again in a deleted folder
    if not (run_dir / "run.json").is_file():
        raise MeasurementError(f"{tracked.member.scenario.name}: its run folder {run_dir} was deleted while it ran; "
                               "its readings went with it", run_dir=str(run_dir))
    try:
        return _assemble(tracked, options, outcome, torchrun_log)
    except OutputError as error:
        raise MeasurementError(f"{tracked.member.scenario.name}: {error}; what the ranks streamed is kept in "
                               f"{run_dir / 'ranks'}/", run_dir=str(run_dir)) from None


def _assemble(tracked: Tracked, options: LaunchOptions, outcome: LaunchOutcome, torchrun_log: Path) -> Run:
    member, follower, record = tracked.member, tracked.follower, tracked.record
    run_dir, world_size = member.run_dir, member.scenario.layout.world_size
    holds_rank_0 = 0 in follower.paths  # this node's rank 0 gathered every reading
    record.gpu_release_s = outcome.gpu_release_s
    record.wall_time_s = round(outcome.exited_at - outcome.launched_at + (outcome.gpu_release_s or 0.0), 3)
    events = {rank: load_stream(stream_path(run_dir, rank))[0] for rank in follower.paths}
    record.timings = run_timings(events, outcome.launched_at, tracked.workers_exited_at, outcome.exited_at,
                                 outcome.gpu_release_s)
    record.ranks = sorted(rank_infos(run_dir, world_size), key=lambda info: info.rank)
    record.environment = environment_summary(member.environment, record.ranks, options.device, world_size)
    ref = member.scenario.engine_ref
    if ref.installed:  # the installed engine the workers imported, as read from its sources
        installation = ref.engine.installation(member.environment, member.scenario.sglang)
        record.environment[ref.engine.name] = installation.to_json() if installation else None
    readings_path = run_dir / "readings.csv"
    complete = (tracked.state == ScenarioStatus.DONE and tracked.failure is None and not follower.errors
                and (readings_path.is_file() or not holds_rank_0))
    if complete and holds_rank_0:
        readings = readings_from_csv(readings_path.read_text(encoding="utf-8"), str(readings_path))
    else:  # what this node's ranks streamed (another node holds the gathered readings)
        readings = [reading for rank in range(world_size) for reading in load_stream(stream_path(run_dir, rank))[1]]
        atomic_write_text(readings_path, readings_to_csv(readings))
    record.status = RunStatus.COMPLETE if complete else RunStatus.INCOMPLETE
    if complete and not holds_rank_0:
        record.results_at = asdict(follower.results_at) if follower.results_at else None
    if not complete:
        record.failure = (tracked.failure or _interrupted_failure(outcome)
                          or root_cause(follower, outcome.return_code, run_dir / WORKERS_LOG, torchrun_log))
    atomic_write_text(run_dir / "run.json", record.to_json())
    run = Run(record=record, readings=readings, path=run_dir)
    if not complete and outcome.interrupted is None:
        raise MeasurementError(f"{member.scenario.name}: {record.failure.describe() if record.failure else 'failed'}; "
                               f"readings kept in {run_dir}", run_dir=str(run_dir))
    return run


def _interrupted_failure(outcome: LaunchOutcome) -> Failure | None:
    if outcome.interrupted is None:
        return None
    interrupted = outcome.interrupted
    number = interrupt_signal(interrupted)
    return Failure(rank=None, group="", step="", message=f"interrupted by {signal.Signals(number).name}; workers stopped")


def raise_if_interrupted(outcome: LaunchOutcome, folder: Path) -> None:
    if outcome.interrupted is not None:
        interrupted = outcome.interrupted
        number = interrupt_signal(interrupted)
        raise Interrupted(number, str(folder))
