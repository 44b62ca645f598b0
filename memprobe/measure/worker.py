"""What torchrun starts once per rank: ``python -m memprobe.measure.worker LAUNCH_FILE``.

One torchrun launch measures every scenario of a comparison. The process torchrun
starts for a rank (the *launcher*) imports torch once, without touching CUDA, then forks one
*measuring process* per scenario: side by side (up to ``jobs`` at once) or in turn. Each
measuring process has its own PID and its own CUDA context, applies its scenario's environment
(NCCL settings are read when NCCL starts, after the fork), and rendezvouses under its
scenario's own keys (:mod:`memprobe.measure.rendezvous`); so its per-process readings are
those of a launch of its own, without paying for torchrun and ``import torch`` again.

Events go to ``RUN_DIR/ranks/rank-NNNNN.jsonl`` of each scenario as they happen: the launcher's
``launched``, ``imported``, ``forked`` and ``exited`` (the measuring process's PID and exit code),
and the measuring process's ``started`` and every reading, so nothing finished is lost if the run dies. Rank 0 of each scenario finally gathers
its readings over gloo and writes ``readings.csv`` and ``ranks.json``.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memprobe.model.events import (
    Done, ErrorReported, Exited, Forked, InfoReported, Launched, MeasuringProcess, PhaseName, PhaseReached, ResultsLocation, Started,
    WorkerEvent,
)
from memprobe.model.launch_files import LaunchFile, LaunchScenario, WorkerConfig
from memprobe.model.records import TORCHRUN_PID_VARIABLE, WORKERS_LOG, WORKER_CONFIG, stack_path, stream_path

FRESH = "--fresh-interpreter"


class EventStream:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8")

    def __call__(self, event: WorkerEvent) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.close()


class SilenceWatch:
    """The measuring process's event stream, which also leaves the process's Python stacks in
    :func:`stack_path` when no event followed the last one for ``after_s`` (shortly before the parent's
    ``--timeout`` stops the rank as silent), so that the parent's message names the call it was stuck in.

    faulthandler's own C thread writes the stacks: it works while the main thread is blocked in C (a rendezvous,
    a socket, NCCL) or spins in Python. It is armed only here, never in the launcher, which must stay
    single-threaded to fork."""

    def __init__(self, stream: EventStream, path: Path, after_s: float) -> None:
        self.stream = stream
        self.path = path
        self.after_s = after_s
        self.file = open(path, "w", encoding="utf-8")
        self._arm()

    def _arm(self) -> None:
        faulthandler.dump_traceback_later(self.after_s, repeat=False, file=self.file, exit=False)

    def __call__(self, event: WorkerEvent) -> None:
        self.stream(event)
        self._arm()

    def close(self, keep: bool = True) -> None:
        """Disarm; a process that never went silent, or that finished well after all, leaves no stack file."""
        faulthandler.cancel_dump_traceback_later()
        self.file.close()
        if not keep or self.path.stat().st_size == 0:
            self.path.unlink()


def silence_watch_after(worker_timeout_s: float) -> float:
    """When a silent rank's stacks are written: at 90 % of the parent's ``--timeout`` (the workers' collective
    timeout is that plus the launch's margin), before the parent stops it."""
    from memprobe.launch.prepare import WORKER_TIMEOUT_MARGIN_S

    return max(0.1, 0.9 * (worker_timeout_s - WORKER_TIMEOUT_MARGIN_S))


def _die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _ranks() -> tuple[int, int, int, int]:
    return (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("GROUP_RANK", "0")))


# ---------------------------------------------------------------------------- launcher

class Launcher:
    """Forks the measuring processes of one rank and passes a stop signal on to them.

    It exits 0 once every measuring process ended, whatever their exit codes (each is written into its
    scenario's stream as ``exited``): a non-zero exit would make torchrun stop the other ranks' launchers,
    and with them the scenarios still running beside a failed one. Only a stop signal makes it exit non-zero.
    """

    def __init__(self, launch: LaunchFile, launch_file: Path, rank: int, fork_safe: bool) -> None:
        self.launch_file = launch_file
        self.rank = rank
        self.fork_safe = fork_safe  # no thread besides this one: otherwise each child execs a fresh interpreter
        self.entries = list(launch.scenarios)
        self.jobs = launch.jobs
        self.running: dict[int, LaunchScenario] = {}  # pid -> its scenario's entry
        self.stopping = 0

    def on_signal(self, number: int, frame: Any) -> None:
        self.stopping = self.stopping or number
        for pid in list(self.running):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def _fork(self, entry: LaunchScenario) -> None:
        """Signals are blocked around the fork, so none is lost between fork() and ``running``, and the child
        never runs the launcher's handler (it resets its own before unblocking)."""
        launcher = os.getpid()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            pid = os.fork()
            if pid == 0:
                process = MeasuringProcess.FORKED if self.fork_safe else MeasuringProcess.FRESH_EXEC
                os._exit(_measuring_process(entry, self.launch_file, process, launcher, unblock=blocked))
            self.running[pid] = entry
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _announce(Path(entry.run_dir), self.rank, Forked(pid=pid))

    def run(self) -> int:
        """Every scenario's measuring process, ``jobs`` at a time."""
        queue = list(self.entries)
        while queue or self.running:
            while queue and len(self.running) < self.jobs and not self.stopping:
                self._fork(queue.pop(0))
            if self.stopping:
                queue.clear()
            if not self.running:
                break
            pid, status = os.wait()
            entry = self.running.pop(pid, None)
            if entry is not None:
                _announce(Path(entry.run_dir), self.rank, Exited(pid=pid, code=os.waitstatus_to_exitcode(status)))
        return 128 + self.stopping if self.stopping else 0


def main(argv: list[str]) -> int:
    launch_file = Path(argv[1])
    launch = LaunchFile.from_json(launch_file.read_text(encoding="utf-8"))
    if argv[2:3] == [FRESH]:  # a measuring process that had to leave its fork for a fresh interpreter
        return _measuring_process(launch.scenario(argv[3]), launch_file, MeasuringProcess.FRESH, os.getppid())
    rank, local_rank, _, group_rank = _ranks()
    torchrun = os.environ.get(TORCHRUN_PID_VARIABLE, "")
    _die_with_parent(int(torchrun) if torchrun.isdigit() else None)  # torchrun's agent
    launched = Launched(rank=rank, local_rank=local_rank, pid=os.getpid(), group_rank=group_rank)
    for entry in launch.scenarios:
        _announce(Path(entry.run_dir), rank, launched)
    import torch  # noqa: F401  (once for every scenario; CUDA stays untouched until a measuring process starts)

    import memprobe.measure.recorder  # noqa: F401
    import memprobe.measure.rendezvous  # noqa: F401

    # fork() copies only the calling thread: a launcher with no other thread forks safely (the count is kept)
    imported = PhaseReached(name=PhaseName.IMPORTED, threads=len(os.listdir("/proc/self/task")))
    for entry in launch.scenarios:
        _announce(Path(entry.run_dir), rank, imported)
    if len(launch.scenarios) == 1:  # `memprobe run`: nothing to share, so no fork (and no fork poison)
        code = _measuring_process(launch.scenarios[0], launch_file, MeasuringProcess.LAUNCHER, os.getppid())
    else:
        launcher = Launcher(launch, launch_file, rank, fork_safe=imported.threads == 1)
        signal.signal(signal.SIGTERM, launcher.on_signal)
        signal.signal(signal.SIGINT, launcher.on_signal)
        code = launcher.run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # nothing to finalise here; skipping interpreter shutdown saves ~0.6 s per launch


def _announce(run_dir: Path, rank: int, event: WorkerEvent) -> None:
    stream = EventStream(stream_path(run_dir, rank))
    stream(event)
    stream.close()  # closed before any fork: a measuring process opens its own


# --------------------------------------------------------------------- measuring process

def _in_bad_fork() -> bool:
    """Whether CUDA was started in the launcher before the fork, which leaves it unusable here (torch's fork poison).

    Seen on 2 x H200 with the offline SGLang sites of tools/sglang_offline: their sitecustomize.py imports SGLang
    at interpreter start, and SGLang asks torch.cuda about the device when imported. ``MEMPROBE_TEST_BAD_FORK=1``
    takes this path on CPU (tests).
    """
    if os.environ.get("MEMPROBE_TEST_BAD_FORK") == "1":
        return True
    import torch

    return bool(getattr(torch.cuda, "_is_in_bad_fork", lambda: False)())


def _measuring_process(entry: LaunchScenario, launch_file: Path, process: MeasuringProcess, parent: int,
                       unblock: Any = None) -> int:
    """One scenario on this rank, in a ``forked`` child of the launcher, in the ``launcher`` itself (a launch of one
    scenario), or in the ``fresh`` interpreter a forked child became (``fresh-exec``: a child that must become one,
    its launcher having had other threads). Returns the exit code, never raises."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if unblock is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblock)
        _die_with_parent(parent)
        os.environ.update(entry.env)  # the scenario's own variables (launch/plan.py)
        run_dir = Path(entry.run_dir)
        if process != MeasuringProcess.FRESH:  # a fresh interpreter keeps the output its fork was given
            log = os.open(run_dir / WORKERS_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            # a fresh interpreter (same PID, same variables): slower, but CUDA works there and no lock is held
            if process == MeasuringProcess.FRESH_EXEC or (process == MeasuringProcess.FORKED and _in_bad_fork()):
                os.environ.pop("MEMPROBE_TEST_BAD_FORK", None)
                os.execv(sys.executable, [sys.executable, "-u", "-m", "memprobe.measure.worker", str(launch_file),
                                          FRESH, entry.name])
        from memprobe.measure.rendezvous import use_scenario_store

        use_scenario_store(entry.name)
        code = measure(run_dir, process)
    except BaseException:  # anything before measure() could report it: torchrun sees the exit code
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _results_location(engine: Any, run_dir: Path) -> ResultsLocation:
    """Where rank 0 wrote the gathered results, told to every rank (a node other than 0 points there)."""
    import socket

    import torch.distributed as dist

    location = [ResultsLocation(host=socket.gethostname(), folder=str(run_dir.resolve()))]
    if dist.is_initialized() and engine.world_cpu_group is not None:
        dist.broadcast_object_list(location, src=0, group=engine.world_cpu_group)
    return location[0]


def _engine(config: WorkerConfig, emit: "EventStream | SilenceWatch") -> Any:
    """The recorder of this rank, with the builder of the scenario's engine and mode."""
    from memprobe import engines
    from memprobe.measure.recorder import Recorder

    rank, local_rank, world_size, _ = _ranks()
    return Recorder(
        engine=engines.get(config.engine), layout=config.layout, stack=config.stack, device=config.device, warmup=config.warmup,
        timeout_s=config.timeout_s, emit=emit, rank=rank, local_rank=local_rank, world_size=world_size,
        allow_busy_gpu=config.allow_busy_gpu,
    )


def measure(run_dir: Path, process: MeasuringProcess = MeasuringProcess.LAUNCHER) -> int:
    """Measure the scenario of ``run_dir`` on this rank; the exit code (0, 1 on an error, 130 on an interrupt)."""
    rank, local_rank, _, group_rank = _ranks()
    config_path = run_dir / WORKER_CONFIG
    config = WorkerConfig.from_json(config_path.read_text(encoding="utf-8"), str(config_path))
    emit = SilenceWatch(EventStream(stream_path(run_dir, rank)), stack_path(run_dir, rank),
                        silence_watch_after(config.timeout_s))
    code = 1
    try:
        code = _measure(run_dir, process, config, emit)
        return code
    finally:
        emit.close(keep=code != 0)


def _measure(run_dir: Path, process: MeasuringProcess, config: WorkerConfig, emit: SilenceWatch) -> int:
    rank, local_rank, _, group_rank = _ranks()
    emit(Started(rank=rank, local_rank=local_rank, pid=os.getpid(), group_rank=group_rank, process=process))
    engine = _engine(config, emit)
    try:
        engine.run()
        emit(InfoReported(engine.info))
        gathered = engine.gather()
        if gathered is not None:
            from memprobe.model.records import atomic_write_text, readings_to_csv

            readings, infos = gathered
            atomic_write_text(run_dir / "ranks.json", json.dumps([asdict(info) for info in infos], indent=2, sort_keys=True) + "\n")
            atomic_write_text(run_dir / "readings.csv", readings_to_csv(readings))
        results_at = _results_location(engine, run_dir)
        emit(PhaseReached(name=PhaseName.GATHERED))
        engine.shutdown()
    except BaseException as error:  # report where it broke (stream and workers.log), then exit non-zero
        import traceback

        from memprobe.measure.recorder import format_exception

        traceback.print_exception(error)

        group, step = engine.current
        emit(InfoReported(engine.info))
        emit(ErrorReported(rank=rank, group=group, step=step,
                           message=f"{type(error).__name__}: {error}".splitlines()[0][:500],
                           traceback=tuple(format_exception(error))))
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    emit(Done(rank=rank, results_at=results_at))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
