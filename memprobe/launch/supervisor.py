"""One torchrun launch for a set of scenarios: start it, follow every scenario, time out silent ranks, end cleanly.

The parent never imports torch or touches CUDA. It writes ``launch.json`` (the scenarios, the
variables each adds, how many run at once), starts ``python -m torch.distributed.run`` in its
own session, and follows each scenario's per-rank event streams for progress and errors. torchrun
starts one launcher per rank, which forks a measuring process per scenario
(:mod:`memprobe.measure.worker`); a scenario that fails or goes silent has its own processes
stopped while the others go on. Every process the launch started is gone at the end: they all
carry the launch's token (:mod:`memprobe.launch.processes`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from memprobe.errors import MeasurementError, OutputError
from memprobe.launch.assemble import LaunchOutcome, Tracked, assemble, raise_if_interrupted
from memprobe.launch.follow import StreamFollower, rendezvous_port_taken, silence_failure
from memprobe.launch.interrupts import INTERRUPTS
from memprobe.launch.options import LaunchOptions
from memprobe.launch.plan import Member, PlannedLaunch
from memprobe.launch.prepare import expected_readings, local_ranks, new_record, write_worker_config
from memprobe.launch.processes import (
    KILL_GRACE_S, alive, free_port, signal_own, stop_everything, wait_for_gpu_release,
)
from memprobe.model.launch_files import LaunchFile, LaunchScenario
from memprobe.model.records import (
    CONCURRENT_VARIABLE, Failure, LaunchInfo, NCCL_LOG_FOLDER, RUN_TOKEN_VARIABLE, WORKERS_LOG, Run, ScenarioStatus, atomic_write_text,
    launch_paths,
)

CLEAN_EXIT_S = 30.0  # after every scenario ended: how long torchrun may take to exit by itself
ERROR_GRACE_S = 0.5  # after a rank's error: how long the scenario's other ranks get to report theirs

ProgressCallback = Callable[[str, int, int, str], None]  # (label, done, total, detail)




class StopFlag(threading.Event):
    """Set from the main thread to stop a launch going on in another thread (signals reach the main thread only)."""

    signal_number: int = signal.SIGINT

    def stop(self, signal_number: int) -> None:
        self.signal_number = signal_number
        self.set()


def launch_command(launch_file: Path, name: str, per_node: int, options: LaunchOptions, port: int, log_dir: str) -> list[str]:
    """torchrun's command line: a static rendezvous (--master-addr/--master-port) or a dynamic one (--rdzv-*).

    ``--log-dir`` points torchrun at a folder memprobe removes afterwards (torch 2.x otherwise
    leaves a ``/tmp/torchelastic_*`` folder behind after every run); :mod:`memprobe.launch.guard` removes
    it too when memprobe is gone.
    """
    if options.rdzv_endpoint:
        rendezvous = ["--rdzv-backend", options.rdzv_backend, "--rdzv-endpoint", options.rdzv_endpoint,
                      "--rdzv-id", f"{options.rdzv_id or 'memprobe'}-{name}"]  # one rendezvous per launch
        if options.rdzv_backend == "static":  # a static rendezvous does not assign node ranks
            rendezvous += ["--node-rank", str(options.node_rank)]
    else:
        rendezvous = ["--node-rank", str(options.node_rank), "--master-addr", options.master_addr, "--master-port", str(port)]
    return [
        sys.executable, "-m", "memprobe.launch.guard", str(os.getpid()), log_dir,  # torchrun dies with memprobe
        "--nnodes", str(options.nnodes), *rendezvous, "--nproc-per-node", str(per_node),
        "--max-restarts", "0", "--monitor-interval", "0.1", "--log-dir", log_dir,
        "-m", "memprobe.measure.worker", str(launch_file.resolve()),
    ]


# ------------------------------------------------------------------------------ following

def _report(tracked: Tracked, progress: ProgressCallback | None) -> None:
    if progress is None:
        return
    if tracked.state == ScenarioStatus.WAITING:
        progress(tracked.member.scenario.name, 0, tracked.total, "waiting for its turn")
        return
    rank, done, detail = tracked.follower.slowest()
    progress(tracked.member.scenario.name, done, tracked.total, f"rank {rank}: {detail}" if detail else "starting")


def _stop(tracked: Tracked, token: str, now: float, launchers_too: bool) -> None:
    """A failed scenario: SIGTERM its processes (and any that start late), SIGKILL what is left after the grace.
    ``launchers_too``: no other scenario needs the launch's launchers any more (a rank that timed out before its
    measuring process started has only its launcher to stop)."""
    if tracked.kill_at is None:
        tracked.kill_at = now + KILL_GRACE_S
    number = signal.SIGKILL if now >= tracked.kill_at else signal.SIGTERM
    own = tracked.follower.pids | (tracked.follower.launcher_pids if launchers_too else set())
    living = {pid for pid in own - tracked.gone if alive(pid)}
    tracked.gone |= own - living  # once seen gone, never signalled again (a PID may be reused)
    signal_own(living, token, number)


def _check(tracked: Tracked, now: float, options: LaunchOptions, torchrun_log: Path) -> None:
    """A running scenario: done when every local rank is, failed on an error or a silent rank."""
    follower = tracked.follower
    if not tracked.member.run_dir.is_dir():  # deleted under it: its ranks' readings have nowhere to go
        tracked.state = ScenarioStatus.FAILED
    elif follower.errors or follower.crashed:
        if tracked.error_seen_at is None:
            tracked.error_seen_at = now  # let its other ranks report too, then stop them
        elif now - tracked.error_seen_at >= ERROR_GRACE_S:
            tracked.state = ScenarioStatus.FAILED
    elif follower.finished_locally:
        tracked.state = ScenarioStatus.DONE
    else:
        tracked.failure = silence_failure(follower, now, options.timeout_s, tracked.member.run_dir / WORKERS_LOG,
                                          torchrun_log)
        if tracked.failure is not None:
            tracked.state = ScenarioStatus.FAILED


def _turns(members: list[Tracked], jobs: int) -> None:
    """Start the clock of the scenarios whose turn came (the launchers fork them in the same order)."""
    running = sum(1 for tracked in members if tracked.state == ScenarioStatus.RUNNING)
    for tracked in members:
        if running >= jobs:
            return
        if tracked.state == ScenarioStatus.WAITING:
            tracked.state = ScenarioStatus.RUNNING
            tracked.follower.restart_clock()
            running += 1


def _fail_the_queue_if_never_launched(members: list[Tracked]) -> None:
    """A scenario that timed out because a rank's launcher never started takes the ones waiting for their turn
    with it: they would only wait the same --timeout again, each, for the same launcher."""
    for tracked in members:
        failure = tracked.failure
        if (tracked.state == ScenarioStatus.FAILED and failure is not None and failure.rank is not None
                and failure.rank not in tracked.follower.launched):
            for waiting in members:
                if waiting.state == ScenarioStatus.WAITING:
                    waiting.state = ScenarioStatus.FAILED
                    waiting.failure = Failure(rank=failure.rank, group="", step="",
                                              message=f"not run: {failure.describe()} (in {tracked.member.scenario.name}, "
                                                      "the same launch)")
            return


def _note_exits(members: list[Tracked], token: str) -> None:
    now = time.monotonic()
    all_ended = all(tracked.ended for tracked in members)
    for tracked in members:
        if tracked.state == ScenarioStatus.DONE and tracked.workers_exited_at is None:
            if not any(alive(pid) for pid in tracked.follower.pids):
                tracked.workers_exited_at = time.time()
        elif tracked.state == ScenarioStatus.FAILED:
            _stop(tracked, token, now, launchers_too=all_ended)


def _follow(process: subprocess.Popen[bytes], members: list[Tracked], options: LaunchOptions, jobs: int, token: str,
            torchrun_log: Path, progress: ProgressCallback | None, stop: StopFlag | None) -> None:
    """Follow every scenario until each has ended (done or failed) or torchrun exits."""
    _turns(members, jobs)
    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt(stop.signal_number)
        if INTERRUPTS.first is not None:
            raise INTERRUPTS.take()
        now = time.monotonic()
        for tracked in members:
            if tracked.state != ScenarioStatus.WAITING:
                tracked.follower.poll()
            _report(tracked, progress)
            if tracked.state == ScenarioStatus.RUNNING:
                _check(tracked, now, options, torchrun_log)
        _note_exits(members, token)
        _fail_the_queue_if_never_launched(members)
        _turns(members, jobs)
        if process.poll() is not None:
            for tracked in members:
                tracked.follower.poll()
                if not tracked.ended:
                    tracked.state = (ScenarioStatus.DONE if tracked.follower.finished_locally and not tracked.follower.errors
                                     else ScenarioStatus.FAILED)
            return
        if all(tracked.ended for tracked in members):
            return
        time.sleep(0.1)


def _wait_for_own_exit(process: subprocess.Popen[bytes], members: list[Tracked], token: str) -> None:
    """After every scenario ended, the launchers and torchrun exit by themselves (torchrun exit 0 when all went well);
    notes when each scenario's last measuring process is gone (the timings tell it from torchrun's exit)."""
    # everything done: torchrun's exit barrier and store may take a moment; something failed: what is left of it
    # is being stopped, and the rest is stop_everything's
    wait_s = CLEAN_EXIT_S if all(tracked.state == ScenarioStatus.DONE for tracked in members) else KILL_GRACE_S + 1.0
    deadline = time.monotonic() + wait_s
    while process.poll() is None and time.monotonic() < deadline:
        if INTERRUPTS.first is not None:
            raise INTERRUPTS.take()
        for tracked in members:  # processes that announced themselves since: a failed scenario's are stopped too
            tracked.follower.poll()
        _note_exits(members, token)
        time.sleep(0.02)
    _note_exits(members, token)
    for tracked in members:
        if tracked.state == ScenarioStatus.DONE and tracked.workers_exited_at is None:
            tracked.workers_exited_at = time.time()


def supervise(command: list[str], environment: dict[str, str], token: str, members: list[Tracked], options: LaunchOptions,
              jobs: int, torchrun_log: Path, progress: ProgressCallback | None = None,
              stop: StopFlag | None = None) -> LaunchOutcome:
    """Start torchrun, follow it, time out silent ranks, and make sure every process is gone at the end."""
    outcome = LaunchOutcome()
    with open(torchrun_log, "ab") as log:
        outcome.launched_at = time.time()
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        pids: set[int] = set()
        try:
            _follow(process, members, options, jobs, token, torchrun_log, progress, stop)
            _wait_for_own_exit(process, members, token)
        except KeyboardInterrupt as error:  # a stop signal (Interrupts), or one passed on through ``stop``
            outcome.interrupted = error
        finally:
            pids = set().union(*(tracked.follower.pids | tracked.follower.launcher_pids for tracked in members))
            signals_before = len(INTERRUPTS.received)
            # returns at once when everything already exited; a signal during it skips the grace
            stop_everything(process, token, pids, hurry=lambda: len(INTERRUPTS.received) > signals_before)
            outcome.exited_at = time.time()
            for tracked in members:
                tracked.follower.poll()
            if options.device == "cuda":
                outcome.gpu_release_s = wait_for_gpu_release(pids, environment)
    outcome.return_code = process.returncode
    return outcome


# ------------------------------------------------------------------------------ one launch

def _prepare(member: Member, options: LaunchOptions, command: list[str] | None, launch: LaunchInfo) -> Tracked:
    scenario, run_dir = member.scenario, member.run_dir
    run_dir.mkdir(parents=True, exist_ok=False)
    if options.nccl_log:  # NCCL's own account of every communicator
        (run_dir / NCCL_LOG_FOLDER).mkdir()
    record = new_record(scenario, options, run_dir, command)
    record.launch = launch
    atomic_write_text(run_dir / "run.json", record.to_json())
    write_worker_config(scenario, options, run_dir)
    return Tracked(member=member, record=record, follower=_new_follower(member, options), total=expected_readings(scenario))


def _prepare_all(planned: PlannedLaunch, options: LaunchOptions, command: list[str] | None, launch: LaunchInfo,
                 launch_file: Path, jobs: int) -> list[Tracked]:
    """Every member's run folder, run.json and worker config, then launch.json; on a full disk, the run folders
    made so far are removed (nothing was measured in them)."""
    members: list[Tracked] = []
    try:
        for member in planned.members:
            members.append(_prepare(member, options, command, launch))
        _write_launch_file(launch_file, planned, jobs)
    except OutputError as error:
        for member in planned.members[:len(members) + 1]:
            shutil.rmtree(member.run_dir, ignore_errors=True)
        raise MeasurementError(f"{error}; nothing was launched", run_dir=None) from None
    return members


def _new_follower(member: Member, options: LaunchOptions) -> StreamFollower:
    scenario = member.scenario
    dynamic = options.rdzv_endpoint is not None and options.nnodes > 1
    per_node = scenario.layout.world_size // options.nnodes
    ranks = range(scenario.layout.world_size) if dynamic else local_ranks(scenario, options)
    return StreamFollower(member.run_dir, ranks, per_node if dynamic else None)


def _launch_name(planned: PlannedLaunch) -> str:
    return "+".join(scenario.name for scenario in planned.scenarios)


def _write_launch_file(path: Path, planned: PlannedLaunch, jobs: int) -> None:
    scenarios = tuple(LaunchScenario(name=member.scenario.name, run_dir=str(member.run_dir.resolve()), env=member.overrides)
                      for member in planned.members)
    atomic_write_text(path, LaunchFile(scenarios=scenarios, jobs=jobs).to_json())


def run_launch(planned: PlannedLaunch, options: LaunchOptions, launch_dir: Path, jobs: int, suffix: str = "",
               progress: ProgressCallback | None = None, command: list[str] | None = None,
               stop: StopFlag | None = None, beside: str | None = None) -> list[Run]:
    """Measure the scenarios of ``planned`` in one torchrun launch, ``jobs`` at a time; their runs, in order.

    ``beside``: the token every process of the launches running beside this one carries too (one comparison).
    Every scenario ends (done, failed or timed out) before this returns; then the first failure is
    raised as :class:`MeasurementError` (each run.json says what happened, every finished reading
    kept), or :class:`Interrupted`.
    """
    with INTERRUPTS.deferred():
        return _run_launch(planned, options, launch_dir, jobs, suffix, progress, command, stop, beside)


UNIX_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux: zmq refuses a longer ipc:// path


def _worker_scratch(log_dir: str) -> dict[str, str]:
    """``TMPDIR`` for the workers: a folder inside torchrun's log folder, which goes with it (the guard removes it even
    when memprobe is killed), since an installed engine's own code leaves files in the temp folder (vLLM 0.33.0's MQ
    broadcaster binds IPC sockets there and never unlinks them). Nothing where a socket path there would be too long
    for ``sun_path`` and the engine's own would not (the user's TMPDIR is then left as it is)."""
    scratch = os.path.join(log_dir, "t")
    if len(scratch) + 1 + 36 > UNIX_SOCKET_PATH_MAX:  # a uuid4 socket name must still fit
        return {}
    os.mkdir(scratch)
    return {"TMPDIR": scratch}


def _run_launch(planned: PlannedLaunch, options: LaunchOptions, launch_dir: Path, jobs: int, suffix: str,
                progress: ProgressCallback | None, command: list[str] | None, stop: StopFlag | None,
                beside: str | None) -> list[Run]:
    jobs = max(1, min(jobs, len(planned.members)))
    launch = LaunchInfo(scenarios=tuple(scenario.name for scenario in planned.scenarios), jobs=jobs, folder=launch_dir.name)
    launch_file, torchrun_log = launch_paths(launch_dir, suffix)
    members = _prepare_all(planned, options, command, launch, launch_file, jobs)
    token = uuid.uuid4().hex
    environment = {**planned.environment, RUN_TOKEN_VARIABLE: token}
    if beside or jobs > 1:  # side by side on the same GPUs, on purpose (the engine tells them from strangers)
        environment[CONCURRENT_VARIABLE] = beside or token
    per_node = planned.scenarios[0].layout.world_size // options.nnodes
    attempts = 1 if options.master_port or options.rdzv_endpoint else 3
    for attempt in range(attempts):
        port = options.master_port or free_port(options.master_addr if options.master_addr != "localhost" else "127.0.0.1")
        log_dir = tempfile.mkdtemp(prefix="memprobe-torchrun-")  # torchrun's own log folder, removed below
        try:
            outcome = supervise(launch_command(launch_file, _launch_name(planned), per_node, options, port, log_dir),
                                {**environment, **_worker_scratch(log_dir)}, token, members, options, jobs,
                                torchrun_log, progress, stop)
        finally:
            shutil.rmtree(log_dir, ignore_errors=True)
        launched = any(tracked.follower.launched for tracked in members)
        port_taken = rendezvous_port_taken(torchrun_log) is not None
        if attempt + 1 < attempts and not launched and port_taken and outcome.interrupted is None:
            for tracked in members:  # something took the rendezvous port between our probe and torchrun's bind
                tracked.state, tracked.failure, tracked.follower = ScenarioStatus.WAITING, None, _new_follower(tracked.member, options)
            continue
        break
    return _runs(members, options, outcome, torchrun_log, launch_dir)


def _runs(members: list[Tracked], options: LaunchOptions, outcome: LaunchOutcome, torchrun_log: Path,
          launch_dir: Path) -> list[Run]:
    runs, failures = [], []
    for tracked in members:
        try:
            runs.append(assemble(tracked, options, outcome, torchrun_log))
        except MeasurementError as failure:
            failures.append(failure)
    raise_if_interrupted(outcome, launch_dir)
    if failures:
        raise failures[0]
    return runs


__all__ = ["run_launch", "supervise", "launch_command", "StopFlag"]
