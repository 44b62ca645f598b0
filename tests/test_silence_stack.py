"""A rank that goes silent names the call it was stuck in: the measuring process's SilenceWatch (real faulthandler,
in a real subprocess) leaves its Python stacks shortly before the parent's --timeout, and the parent's silence
message names the innermost call, the engine's and memprobe's (no launch: the subprocess stands for one rank)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from memprobe.launch.follow import StreamFollower, silence_failure
from memprobe.measure.worker import silence_watch_after
from memprobe.model.records import stack_path

ROOT = Path(__file__).resolve().parent.parent

#: one rank: a started event, then stuck in a call of a module laid out as an engine's (``vllm/...``), with a
#: second thread alive beside it (the engines start some); SilenceWatch armed with AFTER_S seconds
RANK = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from memprobe.measure.worker import EventStream, SilenceWatch
    from memprobe.model.events import Started
    from memprobe.model.records import stack_path, stream_path
    run_dir, after_s, stuck = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "stuck"
    sys.path.insert(0, str(run_dir / "site"))
    from vllm.distributed import parallel_state
    watch = SilenceWatch(EventStream(stream_path(run_dir, 1)), stack_path(run_dir, 1), after_s)
    watch(Started(pid=0, rank=1))
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    def world_and_groups():
        parallel_state.init_distributed_environment(3 * after_s if stuck else 0)
    world_and_groups()
    watch.close()
""")
ENGINE = "import time\n\ndef init_distributed_environment(seconds):\n    time.sleep(seconds)\n"


def _rank(run_dir: Path, after_s: float, how: str) -> None:
    engine = run_dir / "site" / "vllm" / "distributed"
    engine.mkdir(parents=True, exist_ok=True)
    for package in (engine.parent, engine):
        (package / "__init__.py").write_text("")
    (engine / "parallel_state.py").write_text(ENGINE)
    (run_dir / "ranks").mkdir(exist_ok=True)
    script = run_dir / "memprobe" / "rank.py"  # laid out as memprobe's own code, whose frame the message names
    script.parent.mkdir(exist_ok=True)
    script.write_text(RANK)
    result = subprocess.run([sys.executable, str(script), str(run_dir), str(after_s), how], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr


def test_a_silent_rank_s_message_names_the_call_it_was_stuck_in(tmp_path):
    _rank(tmp_path, 0.3, "stuck")
    follower = StreamFollower(tmp_path, range(1, 2))
    follower.poll()
    failure = silence_failure(follower, time.monotonic() + 11, 10, tmp_path / "workers.log", tmp_path / "t.log")
    assert failure is not None and failure.rank == 1, failure
    assert ("; its Python stack then: init_distributed_environment (.../vllm/distributed/parallel_state.py:4)"
            " <- world_and_groups (.../" in failure.message and "/memprobe/rank.py:14) (--timeout" in failure.message), \
        failure.message
    assert failure.message.endswith("(--timeout 10 s)")
    assert failure.last_lines[0].startswith('File "') and "parallel_state.py" in failure.last_lines[0]


def test_a_rank_that_kept_progressing_leaves_no_stacks_and_the_message_is_as_before(tmp_path):
    _rank(tmp_path, 5, "quick")
    assert not stack_path(tmp_path, 1).exists()
    follower = StreamFollower(tmp_path, range(1, 2))
    follower.poll()
    failure = silence_failure(follower, time.monotonic() + 11, 10, tmp_path / "workers.log", tmp_path / "t.log")
    assert failure is not None and "Python stack" not in failure.message


def test_the_stacks_are_written_before_the_parent_s_timeout():
    from memprobe.launch.prepare import WORKER_TIMEOUT_MARGIN_S

    for timeout in (1.0, 300.0):
        after = silence_watch_after(timeout + WORKER_TIMEOUT_MARGIN_S)  # what the worker's config holds
        assert 0 < after < timeout and after >= 0.8 * timeout
