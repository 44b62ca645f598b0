"""NCCL's account of each communicator (``memprobe report RUN --nccl``; shown by ``run --nccl-log``): per rank,
what NCCL's debug log says it allocated on the device, by kind, beside the step's NVML bytes and torch-cache part,
with the remainder that no log names shown as such."""

from __future__ import annotations

from typing import IO, Any

from rich import box
from rich.table import Table

from memprobe.analysis.nccl_account import CommAccount, RunAccount, run_account
from memprobe.model.records import Run
from memprobe.reports._format import console_for, print_table
from memprobe.units import UNIT, mib

# kind -> column; kinds not listed add up in "other"
COLUMNS = (("p2p_recv_buffers", "receive buffers"), ("p2p_send_buffers", "send buffers"),
           ("net_shared_buffers", "NET pool"), ("channels", "channels"), ("devcomm", "devComm"))
KIND_NOTES = (
    "receive buffers: one per channel and peer this rank receives from (ring previous, tree parent and children): "
    "LL + LL128 + Simple (NCCL_BUFFSIZE) protocol buffers and a header, rounded up to 2 MiB",
    "send buffers: one per channel and peer this rank sends to (ncclSendMem, 2 MiB)",
    "NET pool: NCCL's shared P2P pool (p2p channels x 16 x P2P chunk), allocated at init even when every peer is "
    "reached over NVLink; absent when connections are made lazily (NCCL_CUMEM_ENABLE=1)",
    "channels / devComm: per-channel peer tables and the device communicator (each a 2 MiB cuMem mapping with cuMem on)",
    "remainder: step bytes - torch cache - NCCL logged; on a process's first communicator this is process-wide "
    "set-up NCCL does not log (its device code and the first kernel launch), not the communicator's buffers",
)


def _peers(peers: dict[int, int]) -> str:
    return " ".join(f"{peer}x{n}" for peer, n in sorted(peers.items())) or "-"


def _row(account: CommAccount) -> list[str]:
    kinds = dict(account.kinds)
    cells = []
    for kind, _ in COLUMNS:
        value = kinds.pop(kind, 0)
        count = account.counts.get(kind)
        cells.append(f"{mib(value)} ({count})" if kind.startswith("p2p_") and count else mib(value))
    return [str(account.rank), account.label, f"{account.nccl_rank}/{account.nranks}", mib(account.step_bytes),
            mib(account.torch_cache_bytes), mib(account.logged_bytes), *cells, mib(sum(kinds.values())),
            mib(account.remainder, signed=True), _peers(account.receive_from), _peers(account.send_to)]


def render_nccl_account(run: Run, stream: IO[str], *, width: int = 160, account: RunAccount | None = None) -> None:
    account = account or run_account(run)
    with console_for(stream, width) as console:
        if not account.accounts:
            why = "NCCL wrote none: a --device cpu run, or no NCCL communicator started" if account.log_folder.is_dir() \
                else "run with --nccl-log"
            console.print(f"no NCCL logs of this run's ranks in {account.log_folder} ({why})", soft_wrap=True)
            return
        cumem = {True: "cuMem on", False: "cuMem off (cudaMalloc)", None: "cuMem unknown"}[account.cumem]
        console.print(f"NCCL's account of each communicator (NCCL {account.nccl_version or '?'}, {cumem}), device "
                      f"{UNIT}; logs: {account.log_folder}", soft_wrap=True)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        headers = ["rank", "communicator", "NCCL\nrank/n", "step\n(NVML)", "torch\ncache", "NCCL\nlogged",
                   *(name.replace(" ", "\n") for _, name in COLUMNS), "other", "remainder", "receives\nfrom peer x ch",
                   "sends\nto peer x ch"]
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i in (1, len(headers) - 2, len(headers) - 1) else "right")
        previous_rank = None
        for item in account.accounts:
            if previous_rank is not None and item.rank != previous_rank:
                table.add_section()
            previous_rank = item.rank
            table.add_row(*_row(item))
        print_table(console, table)
        for note in KIND_NOTES:
            console.print(note, soft_wrap=True)
        if account.ranks_without_log:
            console.print(f"no NCCL log found for ranks {', '.join(map(str, account.ranks_without_log))}", soft_wrap=True)


def nccl_account_document(run: Run) -> dict[str, Any] | None:
    """JSON-ready account (bytes), or None when the run has no NCCL logs."""
    account = run_account(run)
    if not account.accounts:
        return None
    return {
        "nccl_version": account.nccl_version, "cumem": account.cumem, "log_folder": str(account.log_folder),
        "ranks_without_log": account.ranks_without_log,
        "communicators": [{
            "rank": a.rank, "label": a.label, "group": a.group, "step": a.step, "nccl_rank": a.nccl_rank,
            "nranks": a.nranks, "step_bytes": a.step_bytes, "torch_cache_bytes": a.torch_cache_bytes,
            "nccl_logged_bytes": a.logged_bytes, "remainder_bytes": a.remainder, "kinds_bytes": a.kinds,
            "kinds_count": a.counts, "host_bytes": a.host_bytes, "channels": a.channels,
            "connected_after_init_bytes": a.connect_bytes, "buffers_match": a.algorithms,
            "receive_from": {str(k): v for k, v in a.receive_from.items()},
            "send_to": {str(k): v for k, v in a.send_to.items()},
        } for a in account.accounts],
    }
