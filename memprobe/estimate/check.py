"""The estimate set beside measured runs (``memprobe estimate --check``): per run, rank and step, the error.

A measured run is estimated from what it was asked to measure (its scenario: layout, stack or the installed
engine's flags, NCCL settings, warm-up) on the node it ran on (its GPU model and count), never from its readings.
The bound a total must meet: the larger of 2 % of the measured total and 16 MiB.
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from memprobe.errors import UsageError
from memprobe.estimate.calibration import Calibration
from memprobe.estimate.model import Topology, estimate_run
from memprobe.estimate import nccl
from memprobe.estimate.nccl import Network
from memprobe.model.comparison import load_comparison, scenario_from_run
from memprobe.model.records import Reading, Run, RunStatus
from memprobe.model.run_files import load_run
from memprobe.model.steps import END, FIRST_USE

from memprobe.units import MIB as MiB
BOUND_FRACTION = 0.02
BOUND_FLOOR = 16 * MiB


def bound(measured: int) -> int:
    return max(int(abs(measured) * BOUND_FRACTION), BOUND_FLOOR)


@dataclass(frozen=True)
class StepError:
    group: str
    step: str
    measured: dict[int, int]  # rank -> bytes the step added
    estimated: dict[int, int]

    @property
    def worst(self) -> tuple[int, int]:
        """(rank, estimated minus measured) of the largest difference."""
        return max(((rank, self.estimated.get(rank, 0) - value) for rank, value in self.measured.items()),
                   key=lambda item: abs(item[1]), default=(0, 0))


@dataclass(frozen=True)
class TotalError:
    rank: int
    what: str  # "after init" or "after first use"
    measured: int
    estimated: int

    @property
    def error(self) -> int:
        return self.estimated - self.measured

    @property
    def within(self) -> bool:
        return abs(self.error) <= bound(self.measured)


@dataclass
class RunCheck:
    path: str
    scenario: str
    gpu: str
    gpus: int
    world_size: int
    skipped: str = ""
    network: str = ""  # between the run's nodes ("" on one node)
    steps: list[StepError] = field(default_factory=list)
    totals: list[TotalError] = field(default_factory=list)

    @property
    def within(self) -> bool:
        return all(total.within for total in self.totals)

    def worst(self, what: str) -> TotalError | None:
        chosen = [total for total in self.totals if total.what == what]
        return max(chosen, key=lambda total: abs(total.error), default=None)


MAX_SEARCH_DEPTH = 6  # <repo>/results/<machine>/<comparison>/<scenario>/run.json is 4 below a clone's root
MAX_SEARCHED_FOLDERS = 5_000  # `--check /` would walk the whole disk


def measured_runs(paths: Iterable[str | Path]) -> list[tuple[str, Run | str]]:
    """Every scenario run under the given run or comparison folders (folders of folders are searched, at most
    MAX_SEARCH_DEPTH deep): a folder given itself must load; one found by the search that does not (another
    tool's run.json) is kept as the reason it was skipped, and the search goes on."""
    found: list[tuple[str, Run | str]] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UsageError(f"--check {path}: no such folder")
        if (path / "comparison.json").is_file():
            found += [(str(item.run.path or path), item.run) for item in load_comparison(path).runs]
            continue
        if (path / "run.json").is_file():
            found.append((str(path), load_run(path)))
            continue
        folders = _run_folders(path)
        if not folders:
            raise UsageError(f"--check {path}: holds no memprobe run (no run.json below it)")
        found += [(str(folder), _load_or_why(folder)) for folder in folders]
    unique: dict[str, Run | str] = {}
    for where, run in found:
        unique.setdefault(where, run)
    return list(unique.items())


def _run_folders(path: Path) -> list[Path]:
    folders: list[Path] = []
    for visited, (folder, subfolders, files) in enumerate(os.walk(path), start=1):  # symlinks not followed
        if visited > MAX_SEARCHED_FOLDERS:
            raise UsageError(f"--check {path}: more than {MAX_SEARCHED_FOLDERS} folders to search; give the run or "
                             f"comparison folders themselves")
        if "run.json" in files:
            folders.append(Path(folder))
            subfolders[:] = []  # a run's own folders hold no other run
            continue
        deep = len(Path(folder).relative_to(path).parts) >= MAX_SEARCH_DEPTH
        subfolders[:] = [] if deep else sorted(name for name in subfolders if not name.startswith("."))
    return sorted(folders)


def _load_or_why(folder: Path) -> Run | str:
    try:
        return load_run(folder)
    except UsageError as error:
        return f"not a memprobe run it can read: {error}"


def check_run(where: str, run: Run | str, calibration_for: Callable[[str], Calibration | None]) -> RunCheck:
    if isinstance(run, str):  # found by the search but unreadable: why it was skipped
        return RunCheck(path=where, scenario="?", gpu="", gpus=0, world_size=0, skipped=run)
    record = run.record
    environment = record.environment
    gpus = int(environment.get("gpu_count") or 0)
    result = RunCheck(path=where, scenario=record.scenario or record.run_id, gpu=str(environment.get("gpu_model") or ""),
                      gpus=gpus, world_size=record.world_size)
    result.skipped = _why_not(run, calibration_for)
    if result.skipped:
        return result
    calibration = calibration_for(result.gpu)
    assert calibration is not None
    scenario = scenario_from_run(run)
    stack = None
    if scenario.engine_ref.installed:
        try:
            stack = scenario.engine_ref.engine.learn_stack(run)
        except UsageError as error:
            if record.stack_name == "installed":  # the engine's own flags, and this run did not record them
                result.skipped = f"not estimated: {error}"
                return result
    try:
        topology = Topology.for_world(record.world_size, gpus, None, recorded_network(run))
        result.network = topology.network.kind if topology.nnodes > 1 else ""
        estimate = estimate_run(scenario, topology, calibration, stack)
    except UsageError as error:
        result.skipped = f"not estimated: {error}"
        return result
    result.steps, result.totals = _compare(run.all_readings(), estimate.all_readings())
    return result


def recorded_network(run: Run) -> Network:
    """The network a run's nodes were joined by, from the NCCL variables it recorded: ``NCCL_NET=Socket`` is NCCL's
    socket transport, on the loopback interface (``NCCL_SOCKET_IFNAME=lo``, several nodes on one host by
    ``NCCL_HOSTID``) at the 10 Gb/s NCCL takes for an interface whose speed it cannot read; else InfiniBand with
    GPUDirect, the estimate's default (no committed run spans real nodes)."""
    variables = run.record.environment.get("nccl_env") or {}
    if str(variables.get("NCCL_NET", "")).lower() == "socket":
        if variables.get("NCCL_SOCKET_IFNAME") != "lo":
            raise UsageError("a socket run on an interface other than lo: its NIC speed is not recorded")
        return Network.of("socket")
    return Network()


def _failed_communicator(run: Run) -> str:
    """The first communicator a rank of ``run`` recorded as failed (``group/kind: reason``), or ""."""
    for info in run.record.ranks:
        for group, decisions in sorted(info.communicators.items()):
            for kind, word in sorted(decisions.items()):
                if word.startswith("failed: "):
                    return f"rank {info.rank} {group}/{kind}: {word[len('failed: '):][:120]}"
    return ""


def _why_not(run: Run, calibration_for: Callable[[str], Calibration | None]) -> str:
    record = run.record
    if record.source != "measured":
        return "an estimate, not a measurement"
    if record.device != "cuda":
        return "host memory (--device cpu)"
    if record.status != RunStatus.COMPLETE:
        return f"status {record.status}"
    if record.results_at is not None or len(run.ranks) != record.world_size:
        return f"readings of {len(run.ranks)} of {record.world_size} ranks here (another node gathered the run)"
    failed = _failed_communicator(run)
    if failed:  # the estimate models what an engine builds; a build that failed on this machine is not modelled
        return f"a communicator failed to build ({failed})"
    gpu = str(record.environment.get("gpu_model") or "")
    calibration = calibration_for(gpu)
    if calibration is None:
        return f"no calibration for {gpu or 'an unnamed GPU'}"
    if str(record.environment.get("nccl")) != calibration.nccl:
        return f"NCCL {record.environment.get('nccl')}: the calibration and rules are NCCL {calibration.nccl}'s"
    unmodelled = _unmodelled_variables(run)
    if unmodelled:
        return f"sets {', '.join(unmodelled)}, which the rules do not model"
    if _split_visibility(run):
        return "ranks split over CUDA_VISIBLE_DEVICES on one host (each process sees one GPU): no node layout the rules model"
    if record.environment.get("sampling_mode") != "process":
        return f"sampling {record.environment.get('sampling_mode')}: the calibration is per-process NVML"
    return ""


def _unmodelled_variables(run: Run) -> list[str]:
    """NCCL variables of the run's environment that the rules neither read nor know to be neutral (``NCCL_HOSTID``
    and ``NCCL_NET`` name the nodes and the network: :func:`recorded_network`)."""
    known = (*nccl.MODELLED_VARIABLES, *nccl.NEUTRAL_VARIABLES, "NCCL_HOSTID", "NCCL_NET")
    variables = run.record.environment.get("nccl_env") or {}
    return sorted(key for key in variables if key.startswith("NCCL_") and key not in known)


def _split_visibility(run: Run) -> bool:
    """Two ranks of one host on the same CUDA device index: each process was shown a GPU of its own."""
    seen = [(info.host, info.device) for info in run.record.ranks]
    return len(set(seen)) < len(seen) or int(run.record.environment.get("gpu_count") or 0) < len(seen) // max(
        1, len({info.host for info in run.record.ranks}))


def _added(readings: list[Reading]) -> dict[tuple[int, str, str], int]:
    added: dict[tuple[int, str, str], int] = {}
    previous: dict[int, int] = {}
    for reading in sorted(readings, key=lambda r: (r.rank, r.sequence)):
        value = reading.primary_bytes if reading.primary_bytes is not None else previous.get(reading.rank, 0)
        added[(reading.rank, reading.group, reading.step)] = value - previous.get(reading.rank, 0)
        previous[reading.rank] = value
    return added


def _totals(readings: list[Reading]) -> dict[tuple[int, str], int]:
    """Per rank, the reading before the first ``first_use`` (after init) and the ``end`` reading."""
    totals: dict[tuple[int, str], int] = {}
    last: dict[int, int] = {}
    for reading in sorted(readings, key=lambda r: (r.rank, r.sequence)):
        if reading.step == FIRST_USE and (reading.rank, "after init") not in totals:
            totals[(reading.rank, "after init")] = last.get(reading.rank, 0)
        if reading.step == END:
            totals[(reading.rank, "after first use")] = reading.primary_bytes or 0
        if reading.primary_bytes is not None:
            last[reading.rank] = reading.primary_bytes
    return totals


def _compare(measured: list[Reading], estimated: list[Reading]) -> tuple[list[StepError], list[TotalError]]:
    got, want = _added(measured), _added(estimated)
    keys = list(dict.fromkeys((group, step) for (_, group, step) in [*got, *want]))
    steps = []
    for group, step in keys:
        m = {rank: value for (rank, g, s), value in got.items() if (g, s) == (group, step)}
        e = {rank: value for (rank, g, s), value in want.items() if (g, s) == (group, step)}
        if any(m.values()) or any(e.values()):
            steps.append(StepError(group=group, step=step, measured=m, estimated=e))
    measured_totals, estimated_totals = _totals(measured), _totals(estimated)
    totals = [TotalError(rank=rank, what=what, measured=value, estimated=estimated_totals.get((rank, what), 0))
              for (rank, what), value in sorted(measured_totals.items())]
    return steps, totals
