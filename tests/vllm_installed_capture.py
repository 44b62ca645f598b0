"""Run memprobe's ``--engine vllm`` builder (memprobe/engines/vllm/real.py) on the installed vLLM for many layouts,
cheaply: vLLM is imported once (with the CPU stand-ins), then every rank of a layout is a forked process that runs
``VLLMInstalledBuilder.world_and_groups`` on gloo over a tcp rendezvous of its own, with a recorder that keeps the
steps it is asked to sample instead of reading memory (nothing here is a measurement: the groups, rank lists and
vLLM's decisions are what is checked). Prints one JSON document: per layout, every rank's recorded decisions,
warnings and steps.

    PYTHONPATH=<worktree>:<vLLM site> python tests/vllm_installed_capture.py '[{"tp": 2, "moe": true}, ...]'
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import queue as queue_module
import socket
import sys
import traceback
from typing import Any

os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


class StepKeeper:
    """What the builder asks of memprobe's recorder, keeping each sampled step (no memory is read)."""

    def __init__(self, layout: Any, rank: int, world_size: int) -> None:
        from memprobe import engines
        from memprobe.model.records import RankInfo

        self.engine = engines.get("vllm")
        self.layout = layout
        self.plan = self.engine.engine.plan(layout)
        self.stack = self.engine.engine.resolve_stack("installed")
        self.device_kind, self.backend = "cpu", "gloo"
        self.rank, self.local_rank, self.world_size = rank, rank, world_size
        self.timeout = datetime.timedelta(seconds=120)
        self.info = RankInfo(rank=rank)
        self.current: tuple[str | None, str] = ("", "start")
        self.world_cpu_group: Any = None
        self.device_groups: dict[str, Any] = {}
        self.cpu_groups: dict[str, Any] = {}
        self.steps: list[list[str]] = []

    def record(self, step: str, group: str | None = "", status: str = "ok", note: str = "") -> None:
        import torch.distributed as dist

        if self.world_cpu_group is not None:  # as the recorder: every rank reaches each step together
            dist.barrier(group=self.world_cpu_group)
        self.steps.append([str(group or ""), step, str(status)])

    def _record_nccl_library(self) -> None:
        pass


def _die_with_parent() -> None:
    """A rank whose capture was killed (a timeout) must not outlive it, stuck in a rendezvous (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _rank(widths: dict, rank: int, world_size: int, port: int, results: Any) -> None:
    _die_with_parent()
    try:
        from memprobe import engines
        from memprobe.engines.vllm.real import VLLMInstalledBuilder

        layout = engines.get("vllm").engine.layout(widths)
        keeper = StepKeeper(layout, rank, world_size)
        builder = VLLMInstalledBuilder(keeper)
        builder.init_method = f"tcp://127.0.0.1:{port}"
        builder.world_and_groups()
        results.put((rank, {"communicators": keeper.info.communicators, "warnings": keeper.info.warnings,
                            "steps": keeper.steps}))
        builder.destroy()
    except BaseException:  # noqa: BLE001 - the parent reports the rank's traceback
        results.put((rank, {"error": traceback.format_exc()}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def capture(widths: dict) -> dict:
    """One layout; once more on a fresh port where rank 0's store found its port taken (the port is free when
    _free_port returns it, and another process on the machine may bind it before rank 0 does)."""
    captured = _capture_once(widths)
    if any("EADDRINUSE" in result.get("error", "") for result in captured["ranks"].values()):
        captured = _capture_once(widths)
    return captured


def _capture_once(widths: dict) -> dict:
    from memprobe import engines

    world_size = engines.get("vllm").engine.layout(widths).world_size
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank, args=(widths, rank, world_size, port, results))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    found: dict[int, dict] = {}
    try:
        for _ in processes:
            rank, result = results.get(timeout=90)  # a rank stuck in a rendezvous: the layout fails
            found[rank] = result
            if "error" in result:  # its peers wait for it in a rendezvous until the timeout: the layout failed
                break
    except queue_module.Empty:
        pass
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()
    return {"widths": widths, "world_size": world_size, "ranks": {str(rank): found[rank] for rank in sorted(found)}}


def main(argv: list[str]) -> int:
    from memprobe.engines.vllm import standins

    standins.install()  # as a --device cpu worker does, before vLLM is imported once for every fork
    os.environ["VLLM_NCCL_SO_PATH"] = "/nonexistent/libnccl.so.2"
    import vllm.config  # noqa: F401
    import vllm.distributed.device_communicators.cuda_communicator  # noqa: F401
    import vllm.distributed.parallel_state  # noqa: F401

    import time
    done = []
    for widths in json.loads(argv[0]):
        start = time.monotonic()
        done.append(capture(widths))
        print(f"TIME {time.monotonic() - start:.1f} {widths}", file=sys.stderr)
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
