"""Worker entry point, started by torchrun once per rank: ``python -m memprobe.measure.worker RUN_DIR``.

The first thing a worker does is stream a ``started`` event (with its PID) into
``RUN_DIR/ranks/rank-NNNNN.jsonl``; every reading follows as it is taken, so nothing
finished is lost if the run dies. Rank 0 finally gathers everything over gloo and writes
``readings.csv`` and ``ranks.json``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any



class EventStream:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        self.stream.write(json.dumps(event, sort_keys=True) + "\n")
        self.stream.flush()


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this worker if its torchrun agent dies (Linux PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _results_location(engine: Any, run_dir: Path) -> dict[str, str]:
    """Where rank 0 wrote the gathered results, told to every rank (a node other than 0 points there)."""
    import socket

    import torch.distributed as dist

    location = [{"host": socket.gethostname(), "folder": str(run_dir.resolve())}]
    if dist.is_initialized() and engine.world_cpu_group is not None:
        dist.broadcast_object_list(location, src=0, group=engine.world_cpu_group)
    return location[0]


def main(argv: list[str]) -> int:
    run_dir = Path(argv[1])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    _die_with_parent()
    from memprobe.model.records import WORKER_CONFIG, stream_path

    emit = EventStream(stream_path(run_dir, rank))
    emit({"type": "started", "rank": rank, "local_rank": local_rank, "pid": os.getpid(),
          "group_rank": int(os.environ.get("GROUP_RANK", "0"))})
    config = json.loads((run_dir / WORKER_CONFIG).read_text(encoding="utf-8"))

    from memprobe.measure.engine import ReferenceEngine, format_exception
    from memprobe.model.layout import Layout
    from memprobe.model.stacks import GroupFlags, Stack

    emit({"type": "phase", "name": "imported"})  # torch and the engine are imported (issue 16's timings)

    stack_document = config["stack"]
    stack = Stack(
        name=stack_document["name"],
        flags={name: GroupFlags(**flags) for name, flags in stack_document["groups"].items()},
        custom_allreduce_impl=stack_document["custom_allreduce_impl"],
        source=stack_document.get("source", ""),
    )
    engine_class = ReferenceEngine
    if config.get("engine", "memprobe") == "sglang":
        from memprobe.measure.sglang_engine import make_sglang_engine

        engine_class = make_sglang_engine(ReferenceEngine)
    engine = engine_class(
        layout=Layout(**config["layout"]), stack=stack, device=config["device"], warmup=config["warmup"],
        timeout_s=float(config["timeout_s"]), emit=emit, rank=rank, local_rank=local_rank, world_size=world_size,
        allow_busy_gpu=bool(config.get("allow_busy_gpu", False)),
    )
    try:
        engine.run()
        emit({"type": "info", **asdict(engine.info)})
        gathered = engine.gather()
        if gathered is not None:
            from memprobe.model.records import atomic_write_text, readings_to_csv

            readings, infos = gathered
            atomic_write_text(run_dir / "ranks.json", json.dumps([asdict(info) for info in infos], indent=2, sort_keys=True) + "\n")
            atomic_write_text(run_dir / "readings.csv", readings_to_csv(readings))
        results_at = _results_location(engine, run_dir)
        emit({"type": "phase", "name": "gathered"})
        engine.shutdown()
    except BaseException as error:  # report where it broke, then let torchrun see the failure
        group, step = engine.current
        emit({"type": "info", **asdict(engine.info)})
        emit({"type": "error", "rank": rank, "group": group, "step": step,
              "message": f"{type(error).__name__}: {error}".splitlines()[0][:500], "traceback": format_exception(error)})
        if isinstance(error, KeyboardInterrupt):
            return 130
        return 1
    emit({"type": "done", "rank": rank, "results_at": results_at})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
