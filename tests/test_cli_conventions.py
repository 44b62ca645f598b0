"""What a user expects of a command line: --quiet / --verbose on every command, results on stdout and the
rest on stderr, exit codes in each --help, NO_COLOR and --no-color, shell completion."""

from __future__ import annotations

import io
import os
import re

import pytest
from typer.testing import CliRunner

from memprobe import verbosity
from memprobe.cli import app
from memprobe.launch.progress import Progress
from support import headline_scenarios, synthetic_comparison, write_comparison

COMMANDS = [["plan"], ["run"], ["compare"], ["report"], ["estimate"], ["calibrate"], ["gate"], ["baseline", "update"]]
STYLE = re.compile(r"\x1b\[[0-9;]*m")  # an ANSI colour or style (SGR) sequence


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def level():
    """Set the verbosity for a test and put the default back afterwards (it is one per process)."""
    yield verbosity.apply
    verbosity.apply(False, False)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_quiet_verbose_and_lists_its_exit_codes(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "-q, --quiet" in result.output and "-v, --verbose" in result.output
    assert re.search(r"Exit codes: 0 [^\n]*2 ", result.output)


def test_quiet_and_verbose_together_is_one_line_and_exit_2(memprobe):
    result = memprobe("plan", "--tp", "2", "--quiet", "--verbose")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "memprobe: error: --quiet and --verbose contradict each other; give one of them\n"


def test_quiet_drops_the_confirmations_verbose_adds_details_and_the_results_stay_the_same(level, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_comparison(tmp_path / "saved", synthetic_comparison(), headline_scenarios())
    runs = {flag: CliRunner().invoke(app, ["report", "saved", "--summary-csv", f"s{flag}.csv", *([flag] if flag else [])],
                                     env={"COLUMNS": "200"})
            for flag in ("--quiet", "", "--verbose")}
    assert all(result.exit_code == 0 for result in runs.values()), [r.output for r in runs.values()]
    assert runs["--quiet"].stdout == runs[""].stdout == runs["--verbose"].stdout != ""
    assert runs["--quiet"].stderr == ""
    assert runs[""].stderr == "memprobe: wrote s.csv\n"
    assert runs["--verbose"].stderr.startswith("memprobe: read saved: tp4, tp4-ep2-full, tp4-ep2-lean\n")


def test_progress_is_sparse_by_default_every_step_with_verbose_and_none_with_quiet(level):
    seen = {}
    for name, flags in (("quiet", (True, False)), ("default", (False, False)), ("verbose", (False, True))):
        level(*flags)
        stream = io.StringIO()
        with Progress(stream=stream) as progress:
            for done in range(4):
                progress("tp2", done, 3, f"step {done}")
        seen[name] = stream.getvalue().splitlines()
    assert seen["quiet"] == []
    assert seen["default"] == ["memprobe: tp2: 0/3 steps (step 0)", "memprobe: tp2: 3/3 steps (step 3)"]
    assert len(seen["verbose"]) == 4


def test_no_color_and_the_no_color_option_take_every_style_off_the_progress_bar(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "")  # empty: not set, per no-color.org

    def bar() -> str:
        stream = Terminal()
        with Progress(stream=stream) as progress:
            progress("tp2", 0, 2, "starting")
            progress("tp2", 2, 2, "end")
        return stream.getvalue()

    assert STYLE.search(bar())  # styled on a terminal by default
    assert CliRunner().invoke(app, ["--no-color", "plan", "--tp", "1"]).exit_code == 0
    assert os.environ["NO_COLOR"] == "1"
    assert "tp2" in bar() and not STYLE.search(bar())


def test_shell_completion_completes_commands_and_options(memprobe):
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output
    bash = {"_MEMPROBE_COMPLETE": "complete_bash", "COMP_WORDS": "memprobe pl", "COMP_CWORD": "1"}
    assert memprobe(env=bash).stdout.split() == ["plan"]  # through the real entry point
    bash.update(COMP_WORDS="memprobe gate --ba", COMP_CWORD="2")
    assert "--baseline" in CliRunner().invoke(app, [], prog_name="memprobe", env=bash).output.split()
