"""What the memprobe GitHub Action does (action.yml runs this file and nothing else).

It reads the action's inputs from ``INPUT_<NAME>`` environment variables (``INPUT_COMMAND``,
``INPUT_BASELINE``, ...; action.yml sets them, a test or a shell can set them too), installs memprobe
when asked, runs one memprobe command with the exports the inputs ask for, and writes the step's
outputs to ``$GITHUB_OUTPUT``: ``verdict`` (from memprobe's exit code), ``exit-code``, ``out-dir``,
``run-dirs``, ``junit-xml``, ``markdown``, ``json`` and ``files``. It exits with memprobe's exit code,
so the step fails exactly when memprobe does.

Only the standard library is used: the script runs before memprobe is installed.
"""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

USAGE = 2
MEASUREMENT = 3  # also what a failed installation exits with: the step that should produce results failed
VERDICTS = {0: "pass", 1: "regression", 2: "usage-error", 3: "measurement-failure", 4: "incomparable",
            70: "error", 129: "interrupted", 130: "interrupted", 143: "interrupted"}  # 70: memprobe failed unexpectedly
# memprobe's short options, as the long ones the action sets (click takes "-b B.json" and "-bB.json" alike)
SHORT_OPTIONS = {"-b": "--baseline", "-o": "--out", "-t": "--threshold"}
EXPORT_SUFFIXES = {"junit-xml": ".xml", "markdown": ".md", "json": ".json", "csv": ".csv", "summary-csv": "-summary.csv"}


@dataclass(frozen=True)
class Command:
    """Which of the action's inputs a memprobe command takes, and as which option."""

    exports: tuple[str, ...]
    baseline: str | None = None  # the option that receives the baseline input
    results: str | None = None  # the option that receives the results input
    measures: bool = True  # takes --device and --out-dir
    thresholds: bool = False


COMMANDS = {
    "gate": Command(exports=("junit-xml", "markdown", "json"), baseline="--baseline", results="--results", thresholds=True),
    "baseline update": Command(exports=(), baseline="--out", results="--from"),
    "compare": Command(exports=("markdown", "json", "csv", "summary-csv")),
    "run": Command(exports=("json",)),
    "report": Command(exports=("markdown", "json", "csv", "summary-csv"), measures=False),
}


class InputError(Exception):
    """An input the action cannot use: one line, exit 2, nothing run."""


def read_input(name: str) -> str:
    return os.environ.get(f"INPUT_{name.upper().replace('-', '_')}", "").strip()


def split_command(text: str) -> tuple[str, list[str]]:
    """``"gate --estimate"`` -> ``("gate", ["--estimate"])``; ``baseline update`` is one command."""
    words = shlex.split(text)
    if words[:1] == ["memprobe"]:
        words = words[1:]
    for size in (2, 1):
        name = " ".join(words[:size])
        if name in COMMANDS:
            return name, words[size:]
    known = ", ".join(COMMANDS)
    raise InputError(f"command {text!r}: start it with one of {known}" if text else f"the command input is empty: use one of {known}")


def wanted_exports(command_name: str, command: Command) -> list[str]:
    given = read_input("exports")
    if given in ("", "auto"):
        return list(command.exports)
    if given == "none":
        return []
    names = [name.strip() for name in given.split(",") if name.strip()]
    for name in names:
        if name not in EXPORT_SUFFIXES:
            raise InputError(f"exports: unknown export {name!r}; use auto, none or some of {', '.join(EXPORT_SUFFIXES)}")
        if name not in command.exports:
            writes = ", ".join(command.exports) or "none"
            raise InputError(f"exports: memprobe {command_name} does not write {name} (it writes: {writes})")
    return names


def refuse_unused(command_name: str, command: Command) -> None:
    """An input the command would ignore is refused, so that a workflow never believes it set something."""
    takes = {"baseline": command.baseline, "results": command.results, "device": command.measures,
             "relative": command.thresholds, "absolute": command.thresholds, "thresholds": command.thresholds}
    unused = [name for name, taken in takes.items() if read_input(name) and not taken]
    if unused:
        raise InputError(f"memprobe {command_name} takes no {', '.join(unused)} input")


def options_from_inputs(command: Command, out_dir: Path) -> list[str]:
    """The memprobe options that the action's inputs other than ``command`` and ``exports`` stand for."""
    options: list[str] = []
    for name, option in (("baseline", command.baseline), ("results", command.results)):
        if read_input(name):
            options += [option, read_input(name)]
    if command.measures:
        if read_input("device"):
            options += ["--device", read_input("device")]
        options += ["--out-dir", str(out_dir / "runs")]
    for name in ("relative", "absolute"):
        if read_input(name):
            options += [f"--{name}", read_input(name)]
    for spec in read_input("thresholds").splitlines():
        if spec.strip():
            options += ["--threshold", spec.strip()]
    return options


def build_arguments(out_dir: Path) -> tuple[str, list[str], dict[str, Path]]:
    """What the command is called in messages, the memprobe argument list, and the export files by kind."""
    command_name, extra = split_command(read_input("command"))
    command = COMMANDS[command_name]
    label = command_name
    if "--estimate" in extra:  # estimated from sources: nothing is measured, so no --device and no run folders
        command, label = replace(command, measures=False), f"{command_name} --estimate"
    refuse_unused(label, command)
    slug = command_name.replace(" ", "-")
    exports = {name: out_dir / f"{slug}{EXPORT_SUFFIXES[name]}" for name in wanted_exports(label, command)}
    added = options_from_inputs(command, out_dir)
    for name, path in exports.items():
        added += [f"--{name}", str(path)]
    refuse_set_twice(extra, added)
    return label, [*command_name.split(), *extra, *added], exports


def refuse_set_twice(extra: list[str], added: list[str]) -> None:
    """An option in the command input that the action sets from another input (or for its exports) would be
    overridden without a word: refused, naming where it belongs."""
    ours = {word for word in added if word.startswith("--")}
    given = {SHORT_OPTIONS.get(word[:2], word) if not word.startswith("--") else word.split("=", 1)[0] for word in extra}
    clashes = sorted(given & ours)
    if clashes:
        verb = "is" if len(clashes) == 1 else "are"
        raise InputError(f"command: {', '.join(clashes)} {verb} set by the action (from its inputs and out-dir): "
                         f"use the inputs instead")


def prepare_out_dir() -> Path:
    out_dir = Path(read_input("out-dir") or "memprobe-ci")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"out-dir {out_dir} is a file; give a folder")
    return out_dir


def install() -> bool:
    """``install``: ``action`` (default) installs the action's own checkout, ``none`` nothing, else a pip spec."""
    spec = read_input("install") or "action"
    if spec == "none":
        return True
    if spec == "action" or spec.startswith("action["):  # action[sglang]: with an extra (pyproject.toml)
        spec = (os.environ.get("GITHUB_ACTION_PATH") or str(Path(__file__).resolve().parent.parent)) + spec[len("action"):]
    print(f"memprobe-action: pip install {spec}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", spec])
    if done.returncode != 0:
        print(f"memprobe-action: error: pip install {spec} failed (exit {done.returncode})", file=sys.stderr)
    return done.returncode == 0


def run_memprobe(arguments: list[str]) -> tuple[int, list[str]]:
    """Run memprobe with its stdout and stderr shown as they come; also keep stderr's last lines."""
    print(f"memprobe-action: memprobe {shlex.join(arguments)}", file=sys.stderr, flush=True)
    last = collections.deque(maxlen=3)
    process = subprocess.Popen([sys.executable, "-m", "memprobe", *arguments], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.strip():
            last.append(line.rstrip())
    return process.wait(), list(last)


def new_folders(runs: Path, before: set[Path]) -> list[Path]:
    return sorted(path for path in runs.iterdir() if path.is_dir() and path not in before) if runs.is_dir() else []


def write_outputs(outputs: dict[str, str]) -> None:
    """To ``$GITHUB_OUTPUT`` (a delimited block each, since some hold several lines), and to the log."""
    target = os.environ.get("GITHUB_OUTPUT")
    for name, value in outputs.items():
        print(f"memprobe-action: {name}={value!r}", file=sys.stderr)
    if not target:
        return
    with open(target, "a", encoding="utf-8") as stream:
        for name, value in outputs.items():
            delimiter = f"memprobe_{uuid.uuid4().hex}"
            stream.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def summarize_without_markdown(command_name: str, verdict: str, code: int, last_lines: list[str]) -> None:
    """The step summary when memprobe wrote none itself (it appends its Markdown whenever it writes one)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    text = f"### memprobe {command_name}: {verdict} (exit {code})\n\n"
    if code and last_lines:
        text += "```\n" + "\n".join(last_lines) + "\n```\n"
    with open(target, "a", encoding="utf-8") as stream:
        stream.write(text + "\n")


def step_outputs(code: int, out_dir: Path, exports: dict[str, Path], run_dirs: list[Path]) -> dict[str, str]:
    written = {name: path for name, path in exports.items() if path.is_file()}
    outputs = {"verdict": VERDICTS.get(code, "error"), "exit-code": str(code), "out-dir": str(out_dir),
               "run-dirs": "\n".join(str(path) for path in run_dirs)}
    outputs.update({name: str(written[name]) if name in written else "" for name in ("junit-xml", "markdown", "json")})
    outputs["files"] = "\n".join(str(path) for path in [*written.values(), *run_dirs])
    return outputs


def main() -> int:
    try:
        out_dir = prepare_out_dir()
        command_name, arguments, exports = build_arguments(out_dir)
    except (InputError, ValueError) as error:  # ValueError: shlex on an unclosed quote
        print(f"memprobe-action: error: {error}", file=sys.stderr)
        write_outputs({"verdict": VERDICTS[USAGE], "exit-code": str(USAGE)})
        return USAGE
    if not install():
        write_outputs({"verdict": "install-failed", "exit-code": str(MEASUREMENT)})
        return MEASUREMENT
    runs = out_dir / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in exports.values():  # a file left by an earlier job in a kept workspace must not pass for this one's
        path.unlink(missing_ok=True)
    code, last_lines = run_memprobe(arguments)
    outputs = step_outputs(code, out_dir, exports, new_folders(runs, before))
    if not outputs["markdown"]:
        summarize_without_markdown(command_name, outputs["verdict"], code, last_lines)
    write_outputs(outputs)
    return code


if __name__ == "__main__":
    sys.exit(main())
