"""A newcomer's first hour: help that runs as written, one env-var rule, tables that fit the
terminal, honest CPU output (skipped steps never shown as bytes, host memory named as such), degenerate
comparisons said and not run, a report that does not silently drop a scenario."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from support import synthetic_comparison, write_comparison, headline_scenarios

from memprobe.analysis.attribution import UNATTRIBUTED, components_by_rank
from memprobe.cli import app
from memprobe.errors import UsageError
from memprobe.model.distinct import distinct_scenarios
from memprobe.model.run_files import load_run
from memprobe.model.scenario import headline_scenarios as real_headline
from memprobe.engines.stacks import load_stack_file
from memprobe.engines.sglang import ENGINE
from memprobe.reports import render_comparison, render_run
from memprobe.units import mib

COMMANDS = [[], ["plan"], ["run"], ["compare"], ["report"], ["gate"], ["baseline", "update"]]
# what README commands create before a later one names it (or a placeholder, not a path)
MADE_BY_EARLIER_COMMANDS = ("memprobe-runs/", ".venv", "my-baseline.json", "gate.", "/tmp/", "FILE", "RUN_DIR")


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def path_tokens(text: str) -> set[str]:
    """Words that name a file or folder of the repository (configs/, results/, tools/, a .toml/.json)."""
    tokens = set()
    for word in re.findall(r"[\w./*<>{}-]+", text):
        word = word.strip(".,;:()`'\"")
        if re.match(r"^(configs|results|tools|bench|tests|memprobe)/", word) or ("/" in word and re.search(r"\.(toml|json)$", word)):
            tokens.add(word)
    return tokens


def checkable(token: str) -> bool:
    return not any(part in token for part in MADE_BY_EARLIER_COMMANDS) and not re.search(r"[*<>{}]", token)


def test_every_path_in_help_and_readme_commands_exists():
    texts = [help_text(args) for args in COMMANDS]
    documents = [ROOT / "README.md", ROOT / "configs" / "baselines" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts += re.findall(r"```(?:sh|yaml)\n(.*?)```", "".join(path.read_text() for path in documents), flags=re.S)
    tokens = {token for text in texts for token in path_tokens(text) if checkable(token)}
    assert "configs/baselines/h200x4-tp4-ep2-lean.json" in tokens  # the check does see the examples
    missing = sorted(token for token in tokens if not (ROOT / token).exists())
    assert missing == [], f"help, README or docs/ name paths that do not exist: {missing}"


def test_help_is_plain_text_that_can_be_copied():
    compare = help_text(["compare"])
    assert "memprobe-llm[plot]" in compare  # Rich markup would eat "[plot]" as a tag
    assert "<bool>" not in compare and "│" not in compare
    assert re.search(r"--per-rank\s+Show every rank", compare)  # a flag, shown without a value
    assert "memprobe compare --scenarios configs/scenarios/nccl-knobs.toml --csv /tmp/knobs.csv" in compare


def test_version(memprobe):
    from memprobe import __version__

    result = memprobe("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"memprobe {__version__}"


def test_env_vars_follow_one_rule(memprobe, tmp_path):
    # a command-specific variable belongs to its command: compare's --json path leaves plan alone
    plain = memprobe("plan", "--tp", "2", env={"MEMPROBE_COMPARE_JSON": str(tmp_path / "x.json")})
    assert plain.returncode == 0 and plain.stdout.startswith("memprobe plan:"), plain.stderr
    streamed = memprobe("plan", "--tp", "2", env={"MEMPROBE_PLAN_JSON": "1"})
    assert json.loads(streamed.stdout)["world_size"] == 2
    # a shared option reads MEMPROBE_<OPTION> in every command that has it
    assert json.loads(memprobe("plan", "--json", env={"MEMPROBE_TP": "4"}).stdout)["world_size"] == 4
    gate = help_text(["gate"])
    update = help_text(["baseline", "update"])
    assert "MEMPROBE_GATE_BASELINE" in gate and "MEMPROBE_BASELINE_UPDATE_OUT" in update
    assert "MEMPROBE_BASELINE]" not in gate + update and "MEMPROBE_BASELINE;" not in gate + update
    # --sglang is a SITE for run and gate, LABEL=SITE for compare: each command's own variable
    assert "MEMPROBE_GATE_SGLANG" in gate and "MEMPROBE_RUN_SGLANG" in help_text(["run"])
    assert "MEMPROBE_COMPARE_SGLANG" in help_text(["compare"]) and "MEMPROBE_SGLANG]" not in gate


@pytest.mark.parametrize("per_rank", [False, True])
def test_comparison_fits_80_columns_and_stays_wide_for_files(per_rank):
    comparison = synthetic_comparison()
    narrow, wide = io.StringIO(), io.StringIO()
    render_comparison(comparison, narrow, width=80, per_rank=per_rank)
    render_comparison(comparison, wide, width=160, per_rank=per_rank)
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 80, narrow.getvalue()
    assert "left out to fit 80 columns" in narrow.getvalue()
    assert "after first use" in narrow.getvalue().replace("\n", " ")
    assert "left out" not in wide.getvalue()
    assert ("rank spread" in wide.getvalue()) != per_rank  # every column of its kind on a wide console


def test_run_table_and_plan_fit_80_columns(memprobe):
    text = io.StringIO()
    render_run(synthetic_comparison().get("tp4-ep2-full").run, text, width=80)
    assert max(len(line) for line in text.getvalue().splitlines()) <= 80
    plan = memprobe("plan", "--tp", "8", "--ep", "4", "--pp", "2", env={"COLUMNS": "80"})
    assert max(len(line) for line in plan.stdout.splitlines()) <= 80, plan.stdout
    piped = memprobe("plan", "--tp", "8", "--ep", "4", "--pp", "2", env={"COLUMNS": ""})
    assert max(len(line) for line in piped.stdout.splitlines()) > 80  # a pipe gets the wide default


def test_console_width_rules(monkeypatch):
    from memprobe.commands.output import WIDE_OUTPUT, console_width

    monkeypatch.setenv("COLUMNS", "93")
    assert console_width() == 93
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert console_width() == WIDE_OUTPUT


def test_cpu_run_shows_skipped_steps_as_skipped_and_names_host_memory(memprobe, cpu_compare):
    folder, _ = cpu_compare  # its tp2-ep2-full run: the full stack, moe_ep of width 2 (conftest.py)
    run_dir = folder / "memprobe-runs" / "c" / "tp2-ep2-full"
    result = memprobe("report", str(run_dir))  # the table the run printed (test_pipeline_cpu.py)
    assert result.returncode == 0, result.stderr
    run = load_run(run_dir)
    skipped = {(r.rank, f"{r.group}/{r.step}") for r in run.readings if r.status == "skipped" and r.group}
    assert skipped, "the CPU device skips every GPU communicator"
    for rank, parts in components_by_rank(run).items():
        for _, key in (item for item in skipped if item[0] == rank):
            if key in parts:
                assert parts[key] == 0, (rank, key)  # host noise is never charged to a step that did nothing
        readings = sorted((r for r in run.readings if r.rank == rank), key=lambda r: r.sequence)
        # the parts still add up to end - start: the noise went to "unattributed"
        step_keys = [k for k in parts if k in ("cuda_context", "world", UNATTRIBUTED)
                     or k.rsplit("/", 1)[-1] in ("groups_created", "pynccl", "custom_allreduce", "first_use")]
        assert sum(parts[k] for k in step_keys) == readings[-1].primary_bytes - readings[0].primary_bytes
    out = result.stdout
    assert "GPU" not in out and "CUDA context " not in out.split("skipped on every rank")[0]
    assert "host memory (RSS)" in out
    assert "tp: pynccl" not in out and "tp/pynccl" in out.split("skipped on every rank")[1]


def test_cpu_compare_says_what_is_degenerate_and_runs_only_what_differs(memprobe, cpu_compare):
    tmp_path, result = cpu_compare  # compare --device cpu --tp 2 --ep 2 --run-id c --plot c.svg ... (conftest.py)
    assert result.returncode == 0, result.stderr
    assert "tp2-ep2-lean would measure the same as tp2-ep2-full" in result.stderr
    assert sorted(p.name for p in (tmp_path / "memprobe-runs" / "c").iterdir() if p.is_dir()) == ["tp2", "tp2-ep2-full"]
    assert "lean saves" not in result.stdout and "GPU" not in result.stdout
    assert "host memory (RSS) per rank" in result.stdout
    # real CPU readings give width-1 groups a few host bytes, hence more columns: still within 80
    narrow = memprobe("report", str(tmp_path / "memprobe-runs" / "c"), env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    svg = (tmp_path / "c.svg").read_text()
    assert "GPU memory" not in svg and "host memory (RSS)" in svg


def test_distinct_scenarios_of_degenerate_layouts():
    kept, notes = distinct_scenarios(real_headline("memprobe", {"tp": 1, "ep": 1}, stacks=["full", "lean"]))
    assert [s.name for s in kept.scenarios] == ["tp1"] and len(notes) == 2
    kept, _ = distinct_scenarios(real_headline("memprobe", {"tp": 2, "ep": 1}, stacks=["full", "lean"]))
    assert [s.name for s in kept.scenarios] == ["tp2"]
    kept, notes = distinct_scenarios(real_headline("memprobe", {"tp": 4, "ep": 2}, stacks=["full", "lean"]))
    assert [s.name for s in kept.scenarios] == ["tp4", "tp4-ep2-full", "tp4-ep2-lean"] and notes == []


def test_distinct_scenarios_keep_every_sglang_installation():
    # compare --tp 2 --ep 2 --sglang a=/x --sglang b=/y: lean repeats full, the two
    # real-SGLang scenarios (same layout, stack installed) differ by installation and both run
    scenario_set = real_headline("memprobe", {"tp": 2, "ep": 2}, stacks=["full", "lean"], sglang_sites=[("a", "/x"), ("b", "/y")])
    kept, notes = distinct_scenarios(scenario_set)
    assert [s.name for s in kept.scenarios] == ["tp2", "tp2-ep2-full", "tp2-ep2.sglang-a", "tp2-ep2.sglang-b"]
    assert len(notes) == 1 and notes[0].startswith("tp2-ep2-lean would measure the same as tp2-ep2-full")
    # the same installation twice is one measurement
    kept, notes = distinct_scenarios(real_headline("memprobe", {"tp": 2, "ep": 2}, stacks=["lean"], sglang_sites=[("a", "/x"), ("b", "/x")]))
    assert [s.name for s in kept.scenarios] == ["tp2", "tp2-ep2-lean", "tp2-ep2.sglang-a"]
    assert notes[-1].startswith("tp2-ep2.sglang-b would measure the same as tp2-ep2.sglang-a")


def test_report_of_a_comparison_missing_a_scenario_fails_and_says_so(memprobe, tmp_path):
    folder = write_comparison(tmp_path / "cmp", synthetic_comparison(), headline_scenarios())
    shutil.rmtree(next(p for p in folder.iterdir() if p.name.endswith("lean")))
    result = memprobe("report", str(folder))
    assert result.returncode == 3
    assert "tp4-ep2-lean" in result.stderr and "not shown" in result.stderr


def test_stack_errors_name_what_the_user_wrote(memprobe, tmp_path):
    result = memprobe("compare", "--device", "cpu", "--tp", "2", "--stacks", "full,medium")
    assert result.returncode == 2 and "--stacks 'medium'" in result.stderr
    result = memprobe("run", "--device", "cpu", "--tp", "2", "--warmup", "huge")
    assert result.returncode == 2 and result.stderr.startswith("memprobe: error: --warmup 'huge'")
    assert ENGINE.resolve_stack("lean:v2").option("custom_allreduce_impl") == "v2"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(UsageError, match="sets neither base"):
        load_stack_file(ENGINE, empty)


def test_small_negative_numbers_read_as_such():
    assert mib(-100) == ">-0.1" and mib(100, signed=True) == "<0.1"
