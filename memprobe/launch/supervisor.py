"""Start the workers with torchrun, show progress, enforce the timeout, and collect a run.

The parent never imports torch or touches CUDA: it builds the worker environment, starts
``python -m torch.distributed.run`` in its own session, follows the per-rank event streams
for progress and errors, and always cleans up every process it started (torchrun starts
workers in sessions of their own, so they are tracked by PID and by a per-run token).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from memprobe import __version__
from memprobe.measure import nvml
from memprobe.launch.options import LaunchOptions, nccl_log_environment, recorded_environment, worker_environment
from memprobe.model.timings import run_timings
from memprobe.errors import Interrupted, MeasurementError, UsageError
from memprobe.model.layout import plan_groups
from memprobe.model.records import (
    CONCURRENT_VARIABLE,
    NCCL_LOG_FOLDER,
    RUN_TOKEN_VARIABLE,
    WORKER_CONFIG,
    Failure,
    RankInfo,
    Run,
    RunRecord,
    atomic_write_text,
    load_stream,
    readings_from_csv,
    readings_to_csv,
    stream_path,
)
from memprobe.model.scenario import Scenario
from memprobe.model.steps import sequence

GPU_RELEASE_TIMEOUT_S = 15.0
KILL_GRACE_S = 5.0
# Collectives inside the workers time out this much later than --timeout, so that the parent, which
# sees every rank, names the silent one; the workers' own timeout only matters if the parent is gone.
WORKER_TIMEOUT_MARGIN_S = 60.0
CLEAN_EXIT_S = 30.0  # after every rank is done: how long torchrun may take to exit by itself


def expected_readings(scenario: Scenario) -> int:
    """Readings each rank takes (the progress total)."""
    return len(sequence(group.name for group in plan_groups(scenario.layout).built_groups()))


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as stream:
            return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port for torchrun's rendezvous store, preferably below the ephemeral range.

    A port from bind(0) lies in the ephemeral range, where any outgoing connection (NCCL,
    gloo, another run) may take it before torchrun binds it (EADDRINUSE, seen on a 4-GPU run).
    """
    import random

    low = _ephemeral_low()
    candidates = random.Random().sample(range(20000, low), min(32, max(0, low - 20000))) if low > 20000 else []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def visible_gpu_count(environment: dict[str, str]) -> tuple[int, str]:
    gpus = nvml.visible_gpus(environment)
    if not nvml.is_available(gpus):
        return 0, gpus.reason
    return len(gpus), ""


def preflight(scenarios: list[Scenario], options: LaunchOptions) -> None:
    """Everything that can be checked before a process starts (exit 2 on any problem)."""
    for scenario in scenarios:
        if scenario.engine == "sglang":  # each scenario may bring its own SGLang (issue 12)
            from memprobe.measure.sglang_install import check_site, sglang_installation

            if scenario.sglang:
                check_site(scenario.sglang, f"scenario {scenario.name}: sglang {scenario.sglang}")
            sglang_installation(worker_environment(scenario, options))
    for scenario in scenarios:
        if scenario.layout.world_size % options.nnodes:
            raise UsageError(f"scenario {scenario.name}: world size {scenario.layout.world_size} does not split over "
                             f"--nnodes {options.nnodes}")
    if options.device == "cpu":
        return
    environment = worker_environment(scenarios[0], options)
    count, reason = visible_gpu_count(environment)
    if count == 0:
        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); use --device cpu to run the pipeline without GPUs")
    for scenario in scenarios:
        needed = scenario.layout.world_size // options.nnodes
        if needed > count:
            tp = count
            suggestion = f"memprobe compare --tp {tp} --ep {max(1, tp // 2)}" if tp > 1 else "memprobe run --tp 1"
            raise UsageError(f"scenario {scenario.name} needs {needed} GPUs per node but this node has {count}; try: {suggestion}")


def new_run_dir(root: Path, name: str) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{stamp}-{name}"
    suffix = 2
    while candidate.exists():
        candidate = root / f"{stamp}-{name}-{suffix}"
        suffix += 1
    return candidate


# ------------------------------------------------------------------------------ processes

def _carries_token(pid: int, token: str) -> bool:
    """Whether process ``pid`` still carries this run's token (a PID may have been reused since it was read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as stream:
            return f"{RUN_TOKEN_VARIABLE}={token}".encode() in stream.read().split(b"\0")
    except OSError:
        return False


def _pids_with_token(token: str) -> list[int]:
    """Processes whose environment carries this run's token (workers live in their own sessions)."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and _carries_token(int(entry), token)]


def _signal(pid: int, number: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            return stream.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_everything(process: subprocess.Popen[bytes], token: str, worker_pids: set[int], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM torchrun's group and every worker; SIGKILL what is left after ``grace_s``."""
    pids = {pid for pid in worker_pids if _carries_token(pid, token)} | set(_pids_with_token(token))
    if process.poll() is None:
        _signal(process.pid, signal.SIGTERM, group=True)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if process.poll() is not None and not any(_alive(pid) for pid in pids):
            break
        time.sleep(0.05)
    if process.poll() is None:
        _signal(process.pid, signal.SIGKILL, group=True)
    for pid in {pid for pid in pids if _carries_token(pid, token)} | set(_pids_with_token(token)):
        _signal(pid, signal.SIGKILL)
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def wait_for_gpu_release(worker_pids: set[int], environment: dict[str, str], timeout_s: float = GPU_RELEASE_TIMEOUT_S) -> float:
    """Wait until NVML lists none of ``worker_pids`` on the visible GPUs; returns the seconds waited.

    A killed worker has exited before the driver has torn its CUDA context down; on 2 x H200 a
    ``nvidia-smi`` right after a run still listed one (results/sglang-fidelity-20261127/x2). Waiting here
    means memprobe returns with the GPUs free, and a run straight after it sees no stranger's memory.
    PIDs NVML cannot see (another PID namespace) end the wait at once.
    """
    started = time.monotonic()
    gpus = nvml.visible_gpus(environment)
    if not worker_pids or not nvml.is_available(gpus):
        return 0.0
    handles = [nvml.handle_by_uuid(gpu.uuid) for gpu in gpus]
    while time.monotonic() - started < timeout_s:
        listed: set[int] = set()
        for handle in handles:
            processes = nvml.process_memory(handle) if nvml.is_available(handle) else handle
            if nvml.is_available(processes):
                listed.update(processes)
        if not listed & worker_pids:
            break
        time.sleep(0.05)
    return round(time.monotonic() - started, 3)


# ------------------------------------------------------------------------------- progress

def _where(event: dict[str, Any]) -> str:
    return f"{event['group']}/{event['step']}" if event.get("group") else str(event.get("step", ""))


class StreamFollower:
    """Reads each rank's event stream incrementally."""

    def __init__(self, run_dir: Path, ranks: range, per_node: int | None = None) -> None:
        """``per_node`` set: torchrun's dynamic rendezvous picks this node's rank, so ``ranks`` is the whole world
        until the first worker's ``started`` event tells which block of ``per_node`` ranks is local."""
        self.per_node = per_node
        self.known = per_node is None  # whether the local ranks are known
        self.paths = {rank: stream_path(run_dir, rank) for rank in ranks}
        self.offsets = {rank: 0 for rank in ranks}
        self.readings = {rank: 0 for rank in ranks}
        self.last_step = {rank: "" for rank in ranks}
        self.pids: set[int] = set()
        self.errors: list[dict[str, Any]] = []
        self.done: set[int] = set()
        self.started: set[int] = set()
        self.arrived: dict[int, str] = {}  # rank -> the step it finished, waiting for the other ranks there
        self.last_progress = {rank: time.monotonic() for rank in ranks}  # launch, then each new reading
        self.results_at: dict[str, Any] | None = None  # where node 0 keeps the gathered results

    def poll(self) -> None:
        for rank, path in self.paths.items():
            try:
                with open(path, "rb") as stream:
                    stream.seek(self.offsets[rank])
                    data = stream.read()
            except FileNotFoundError:
                continue
            complete = data.rfind(b"\n") + 1
            self.offsets[rank] += complete
            for line in data[:complete].splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = event.get("type")
                if kind == "started":
                    self.pids.add(int(event["pid"]))
                    self.started.add(rank)
                elif kind == "reading":
                    self.readings[rank] += 1
                    self.last_progress[rank] = time.monotonic()
                    self.arrived.pop(rank, None)
                    self.last_step[rank] = _where(event)
                elif kind == "arrived":
                    self.arrived[rank] = _where(event)
                elif kind == "error":
                    self.errors.append(event)
                elif kind == "done":
                    self.done.add(rank)
                    self.results_at = event.get("results_at") or self.results_at
        if not self.known and self.started:
            self._narrow(min(self.started) // self.per_node)

    def _narrow(self, node: int) -> None:
        local = range(node * self.per_node, (node + 1) * self.per_node)
        for table in (self.paths, self.offsets, self.readings, self.last_step, self.last_progress):
            for rank in [r for r in table if r not in local]:
                del table[rank]
        self.known = True

    @property
    def finished_locally(self) -> bool:
        return self.known and self.done >= set(self.paths)

    def slowest(self) -> tuple[int, int, str]:
        rank = min(self.readings, key=lambda r: (self.readings[r], r))
        return rank, self.readings[rank], self.last_step[rank]


ProgressCallback = Callable[[str, int, int, str], None]  # (label, done, total, detail)


# ------------------------------------------------------------------------------------ run

def _launch_command(run_dir: Path, scenario: Scenario, options: LaunchOptions, port: int, log_dir: str) -> list[str]:
    """torchrun's command line: a static rendezvous (--master-addr/--master-port) or a dynamic one (--rdzv-*).

    ``--log-dir`` points torchrun at a folder memprobe removes afterwards (torch 2.x otherwise
    leaves a ``/tmp/torchelastic_*`` folder behind after every run).
    """
    per_node = scenario.layout.world_size // options.nnodes
    if options.rdzv_endpoint:
        rendezvous = ["--rdzv-backend", options.rdzv_backend, "--rdzv-endpoint", options.rdzv_endpoint,
                      "--rdzv-id", f"{options.rdzv_id or 'memprobe'}-{scenario.name}"]  # one rendezvous per scenario
    else:
        rendezvous = ["--node-rank", str(options.node_rank), "--master-addr", options.master_addr, "--master-port", str(port)]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(options.nnodes), *rendezvous, "--nproc-per-node", str(per_node),
        "--max-restarts", "0", "--monitor-interval", "0.1", "--log-dir", log_dir,
        "-m", "memprobe.measure.worker", str(run_dir),
    ]


def _environment_summary(environment: dict[str, str], infos: list[RankInfo], device: str, world_size: int) -> dict[str, Any]:
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


def _rank_infos(run_dir: Path, world_size: int) -> list[RankInfo]:
    ranks_file = run_dir / "ranks.json"
    if ranks_file.is_file():
        try:
            return [RankInfo(**item) for item in json.loads(ranks_file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError):
            pass
    infos = []
    for rank in range(world_size):
        events, _ = load_stream(stream_path(run_dir, rank))
        info_events = [e for e in events if e.get("type") == "info"]
        if info_events:
            data = {k: v for k, v in info_events[-1].items() if k not in ("type", "time")}
            infos.append(RankInfo(**data))
    return infos


def _tail(path: Path, lines: int = 12) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# A rank whose peer died reports these; the rank that died first is the cause, not them.
_PEER_LOSS_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
                      "remote process exited", "socket closed")


def _torchrun_root_cause(log_path: Path) -> tuple[int, str] | None:
    """The rank torchrun names under "Root Cause (first observed failure)", with its exit code text."""
    import re

    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    section = text.rsplit("Root Cause (first observed failure)", 1)
    if len(section) != 2:
        return None
    rank = re.search(r"rank\s*:\s*(\d+)", section[1])
    exit_code = re.search(r"exitcode\s*:\s*([^\n]+)", section[1])
    if rank is None:
        return None
    return int(rank.group(1)), (" ".join(exit_code.group(1).split()) if exit_code else "unknown")


def _root_cause(follower: StreamFollower, local_ranks: range, return_code: int | None, log_path: Path) -> Failure:
    """Blame the rank that failed first on its own: an error that is not a lost peer, else a rank that went silent."""

    def from_error(event: dict[str, Any]) -> Failure:
        return Failure(rank=event.get("rank"), group=event.get("group", ""), step=event.get("step", ""),
                       message=event.get("message", "error"), last_lines=event.get("traceback", [])[-12:])

    def went_silent(rank: int, never_started: str, how: str) -> Failure:
        last = follower.last_step.get(rank, "")
        return Failure(rank=rank, group="", step="",
                       message=(f"exited without reporting an error after its {last} reading " if last else never_started) + how,
                       last_lines=_tail(log_path))

    errors = sorted(follower.errors, key=lambda e: e.get("time", 0))
    own = [e for e in errors if not any(m in str(e.get("message", "")).lower() for m in _PEER_LOSS_MARKERS)]
    if own:
        return from_error(own[0])
    cause = _torchrun_root_cause(log_path)
    if cause is not None and cause[0] not in follower.done:
        return went_silent(cause[0], "never started ", f"(torchrun: exit code {cause[1]})")
    reported = {e.get("rank") for e in errors}
    silent = [rank for rank in local_ranks if rank not in follower.done and rank not in reported]
    if silent:
        return went_silent(silent[0], "never started (see torchrun.log) ",
                           f"(killed or crashed; torchrun exit code {return_code})")
    if errors:  # every error is a lost peer: the rank that failed first is on another node
        lost = from_error(errors[0])
        lost.message += " (it lost a peer: the rank that failed first is elsewhere, e.g. on another node; see its output)"
        return lost
    return Failure(rank=None, group="", step="", message=f"torchrun exited with code {return_code}", last_lines=_tail(log_path))


class StopFlag(threading.Event):
    """Set from the main thread to stop runs going on in other threads (signals reach the main thread only)."""

    signal_number: int = signal.SIGINT

    def stop(self, signal_number: int) -> None:
        self.signal_number = signal_number
        self.set()


@dataclass
class Outcome:
    """How the processes of one launch ended (the supervisor's answer; it knows nothing of reports)."""

    follower: StreamFollower
    return_code: int | None = None
    failure: Failure | None = None
    interrupted: BaseException | None = None
    all_done: bool = False
    launched_at: float = 0.0  # time.time(), the clock the workers stamp their events with
    exited_at: float = 0.0
    workers_exited_at: float | None = None
    gpu_release_s: float | None = None


def _silence_failure(follower: StreamFollower, now: float, timeout_s: float, log_path: Path) -> Failure | None:
    """The local rank silent longest, if it went ``timeout_s`` without a new reading (counted from launch)."""
    waiting = [rank for rank in follower.paths if rank not in follower.done]
    if not waiting:
        return None
    if max(now - follower.last_progress[r] for r in waiting) <= timeout_s:
        return None
    # a rank that arrived at the next step waits for its peers there; blame one that did not arrive
    rank = max(waiting, key=lambda r: (r not in follower.arrived, now - follower.last_progress[r], -r))
    silent = now - follower.last_progress[rank]
    if rank not in follower.started:
        what = f"never started: no sign of it {silent:.0f} s after launch"
    elif not follower.last_step[rank]:
        what = f"started but took no reading in {silent:.0f} s"
    elif rank in follower.arrived:
        what = (f"stopped progressing after its {follower.last_step[rank]} reading: silent for {silent:.0f} s, "
                f"waiting at {follower.arrived[rank]} for the other ranks (on another node?)")
    else:
        what = f"stopped progressing after its {follower.last_step[rank]} reading: silent for {silent:.0f} s"
    return Failure(rank=rank, group="", step="", message=f"{what} (--timeout {timeout_s:g} s)", last_lines=_tail(log_path))


def _follow(process: subprocess.Popen[bytes], outcome: Outcome, options: LaunchOptions, finished: Callable[[], bool],
            report: Callable[[], None], stop: StopFlag | None, log_path: Path) -> None:
    """Follow the streams until every local rank is done, one fails, torchrun exits, or a rank goes silent."""
    follower = outcome.follower
    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt(stop.signal_number)
        follower.poll()
        report()
        if follower.errors:
            time.sleep(0.5)  # let the other ranks report too, then stop them
            follower.poll()
            return
        if process.poll() is not None:
            follower.poll()
            outcome.all_done = finished()
            return
        if finished():
            outcome.all_done = True
            return
        outcome.failure = _silence_failure(follower, time.monotonic(), options.timeout_s, log_path)
        if outcome.failure is not None:
            return
        time.sleep(0.1)


def _wait_for_own_exit(process: subprocess.Popen[bytes], outcome: Outcome, timeout_s: float = CLEAN_EXIT_S) -> None:
    """After every rank is done, workers and torchrun exit by themselves (torchrun exit 0, exit handlers run);
    notes when the last worker is gone (the timings tell the workers' exit from torchrun's)."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if outcome.workers_exited_at is None and not any(_alive(pid) for pid in outcome.follower.pids):
            outcome.workers_exited_at = time.time()
        time.sleep(0.02)
    if outcome.workers_exited_at is None:
        outcome.workers_exited_at = time.time()


def supervise(launch: list[str], environment: dict[str, str], token: str, follower: StreamFollower,
              options: LaunchOptions, log_path: Path, finished: Callable[[], bool], report: Callable[[], None],
              stop: StopFlag | None = None) -> Outcome:
    """Start torchrun, follow it, time out silent ranks, and make sure every process is gone at the end."""
    outcome = Outcome(follower=follower)
    with open(log_path, "ab") as log:
        outcome.launched_at = time.time()
        process = subprocess.Popen(launch, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            _follow(process, outcome, options, finished, report, stop, log_path)
            if outcome.all_done and outcome.failure is None:
                _wait_for_own_exit(process, outcome)
        except KeyboardInterrupt as error:  # SIGINT, or SIGTERM turned into one by interrupt_handlers()
            outcome.interrupted = error
            outcome.failure = Failure(rank=None, group="", step="", message="interrupted; workers stopped")
        finally:
            stop_everything(process, token, follower.pids)  # returns at once when everything already exited
            outcome.exited_at = time.time()
            follower.poll()
            if options.device == "cuda":
                outcome.gpu_release_s = wait_for_gpu_release(follower.pids, environment)
    outcome.return_code = process.returncode
    return outcome


def _new_record(scenario: Scenario, options: LaunchOptions, run_dir: Path, command: list[str] | None) -> RunRecord:
    stack = scenario.resolved_stack
    plan = plan_groups(scenario.layout)
    return RunRecord(
        run_id=run_dir.name,
        layout=scenario.layout.as_dict(),
        world_size=scenario.layout.world_size,
        stack=stack.as_dict(),
        device=options.device,
        warmup=scenario.warmup,
        env_preset=scenario.env_preset,
        env=dict(scenario.env),
        plan=[{"name": g.name, "ranks": [list(r) for r in g.rank_lists], "alias_of": g.alias_of,
               "communicators": stack.communicators_for(g)} for g in plan.groups],
        scenario=scenario.name,
        engine=scenario.engine,
        definition=scenario.definition(),
        memprobe_version=__version__,
        created_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=list(command or sys.argv),
    )


def _write_worker_config(scenario: Scenario, options: LaunchOptions, run_dir: Path) -> None:
    worker_config = {
        "layout": scenario.layout.as_dict(), "stack": scenario.resolved_stack.as_dict(), "device": options.device,
        "warmup": scenario.warmup, "timeout_s": options.timeout_s + WORKER_TIMEOUT_MARGIN_S, "allow_busy_gpu": options.allow_busy_gpu,
        "engine": scenario.engine,
    }
    atomic_write_text(run_dir / WORKER_CONFIG, json.dumps(worker_config, indent=2, sort_keys=True) + "\n")


def local_ranks(scenario: Scenario, options: LaunchOptions) -> range:
    per_node = scenario.layout.world_size // options.nnodes
    return range(options.node_rank * per_node, (options.node_rank + 1) * per_node)


def _launch_once(scenario: Scenario, options: LaunchOptions, run_dir: Path, environment: dict[str, str], token: str,
                 progress: ProgressCallback | None, stop: StopFlag | None) -> Outcome:
    """One torchrun launch, with up to two more when a static rendezvous port was taken before torchrun bound it."""
    total = expected_readings(scenario)
    dynamic = options.rdzv_endpoint is not None and options.nnodes > 1
    per_node = scenario.layout.world_size // options.nnodes
    ranks = range(scenario.layout.world_size) if dynamic else local_ranks(scenario, options)
    log_path = run_dir / "torchrun.log"
    attempts = 1 if options.master_port or options.rdzv_endpoint else 3
    for attempt in range(attempts):
        port = options.master_port or free_port(options.master_addr if options.master_addr != "localhost" else "127.0.0.1")
        follower = StreamFollower(run_dir, ranks, per_node if dynamic else None)

        def finished() -> bool:  # node 0's rank 0 writes readings.csv before it reports done
            return follower.finished_locally

        def report() -> None:
            if progress is not None:
                rank, done, detail = follower.slowest()
                progress(scenario.name, done, total, f"rank {rank}: {detail}" if detail else "starting")

        log_dir = tempfile.mkdtemp(prefix="memprobe-torchrun-")  # torchrun's own log folder, removed below
        try:
            outcome = supervise(_launch_command(run_dir, scenario, options, port, log_dir), environment, token,
                                follower, options, log_path, finished, report, stop)
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)
        port_taken = b"EADDRINUSE" in log_path.read_bytes()
        if attempt + 1 < attempts and not follower.pids and port_taken and outcome.interrupted is None and outcome.failure is None:
            continue  # something took the rendezvous port between our probe and torchrun's bind: new port
        return outcome
    raise AssertionError("unreachable")


def run_scenario(scenario: Scenario, options: LaunchOptions, run_dir: Path,
                 progress: ProgressCallback | None = None, command: list[str] | None = None,
                 stop: StopFlag | None = None, concurrent_token: str | None = None) -> Run:
    """Launch one scenario into ``run_dir`` (created here) and return the complete run.

    Raises :class:`MeasurementError` when a rank fails, goes silent past ``options.timeout_s`` or
    the launch breaks; ``run.json`` (status ``incomplete``) and every finished reading are kept.
    """
    run_dir.mkdir(parents=True, exist_ok=False)
    environment = worker_environment(scenario, options)
    if options.nccl_log:  # NCCL's own account of every communicator (issue 14)
        (run_dir / NCCL_LOG_FOLDER).mkdir()
        environment.update(nccl_log_environment(run_dir))
    token = uuid.uuid4().hex
    environment[RUN_TOKEN_VARIABLE] = token
    if concurrent_token:
        environment[CONCURRENT_VARIABLE] = concurrent_token
    record = _new_record(scenario, options, run_dir, command)
    atomic_write_text(run_dir / "run.json", record.to_json())
    _write_worker_config(scenario, options, run_dir)
    outcome = _launch_once(scenario, options, run_dir, environment, token, progress, stop)
    return _assemble(scenario, options, run_dir, record, environment, outcome)


def _assemble(scenario: Scenario, options: LaunchOptions, run_dir: Path, record: RunRecord,
              environment: dict[str, str], outcome: Outcome) -> Run:
    """The run's record and status from what the processes left on disk; raises on failure or interrupt."""
    follower, world_size = outcome.follower, scenario.layout.world_size
    log_path = run_dir / "torchrun.log"
    holds_rank_0 = 0 in follower.paths  # this node's rank 0 gathered every reading
    record.gpu_release_s = outcome.gpu_release_s
    record.wall_time_s = round(outcome.exited_at - outcome.launched_at + (outcome.gpu_release_s or 0.0), 3)
    events = {rank: load_stream(stream_path(run_dir, rank))[0] for rank in follower.paths}
    record.timings = run_timings(events, outcome.launched_at, outcome.workers_exited_at, outcome.exited_at,
                                 outcome.gpu_release_s)
    record.ranks = sorted(_rank_infos(run_dir, world_size), key=lambda info: info.rank)
    record.environment = _environment_summary(environment, record.ranks, options.device, world_size)
    if scenario.engine == "sglang":
        from memprobe.measure.sglang_install import sglang_installation

        record.environment["sglang"] = sglang_installation(environment).as_record()
    readings_path = run_dir / "readings.csv"
    complete = (outcome.failure is None and not follower.errors and (outcome.return_code == 0 or outcome.all_done)
                and (readings_path.is_file() or not holds_rank_0))
    if complete and holds_rank_0:
        readings = readings_from_csv(readings_path.read_text(encoding="utf-8"), str(readings_path))
    else:  # what this node's ranks streamed (another node holds the gathered readings)
        readings = [reading for rank in range(world_size) for reading in load_stream(stream_path(run_dir, rank))[1]]
        atomic_write_text(readings_path, readings_to_csv(readings))
    record.status = "complete" if complete else "incomplete"
    if complete and not holds_rank_0:
        record.results_at = follower.results_at
    if not complete:
        record.failure = outcome.failure or _root_cause(follower, follower.paths.keys(), outcome.return_code, log_path)
    atomic_write_text(run_dir / "run.json", record.to_json())
    run = Run(record=record, readings=readings, path=run_dir)
    if outcome.interrupted is not None:
        interrupted = outcome.interrupted
        number = interrupted.args[0] if interrupted.args and isinstance(interrupted.args[0], int) else signal.SIGINT
        raise Interrupted(number, str(run_dir))
    if not complete:
        raise MeasurementError(f"{scenario.name}: {record.failure.describe() if record.failure else 'failed'}; "
                               f"readings kept in {run_dir}", run_dir=str(run_dir))
    return run


def interrupt_handlers() -> Callable[[], None]:
    """Turn SIGTERM into an exception like SIGINT's, so cleanup runs; returns a restore function."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(number: int, frame: Any) -> None:
        raise KeyboardInterrupt(number)

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)


__all__ = ["run_scenario", "preflight", "new_run_dir", "expected_readings", "interrupt_handlers"]
