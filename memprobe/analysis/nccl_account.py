"""NCCL's account of each communicator beside the NVML bytes of the step that created it.

A run made with ``--nccl-log`` has one NCCL debug log per process in ``<run>/nccl/``. Each rank's
communicators, in the order NCCL initialised them, are matched with the rank's steps that create one: the
``pynccl`` step of a group (memprobe's or SGLang's PyNcclCommunicator) and the group's ``first_use`` (torch's
own NCCL communicator, created lazily by the first collective). For each: the step's bytes (NVML), the part
torch's caching allocator took, what NCCL says it allocated on the device (by kind), and the remainder
``step - torch cache - NCCL logged``, which no log names (e.g. device code loaded once per process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memprobe import engines
from memprobe.analysis import nccl_log
from memprobe.analysis.attribution import rank_readings, step_deltas, subtract, torch_cache
from memprobe.model.records import NCCL_LOG_FOLDER, Reading, Run, StepStatus

FIRST_USE_NAME = "torch (first use)"


def _communicator_steps() -> dict[str, str]:
    """Steps whose first NCCL call creates a communicator: every engine's NCCL kinds and first use, with their names."""
    nccl = {kind.name: kind.label for kind in engines.kinds(engines.names()) if kind.nccl}
    return {**nccl, "first_use": FIRST_USE_NAME}


@dataclass(frozen=True)
class CommAccount:
    """One communicator on one rank."""

    rank: int
    label: str                      # "tp pynccl", "world torch (first use)", or NCCL's comm pointer if unmatched
    group: str | None
    step: str | None
    nccl_rank: int
    nranks: int
    step_bytes: int | None          # NVML: what the step added on this rank
    torch_cache_bytes: int | None   # of which torch's caching allocator (torch-reserved change)
    logged_bytes: int               # device bytes NCCL's log names for this comm (as the allocator takes them)
    kinds: dict[str, int] = field(default_factory=dict)      # device bytes by kind
    counts: dict[str, int] = field(default_factory=dict)     # device allocations by kind
    host_bytes: int = 0             # host memory NCCL logged for the comm (pinned, /dev/shm): not on the GPU
    channels: dict[str, int] = field(default_factory=dict)
    receive_from: dict[int, int] = field(default_factory=dict)  # peer -> channels with a receive buffer (ring + tree)
    send_to: dict[int, int] = field(default_factory=dict)
    connect_bytes: int = 0          # of logged_bytes, allocated after Init COMPLETE (lazy connect, cuMem on)
    algorithms: str = ""            # which of ring/tree the buffers NCCL allocated match ("" when neither does)

    @property
    def remainder(self) -> int | None:
        """Bytes of the step that neither torch's cache nor NCCL's log account for."""
        return subtract(subtract(self.step_bytes, self.torch_cache_bytes), self.logged_bytes)


@dataclass(frozen=True)
class RunAccount:
    accounts: list[CommAccount]
    nccl_version: str | None
    cumem: bool | None
    log_folder: Path
    ranks_without_log: list[int]


def log_folder(run: Run) -> Path | None:
    return None if run.path is None else Path(run.path) / NCCL_LOG_FOLDER


def has_logs(run: Run) -> bool:
    folder = log_folder(run)
    return folder is not None and folder.is_dir() and bool(nccl_log.log_files(folder))


def _comm_steps(readings: list[Reading], widths: dict[str, int]) -> list[tuple[Reading, int | None, int | None]]:
    """The rank's steps that create an NCCL communicator, in order: (reading, step bytes, torch-cache bytes)."""
    cache = dict((r.sequence, d) for r, d in step_deltas(readings, torch_cache))
    steps = _communicator_steps()
    return [(r, d, cache.get(r.sequence)) for r, d in step_deltas(readings)
            if r.step in steps and r.status == StepStatus.OK and widths.get(r.group, 0) > 1]


def _widths(run: Run, rank: int) -> dict[str, int]:
    """Group name -> width of this rank's instance of the group (from run.json's plan)."""
    out = {}
    for entry in run.record.plan:
        for ranks in entry.ranks:
            if rank in ranks:
                out[entry.name] = len(ranks)
    return out


def run_account(run: Run) -> RunAccount:
    """Every communicator of every rank with a log, matched with its step (see the module docstring)."""
    folder = log_folder(run)
    env = {**dict(run.record.environment.get("nccl_env") or {}), **run.record.env}
    pids = {info.rank: info.pid for info in run.record.ranks if info.pid is not None}
    logs = nccl_log.parse_logs(pids, env, folder) if folder is not None and folder.is_dir() else {}
    accounts: list[CommAccount] = []
    readings = rank_readings(run)
    for rank, log in sorted(logs.items()):
        widths = _widths(run, rank)
        steps = _comm_steps(readings.get(rank, []), widths)
        labels = nccl_log.label_communicators(log, [(str(i), widths[r.group]) for i, (r, _, _) in enumerate(steps)])
        for comm in log.communicators:
            index = labels.get(comm.key)
            accounts.append(_account(rank, comm, steps[int(index)] if index is not None else None))
    first = next(iter(logs.values()), None)
    return RunAccount(accounts, first.version if first else None, first.cumem if first else None, folder or Path("."),
                      sorted(set(readings) - set(logs)))


def _account(rank: int, comm: nccl_log.Communicator, step: tuple[Reading, int | None, int | None] | None) -> CommAccount:
    reading, step_bytes, cache = step if step is not None else (None, None, None)
    plan = _plan_matching_buffers(comm)
    label = f"{reading.group} {_communicator_steps()[reading.step]}" if reading is not None else f"unmatched {comm.key}"
    return CommAccount(
        rank=rank, label=label, group=reading.group if reading else None, step=reading.step if reading else None,
        nccl_rank=comm.rank, nranks=comm.nranks, step_bytes=step_bytes, torch_cache_bytes=cache,
        logged_bytes=comm.total(), kinds=comm.summary(), counts=comm.counts(), host_bytes=comm.total(None, "host"),
        channels=dict(comm.channel_counts), receive_from=plan["recv"], send_to=plan["send"],
        connect_bytes=comm.total("connect"), algorithms=plan["algorithms"],
    )


def _plan_matching_buffers(comm: nccl_log.Communicator) -> dict:
    """The peers of this rank's receive and send buffers, from the ring and tree NCCL logged: ring and tree
    (connected at init, cuMem off) or ring only (connected lazily by a 1-element all-reduce, cuMem on),
    whichever matches the number of buffers NCCL allocated."""
    counts = comm.counts()
    for algorithms in (("ring", "tree"), ("ring",)):
        plan = comm.connection_plan(algorithms)
        if (sum(plan["recv"].values()), sum(plan["send"].values())) == (counts.get("p2p_recv_buffers", 0),
                                                                         counts.get("p2p_send_buffers", 0)):
            return {**plan, "algorithms": " + ".join(algorithms)}
    return {"recv": {}, "send": {}, "algorithms": ""}
