"""Following one scenario's ranks through their event streams: progress, silence, and who failed first."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from memprobe.launch.processes import is_stopped
from memprobe.model.events import (
    Arrived, Done, ErrorReported, Exited, Forked, Launched, MalformedEvent, ReadingTaken, ResultsLocation, Started,
    WorkerEvent, parse_event,
)
from memprobe.model.records import Failure, stack_path, stream_path


class StreamFollower:
    """Reads each rank's event stream of one scenario incrementally."""

    def __init__(self, run_dir: Path, ranks: range, per_node: int | None = None) -> None:
        """``per_node`` set: torchrun's dynamic rendezvous picks this node's rank, so ``ranks`` is the whole world
        until the first launcher's ``launched`` event tells which block of ``per_node`` ranks is local."""
        self.per_node = per_node
        self.known = per_node is None  # whether the local ranks are known
        self.paths = {rank: stream_path(run_dir, rank) for rank in ranks}
        self.offsets = {rank: 0 for rank in ranks}
        self.readings = {rank: 0 for rank in ranks}
        self.last_step = {rank: "" for rank in ranks}
        self.pids: set[int] = set()  # the scenario's measuring processes
        self.rank_pids: dict[int, int] = {}  # rank -> its measuring process
        self.launcher_pids: set[int] = set()  # the processes torchrun started, shared by the launch's scenarios
        self.errors: list[ErrorReported] = []
        self.done: set[int] = set()
        self.launched: set[int] = set()  # ranks whose launcher runs
        self.started: set[int] = set()  # ranks whose measuring process runs
        self.exited: dict[int, int] = {}  # rank -> its measuring process's exit code, as its launcher saw it
        self.arrived: dict[int, str] = {}  # rank -> the step it finished, waiting for the other ranks there
        self.last_progress = {rank: time.monotonic() for rank in ranks}  # launch or turn, then each sign of life
        self.results_at: ResultsLocation | None = None  # where node 0 keeps the gathered results

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
                    event = parse_event(line)
                except MalformedEvent:  # a line no worker writes (garbage, an unknown kind): skipped, no sign of life
                    continue
                self._take(rank, event)
        if not self.known and self.launched and self.per_node is not None:
            self._narrow(min(self.launched) // self.per_node, self.per_node)

    def _take(self, rank: int, event: WorkerEvent) -> None:
        if not isinstance(event, Exited):  # every event but its end is a sign of life: the rank's silence counts from it
            self.last_progress[rank] = time.monotonic()
        if isinstance(event, Launched):
            self.launcher_pids.add(event.pid)
            self.launched.add(rank)
        elif isinstance(event, Forked):  # known before the process itself says anything: it can be stopped even then
            self.pids.add(event.pid)
            self.rank_pids[rank] = event.pid
        elif isinstance(event, Exited):
            self.exited[rank] = event.code
        elif isinstance(event, Started):
            self.pids.add(event.pid)
            self.rank_pids[rank] = event.pid
            self.launched.add(rank)
            self.started.add(rank)
        elif isinstance(event, ReadingTaken):
            self.readings[rank] += 1
            self.arrived.pop(rank, None)
            self.last_step[rank] = event.where
        elif isinstance(event, Arrived):
            self.arrived[rank] = event.where
        elif isinstance(event, ErrorReported):
            self.errors.append(event)
        elif isinstance(event, Done):
            self.done.add(rank)
            self.results_at = event.results_at or self.results_at

    def _narrow(self, node: int, per_node: int) -> None:
        local = range(node * per_node, (node + 1) * per_node)
        for table in (self.paths, self.offsets, self.readings, self.last_step, self.last_progress):
            for rank in [r for r in table if r not in local]:
                del table[rank]
        self.known = True

    def restart_clock(self) -> None:
        """The scenario's turn came (in-turn launches): silence is counted from now."""
        now = time.monotonic()
        for rank in self.last_progress:
            self.last_progress[rank] = now

    @property
    def crashed(self) -> list[int]:
        """Local ranks whose measuring process ended without finishing (killed, or exited non-zero)."""
        return sorted(rank for rank, code in self.exited.items() if rank not in self.done and rank in self.paths)

    @property
    def finished_locally(self) -> bool:
        return self.known and self.done >= set(self.paths)

    def slowest(self) -> tuple[int, int, str]:
        rank = min(self.readings, key=lambda r: (self.readings[r], r))
        return rank, self.readings[rank], self.last_step[rank]


def tail(path: Path, lines: int = 12) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def silence_failure(follower: StreamFollower, now: float, timeout_s: float, workers_log: Path,
                    torchrun_log: Path) -> Failure | None:
    """The local rank silent longest, if it went ``timeout_s`` without a new reading (counted from its turn)."""
    waiting = [rank for rank in follower.paths if rank not in follower.done]
    if not waiting:
        return None
    if max(now - follower.last_progress[r] for r in waiting) <= timeout_s:
        return None
    # a stopped process is silent on its own, whatever it streamed last; otherwise a rank that arrived at the
    # next step waits for its peers there: blame one that did not arrive
    stopped = {rank for rank in waiting if is_stopped(follower.rank_pids.get(rank))}
    rank = max(waiting, key=lambda r: (r in stopped, r not in follower.arrived, now - follower.last_progress[r], -r))
    silent = now - follower.last_progress[rank]
    if rank in stopped:
        after = f" after its {follower.last_step[rank]} reading" if follower.last_step[rank] else ""
        what = (f"its process {follower.rank_pids[rank]} is stopped (SIGSTOP or a debugger){after}: silent for "
                f"{silent:.0f} s")
    elif rank not in follower.launched:
        what = (f"no sign of it {silent:.0f} s after launch: torchrun had not started it yet; is this machine's "
                "start-up (torchrun, import torch) longer than the timeout, or has a node not joined?")
    elif not follower.last_step[rank]:
        what = (f"still starting, no reading {silent:.0f} s after its last sign of life; is this machine's "
                "start-up (import torch, a CUDA context) longer than the timeout?")
    elif rank in follower.arrived:
        what = (f"stopped progressing after its {follower.last_step[rank]} reading: silent for {silent:.0f} s, "
                f"waiting at {follower.arrived[rank]} for the other ranks (on another node?)")
    else:
        what = f"stopped progressing after its {follower.last_step[rank]} reading: silent for {silent:.0f} s"
    # the run folder holds workers.log; the rank's stacks, if it wrote them before this timeout (SilenceWatch)
    stuck = stuck_stack(stack_path(workers_log.parent, rank))
    if stuck is not None:
        what += f"; its Python stack then: {stuck[0]}"
    return Failure(rank=rank, group="", step="", message=f"{what} (--timeout {timeout_s:g} s)",
                   last_lines=stuck[1] if stuck is not None else last_lines(workers_log, torchrun_log))


_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')
#: the measuring process's main thread is the one running the worker (other threads: vLLM's, zmq's, torch's)
_MAIN_THREAD_MARK = "memprobe/measure/worker.py"


def _frame_name(match: re.Match[str]) -> str:
    return f"{match['function']} (.../{'/'.join(Path(match['path']).parts[-3:])}:{match['line']})"


def stuck_stack(path: Path) -> tuple[str, list[str]] | None:
    """From the last stack dump a silent rank wrote (faulthandler's text, most recent call first), its main
    thread's two innermost calls, the innermost in an engine's code (``vllm/``, ``sglang/``) and in memprobe's,
    in one line (``function (.../file.py:line) <- caller ...``), and that thread's first frames; None when it
    wrote none."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    dump = text.rsplit("Timeout (", 1)
    if len(dump) != 2:
        return None
    threads = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump[1])
    main = next((thread for thread in threads if _MAIN_THREAD_MARK in thread), threads[-1])
    frames = [match for match in map(_FRAME.match, main.splitlines()) if match is not None]
    if not frames:
        return None
    engine = next((i for i, f in enumerate(frames) if {"vllm", "sglang"} & set(Path(f["path"]).parts)), 0)
    mine = next((i for i, f in enumerate(frames) if "memprobe" in Path(f["path"]).parts), 0)
    chosen = [frames[i] for i in sorted({0, min(1, len(frames) - 1), engine, mine})]
    return " <- ".join(map(_frame_name, chosen)), [match.group(0).strip() for match in frames[:12]]


# A rank whose peer died reports these; the rank that died first is the cause, not them.
_PEER_LOSS_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
                      "remote process exited", "socket closed")


def torchrun_root_cause(log_path: Path) -> tuple[int, str] | None:
    """The rank torchrun names under "Root Cause (first observed failure)", with its exit code text."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    section = text.rsplit("Root Cause (first observed failure)", 1)
    if len(section) != 2:
        return None
    rank = re.search(r"rank\s*:\s*(\d+)", section[1])
    exit_code = re.search(r"exitcode\s*:\s*([^\n]+)", section[1])
    if rank is None:
        return None
    return int(rank.group(1)), (" ".join(exit_code.group(1).split()) if exit_code else "unknown")


def rendezvous_port_taken(log_path: Path) -> str | None:
    """Whether torchrun's store could not bind its port (torch's TCPStore: "... port: N, ... name: EADDRINUSE");
    " N" when the log names the port, "" otherwise, None when the port was not the problem."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    if "EADDRINUSE" not in text:
        return None
    port = re.search(r"port: (\d+)[^\n]*EADDRINUSE", text)
    return f" {port.group(1)}" if port else ""


def last_lines(workers_log: Path, torchrun_log: Path) -> list[str]:
    """The scenario's own output if its processes printed any, else torchrun's."""
    return tail(workers_log) or tail(torchrun_log)


def root_cause(follower: StreamFollower, return_code: int | None, workers_log: Path, torchrun_log: Path) -> Failure:
    """Blame the rank that failed first on its own: an error that is not a lost peer, else a rank that went silent."""

    def from_error(event: ErrorReported) -> Failure:
        return Failure(rank=event.rank, group=event.group, step=event.step, message=event.message,
                       last_lines=list(event.traceback[-12:]))

    def how_it_ended(rank: int, otherwise: str) -> str:
        code = follower.exited.get(rank)
        if code is None:
            return otherwise
        if code < 0:
            try:
                return f"(killed by {signal.Signals(-code).name})"
            except ValueError:
                return f"(killed by signal {-code})"
        return f"(exit code {code})"

    def went_silent(rank: int, never_started: str, how: str) -> Failure:
        last = follower.last_step.get(rank, "")
        return Failure(rank=rank, group="", step="",
                       message=(f"exited without reporting an error after its {last} reading " if last else never_started) + how,
                       last_lines=last_lines(workers_log, torchrun_log))

    errors = sorted(follower.errors, key=lambda e: e.time)
    own = [e for e in errors if not any(m in e.message.lower() for m in _PEER_LOSS_MARKERS)]
    if own:
        return from_error(own[0])
    taken = rendezvous_port_taken(torchrun_log)
    if taken is not None and not follower.launched:
        return Failure(rank=None, group="", step="", last_lines=tail(torchrun_log),
                       message=f"torchrun could not listen on its rendezvous port{taken}: it is already in use "
                               "(EADDRINUSE); choose another --master-port, or leave it out for a free one")
    reported = {e.rank for e in errors}
    cause = torchrun_root_cause(torchrun_log)
    # torchrun names the first exit it noticed; a rank that reported losing a peer is not the cause, even if
    # torchrun noticed it first (a SIGKILLed rank and the peer it left behind end within one monitor interval)
    for rank in follower.crashed:  # its launcher saw it end (one launch, several scenarios)
        if rank not in reported:
            return went_silent(rank, "never started ", how_it_ended(rank, ""))
    if cause is not None and cause[0] in follower.paths and cause[0] not in follower.done | reported:
        return went_silent(cause[0], "never started ", f"(torchrun: exit code {cause[1]})")
    silent = [rank for rank in follower.paths if rank not in follower.done and rank not in reported]
    if silent:
        return went_silent(silent[0], f"never started (see {torchrun_log.name}) ",
                           how_it_ended(silent[0], f"(killed or crashed; torchrun exit code {return_code})"))
    if errors:  # every error is a lost peer: the rank that failed first is on another node
        lost = from_error(errors[0])
        lost.message += " (it lost a peer: the rank that failed first is elsewhere, e.g. on another node; see its output)"
        return lost
    return Failure(rank=None, group="", step="", message=f"torchrun exited with code {return_code}",
                   last_lines=tail(torchrun_log))
