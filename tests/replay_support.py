"""Fast launches: memprobe's real CLI, planner, supervisor, follower and assembler in this process, with torchrun
replaced by ``launch_replay.py``, which writes what a real launch's workers wrote.

The streams under ``tests/fixtures/launch/`` are copied unchanged from real CPU launches (see the README there);
a script takes lines from them up to a point and adds what the case needs (a rank that stops, dies or is
killed). The supervisor reads them through its own entry points, so it cannot tell them from a launch's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from memprobe.model.records import RUN_TOKEN_VARIABLE, stream_path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "launch"
REPLAY = HERE / "launch_replay.py"


def fixture_lines(case: str, rank: int) -> list[str]:
    """One rank's stream of a recorded launch, line by line (``case``: ``healthy``, ``two/faulty``, ...)."""
    return stream_path(FIXTURES / case, rank).read_text(encoding="utf-8").splitlines(keepends=True)


def up_to(lines: list[str], kind: str, group: str | None = None, step: str | None = None) -> list[str]:
    """The lines up to and with the first event of ``kind`` (at ``group``/``step`` when given)."""
    for index, line in enumerate(lines):
        event = json.loads(line)
        if event["type"] == kind and (group is None or event.get("group") == group) and (step is None or event.get("step") == step):
            return lines[:index + 1]
    raise AssertionError(f"no {kind} {group}/{step} in the stream")


def after(lines: list[str], kind: str, group: str | None = None, step: str | None = None) -> list[str]:
    return lines[len(up_to(lines, kind, group, step)):]


def pids_in(lines: list[str]) -> set[int]:
    return {json.loads(line)["pid"] for line in lines if '"pid": ' in line}


class Script:
    """What the stand-in for torchrun does, in order. Streams are named by scenario (its run folder's name)
    and rank; PIDs of the recorded launch are replaced by those of processes the stand-in starts."""

    def __init__(self) -> None:
        self.actions: list[dict] = []
        self.pids: dict[int, str] = {}

    def spawn(self, name: str, *recorded_pids: int, ignore_sigterm: bool = False) -> "Script":
        self.actions.append({"spawn": name, "ignore_sigterm": ignore_sigterm})
        for pid in recorded_pids:
            self.pids[pid] = name
        return self

    def stream(self, scenario: str, rank: int, lines: list[str]) -> "Script":
        text = "".join(lines)
        for pid, name in self.pids.items():
            text = re.sub(rf'"pid": {pid}\b', f'"pid": {{pid:{name}}}', text)
        self.actions.append({"stream": [scenario, rank], "text": text})
        return self

    def file(self, scenario: str, name: str, source: Path) -> "Script":
        """A file rank 0 writes when it gathered (readings.csv, ranks.json), copied from the recorded launch."""
        self.actions.append({"file": [scenario, name], "text": source.read_text(encoding="utf-8")})
        return self

    def sleep(self, seconds: float) -> "Script":
        self.actions.append({"sleep": seconds})
        return self

    def log(self, text: str) -> "Script":
        self.actions.append({"log": text})
        return self

    def kill(self, name: str, number: int = 9) -> "Script":
        self.actions.append({"kill": name, "signal": number})
        return self

    def finish(self, name: str) -> "Script":
        self.actions.append({"finish": name})
        return self

    def remove(self, scenario: str) -> "Script":
        self.actions.append({"remove": scenario})
        return self

    def exit(self, code: int) -> "Script":
        self.actions.append({"exit": code})
        return self

    def scenarios(self) -> set[str]:
        return {action["stream"][0] for action in self.actions if "stream" in action}

    def for_launch(self, launch_file: Path) -> list[dict]:
        """The actions with every scenario resolved to its run folder, as ``launch.json`` lists them."""
        folders = {Path(s["run_dir"]).name: Path(s["run_dir"]) for s in json.loads(launch_file.read_text())["scenarios"]}
        resolved = []
        for action in self.actions:
            action = dict(action)
            if "stream" in action:
                scenario, rank = action.pop("stream")
                action["append"] = str(stream_path(folders[scenario], rank))
            elif "file" in action:
                scenario, name = action.pop("file")
                action["append"] = str(folders[scenario] / name)
            elif "remove" in action:
                action["remove"] = str(folders[action["remove"]])
            resolved.append(action)
        return resolved


class Replays:
    """Installed in place of torchrun's command line: each launch replays the first script left whose streams are
    all of that launch's scenarios (launches side by side start from threads in any order)."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = list(scripts)
        self.log_dirs: list[Path] = []

    def command(self, launch_file: Path, name: str, per_node: int, options, port: int, log_dir: str) -> list[str]:
        names = {Path(s["run_dir"]).name for s in json.loads(launch_file.read_text())["scenarios"]}
        script = next(script for script in self.scripts if script.scenarios() <= names)
        self.scripts.remove(script)
        self.log_dirs.append(Path(log_dir))
        path = Path(log_dir) / "replay.json"
        path.write_text(json.dumps(script.for_launch(launch_file)), encoding="utf-8")
        return [sys.executable, str(REPLAY), str(path)]


def replay(monkeypatch, *scripts: Script) -> Replays:
    """Every launch from here on replays ``scripts`` in order, one each, instead of starting torchrun."""
    replays = Replays(list(scripts))
    monkeypatch.setattr("memprobe.launch.supervisor.launch_command", replays.command)
    return replays


def leftover_processes(folder: Path) -> list[int]:
    """Processes that carry a memprobe run token, work in ``folder`` and are still alive (not zombies)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as stream:
                carries_token = RUN_TOKEN_VARIABLE.encode() in stream.read()
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                zombie = stat.read().rsplit(")", 1)[-1].split()[0] == "Z"
            if carries_token and not zombie and os.readlink(f"/proc/{entry}/cwd") == str(folder):
                found.append(int(entry))
        except OSError:
            continue
    return found


def memprobe(capsys, *args: str) -> tuple[int, str, str]:
    """memprobe's CLI in this process: its exit code, stdout and stderr."""
    from memprobe.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def healthy_script(scenario: str, case: str = "healthy", ranks: tuple[int, ...] = (0, 1), pause_s: float = 0.0) -> Script:
    """A tp2 launch that completes: rank 0 writes the gathered files before its ``gathered`` phase; ``pause_s``
    between the last reading and the gathering."""
    lines = {rank: fixture_lines(case, rank) for rank in ranks}
    script = Script()
    for rank in ranks:
        script.spawn(f"rank{rank}", *pids_in(lines[rank]))
    for rank in ranks:
        script.stream(scenario, rank, up_to(lines[rank], "reading", "", "end"))
    script.sleep(pause_s)
    if 0 in ranks:
        script.file(scenario, "readings.csv", FIXTURES / case / "readings.csv")
        script.file(scenario, "ranks.json", FIXTURES / case / "ranks.json")
    for rank in ranks:
        script.stream(scenario, rank, after(lines[rank], "reading", "", "end"))
    for rank in ranks:
        script.finish(f"rank{rank}")
    return script


