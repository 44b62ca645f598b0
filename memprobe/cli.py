"""The ``memprobe`` command line. It only parses, builds validated configs, calls one function
and maps the outcome to an exit code (0 ok, 1 regression, 2 bad input, 3 measurement failed,
4 incomparable environment, 130/143 interrupted). Every option can also come from a
``MEMPROBE_<OPTION>`` environment variable.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, TextIO

import typer

try:  # typer >= 0.2x vendors click as typer._click; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    import click.exceptions as click_exceptions

_EXIT_TYPES = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
_ABORT_TYPES = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)})

from memprobe.errors import ExitCode, MemprobeError, UsageError
from memprobe.output_paths import check_output_path

app = typer.Typer(
    name="memprobe",
    help=(
        "Per-rank GPU memory of process groups and communicators at LLM-engine start-up.\n\n"
        "Examples:\n\n"
        "  memprobe plan --tp 8 --ep 4                 # the groups SGLang 0.5.23 builds (no GPU)\n\n"
        "  memprobe run --tp 4 --ep 2 --stack lean     # measure one layout\n\n"
        "  memprobe compare --tp 4 --ep 2              # tp4 vs tp4/ep2 full vs lean, per rank\n\n"
        "  memprobe report results/<run>               # re-render saved runs anywhere\n\n"
        "  memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json   # CI regression gate"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ENV = "MEMPROBE_"


def _layout_options(tp: int, ep: int, pp: int, moe_dp: int, attn_dp: int, attn_cp: int):
    from memprobe.layout import Layout

    return Layout(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp)


TP = typer.Option(..., "--tp", envvar=ENV + "TP", help="Tensor-parallel width (SGLang --tp).", show_default=False)
EP = typer.Option(1, "--ep", envvar=ENV + "EP", help="Expert-parallel width inside each TP group (SGLang --ep).")
PP = typer.Option(1, "--pp", envvar=ENV + "PP", help="Pipeline-parallel width (SGLang --pp); world size = tp x pp.")
MOE_DP = typer.Option(1, "--moe-dp", envvar=ENV + "MOE_DP", help="MoE data-parallel width (SGLang --moe-dp-size).")
ATTN_DP = typer.Option(1, "--attn-dp", envvar=ENV + "ATTN_DP", help="Attention data-parallel width (SGLang --attn-dp-size).")
ATTN_CP = typer.Option(1, "--attn-cp", envvar=ENV + "ATTN_CP", help="Attention context-parallel width (SGLang --attn-cp-size).")
STACK = typer.Option("lean", "--stack", envvar=ENV + "STACK",
                     help="Communicator stack: full (before SGLang PR #22515), lean (SGLang 0.5.23), add ':v1' for the "
                          "v1 custom all-reduce buffers, or a TOML file (see configs/).")


def _common_launch(device: str, out_dir: Path, timeout: float, nnodes: int, node_rank: int, master_addr: str,
                   master_port: Optional[int], allow_busy_gpu: bool, quiet: bool, env: list[str], run_id: Optional[str]):
    from memprobe.config import LaunchOptions
    from memprobe.scenarios import parse_env_assignments

    return LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout, nnodes=nnodes, node_rank=node_rank,
                         master_addr=master_addr, master_port=master_port, allow_busy_gpu=allow_busy_gpu,
                         progress=not quiet, run_id=run_id, extra_env=parse_env_assignments(env))


DEVICE = typer.Option("cuda", "--device", envvar=ENV + "DEVICE",
                      help="cuda: one rank per GPU, NVML readings. cpu: the same pipeline on gloo with host-RSS readings "
                           "(no GPU needed; pynccl and custom all-reduce are skipped).")
OUT_DIR = typer.Option(Path("results"), "--out-dir", envvar=ENV + "OUT_DIR", help="Folder that receives one sub-folder per run.")
RUN_ID = typer.Option(None, "--run-id", envvar=ENV + "RUN_ID", help="Name of the run folder (default: UTC time + layout).")
TIMEOUT = typer.Option(300.0, "--timeout", envvar=ENV + "TIMEOUT", help="Seconds before a run that stopped progressing is killed.")
NNODES = typer.Option(1, "--nnodes", envvar=ENV + "NNODES", help="Nodes (passed to torchrun).")
NODE_RANK = typer.Option(0, "--node-rank", envvar=ENV + "NODE_RANK", help="This node's rank (passed to torchrun).")
MASTER_ADDR = typer.Option("127.0.0.1", "--master-addr", envvar=ENV + "MASTER_ADDR", help="Rendezvous host (passed to torchrun).")
MASTER_PORT = typer.Option(None, "--master-port", envvar=ENV + "MASTER_PORT", help="Rendezvous port (default: a free port).")
ALLOW_BUSY = typer.Option(False, "--allow-busy-gpu", envvar=ENV + "ALLOW_BUSY_GPU",
                          help="Measure even when other processes use the GPUs and only device-level figures are available.")
QUIET = typer.Option(False, "--quiet", "-q", envvar=ENV + "QUIET", help="No progress output.")
ENV_OPT = typer.Option([], "--env", envvar=ENV + "ENV", help="KEY=VALUE for the workers' environment (repeatable), e.g. NCCL_BUFFSIZE=1048576.")
ENV_PRESET = typer.Option("sglang", "--env-preset", envvar=ENV + "ENV_PRESET",
                          help="sglang: SGLang's engine settings (NCCL_CUMEM_ENABLE=0, NCCL_NVLS_ENABLE=0, "
                               "TORCH_NCCL_AVOID_RECORD_STREAMS=1, CUDA_DEVICE_MAX_CONNECTIONS=8) unless already set; none: NCCL defaults.")
WARMUP = typer.Option("tiny", "--warmup", envvar=ENV + "WARMUP",
                      help="First collective on each group after init: none, tiny (1-element all-reduce) or sweep (4 B..64 MiB all-reduce + all-gather).")
PER_RANK = typer.Option(False, "--per-rank", envvar=ENV + "PER_RANK", help="Show every rank, not the worst rank and the spread.")


def _check_out_dir(out_dir: Path) -> None:
    existing = out_dir
    while not existing.exists():
        existing = existing.parent if existing.parent != existing else Path(".")
        if str(existing) in ("", "."):
            existing = Path(".")
            break
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"--out-dir {out_dir}: {existing} is not a writable folder")


def _console_width() -> int:
    return max(100, min(200, int(os.environ.get("COLUMNS", "140"))))


# ----------------------------------------------------------------------------------- plan

@app.command()
def plan(
    tp: int = TP, ep: int = EP, pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stack: str = STACK,
    json_output: bool = typer.Option(False, "--json", envvar=ENV + "JSON", help="Print one JSON document instead of a table."),
) -> int:
    """Print every group SGLang 0.5.23 builds for a layout, with rank lists, aliases and communicators.

    Nothing is launched and no GPU is needed. Example: memprobe plan --tp 8 --ep 4 --stack full
    """
    from memprobe.layout import plan_groups
    from memprobe.stacks import resolve_stack

    layout = _layout_options(tp, ep, pp, moe_dp, attn_dp, attn_cp)
    chosen = resolve_stack(stack)
    groups_plan = plan_groups(layout)
    if json_output:
        _stream_plan_json(groups_plan, chosen, sys.stdout)
        return 0
    from memprobe.reports.plan_table import render_plan

    render_plan(groups_plan, chosen, sys.stdout, width=_console_width())
    return 0


def _stream_plan_json(groups_plan: Any, chosen: Any, stream: TextIO) -> None:
    """One JSON document, written group by group so that 4096-rank plans stream."""
    head = {"world_size": groups_plan.layout.world_size, "layout": groups_plan.layout.as_dict(), "stack": chosen.name}
    stream.write(json.dumps(head)[:-1] + ', "groups": [')
    for index, group in enumerate(groups_plan.groups):
        item = {"name": group.name, "ranks": [list(r) for r in group.rank_lists], "alias_of": group.alias_of,
                "communicators": chosen.communicators_for(group)}
        stream.write(("," if index else "") + json.dumps(item))
    stream.write("]}\n")


# ------------------------------------------------------------------------------------ run

@app.command()
def run(
    tp: int = TP, ep: int = EP, pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stack: str = STACK, device: str = DEVICE, warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET,
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe: the reference engine; sglang: the installed SGLang's own "
                                    "initialize_model_parallel, sampled around every group it builds."),
) -> int:
    """Measure one layout: per group and step, the bytes each rank added (min / median / max).

    Writes results/<run-id>/readings.csv and run.json. Example: memprobe run --tp 4 --ep 2 --stack lean
    """
    from memprobe.launcher import new_run_dir, preflight, run_scenario
    from memprobe.scenarios import Scenario

    layout = _layout_options(tp, ep, pp, moe_dp, attn_dp, attn_cp)
    from memprobe.stacks import resolve_stack

    chosen = resolve_stack(stack)
    options = _common_launch(device, out_dir, timeout, nnodes, node_rank, master_addr, master_port, allow_busy_gpu, quiet, env, run_id)
    label = Path(stack).stem if stack.endswith(".toml") else chosen.name.replace(":", "-")
    suffix = "" if engine == "memprobe" else f".{engine}"
    scenario = Scenario(name=f"{layout.slug()}-{label}{suffix}", layout=layout, stack=stack, env_preset=env_preset,
                        warmup=warmup, engine=engine)
    _check_out_dir(out_dir)
    preflight([scenario], options)
    run_dir = out_dir / run_id if run_id else new_run_dir(out_dir, scenario.name)
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists; choose another --run-id")
    from memprobe.progress import Progress

    with Progress(enabled=options.progress) as progress:
        result = run_scenario(scenario, options, run_dir, progress=progress, command=["memprobe", *sys.argv[1:]])
    from memprobe.reports import render_run

    render_run(result, sys.stdout, width=_console_width(), per_rank=per_rank)
    _print_rank_warnings([(scenario.name, result)])
    return 0


def _print_rank_warnings(runs: list[tuple[str, Any]]) -> None:
    """What workers warned about (a GPU shared with other processes, device-level fallback), once each."""
    seen: set[str] = set()
    for name, run in runs:
        for info in run.record.ranks:
            for warning in info.warnings:
                line = f"memprobe: warning: {name} rank {info.rank}: {warning}"
                if warning not in seen:
                    seen.add(warning)
                    print(line, file=sys.stderr)


# -------------------------------------------------------------------------------- compare

@app.command()
def compare(
    tp: Optional[int] = typer.Option(None, "--tp", envvar=ENV + "TP", help="TP width (default: every visible GPU)."),
    ep: Optional[int] = typer.Option(None, "--ep", envvar=ENV + "EP", help="EP width of the MoE scenarios (default: tp / 2)."),
    pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stacks: str = typer.Option("full,lean", "--stacks", envvar=ENV + "STACKS", help="Comma-separated stacks for the MoE layout."),
    baseline_tp: Optional[int] = typer.Option(None, "--baseline-tp", envvar=ENV + "BASELINE_TP", help="TP width of the baseline (default: --tp)."),
    scenarios: Optional[Path] = typer.Option(None, "--scenarios", envvar=ENV + "SCENARIOS",
                                             help="TOML file of named scenarios (layout, stack, env each); see configs/scenarios/."),
    device: str = DEVICE, warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET,
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe, sglang, or memprobe,sglang: every scenario on both engines plus a "
                                    "fidelity report (reference engine against real SGLang, per rank, group and step)."),
    jobs: int = typer.Option(0, "--jobs", "-j", envvar=ENV + "JOBS",
                             help="Scenarios run side by side, each still in its own processes and CUDA contexts "
                                  "(per-process NVML figures do not see each other). 0 = auto: all at once on GPUs, "
                                  "one after another with --device cpu; 1 = one after another.", show_default=True),
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "CSV", help="Long CSV: one row per scenario, rank, group and step."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "SUMMARY_CSV", help="One row per scenario and rank."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "JSON", help="Everything, as JSON with schema_version."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "MARKDOWN", help="The table as GitHub Markdown (also appended to $GITHUB_STEP_SUMMARY)."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "PLOT", help="Stacked bars per scenario (.png or .svg; needs memprobe[plot])."),
) -> int:
    """Compare --tp T against --tp T --ep E with the full and the lean stack, per rank, group and communicator.

    Each scenario runs in its own clean set of processes. Examples:

      memprobe compare --tp 4 --ep 2

      memprobe compare --scenarios configs/scenarios/nccl-knobs.toml --csv out.csv
    """
    from memprobe.compare import headline_scenarios, run_scenarios
    from memprobe.scenarios import load_scenario_file, parse_env_assignments

    options = _common_launch(device, out_dir, timeout, nnodes, node_rank, master_addr, master_port, allow_busy_gpu, quiet, env, run_id)
    _check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    if jobs < 0:
        raise UsageError(f"--jobs must be 0 (auto) or more, got {jobs}")
    if scenarios is not None:
        scenario_set = load_scenario_file(scenarios)
    else:
        announce = tp is None
        if tp is None:
            tp = _default_tp(device, options)
        if ep is None:
            ep = max(1, tp // 2)
        stack_names = [s.strip() for s in stacks.split(",") if s.strip()]
        if not stack_names:
            raise UsageError("--stacks needs at least one stack, e.g. full,lean")
        from memprobe.stacks import resolve_stack

        for name in stack_names:
            resolve_stack(name)
        scenario_set = headline_scenarios(tp=tp, ep=ep, stacks=stack_names, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp,
                                          attn_cp=attn_cp, baseline_tp=baseline_tp, env_preset=env_preset,
                                          env=parse_env_assignments([]), warmup=warmup)
        if announce:
            print(f"memprobe: no --tp given; comparing the largest layout this node supports: --tp {tp} --ep {ep}", file=sys.stderr)
    from memprobe.compare import with_engines
    from memprobe.scenarios import ENGINES

    engines = list(dict.fromkeys(e.strip() for e in engine.split(",") if e.strip()))
    unknown = [e for e in engines if e not in ENGINES]
    if not engines or unknown:
        raise UsageError(f"--engine {engine!r}: use memprobe, sglang or memprobe,sglang")
    scenario_set = with_engines(scenario_set, engines)
    _check_out_dir(out_dir)
    from memprobe.progress import Progress

    with Progress(enabled=options.progress) as progress:
        comparison = run_scenarios(scenario_set, options, progress=progress, command=["memprobe", *sys.argv[1:]], jobs=jobs)
    _render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    print(f"memprobe: results in {comparison.path}", file=sys.stderr)
    return 0


def _default_tp(device: str, options: Any) -> int:
    if device == "cpu":
        return 4
    from memprobe.config import worker_environment
    from memprobe.launcher import visible_gpu_count
    from memprobe.layout import Layout
    from memprobe.scenarios import Scenario

    count, reason = visible_gpu_count(worker_environment(Scenario(name="probe", layout=Layout(tp=1)), options))
    if count == 0:
        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); use --device cpu or give --tp")
    return count


def _check_exports(csv_path: Optional[Path], summary_csv: Optional[Path], json_path: Optional[Path],
                   markdown: Optional[Path], plot_path: Optional[Path]) -> None:
    taken: dict[Path, str] = {}
    for path, option, suffixes in ((csv_path, "--csv", (".csv",)), (summary_csv, "--summary-csv", (".csv",)),
                                   (json_path, "--json", (".json",)), (markdown, "--markdown", (".md", ".markdown")),
                                   (plot_path, "--plot", (".png", ".svg"))):
        check_output_path(path, option, suffixes=suffixes, taken=taken)
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401  (only checks that the plot extra is installed)
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'memprobe[plot]'") from None


def _render_and_export(comparison: Any, per_rank: bool, csv_path: Optional[Path], summary_csv: Optional[Path],
                       json_path: Optional[Path], markdown: Optional[Path], plot_path: Optional[Path]) -> None:
    from memprobe import reports

    reports.render_comparison(comparison, sys.stdout, width=_console_width(), per_rank=per_rank)
    from memprobe.reports.fidelity import render_fidelity

    render_fidelity(comparison, sys.stdout)
    _print_rank_warnings([(item.scenario.name, item.run) for item in comparison.runs])
    exports = ((csv_path, reports.write_csv), (summary_csv, reports.write_summary_csv), (json_path, reports.write_json),
               (markdown, reports.write_markdown), (plot_path, reports.write_plot))
    written = []
    for path, write in exports:
        if path:
            write(comparison, path)
            written.append(str(path))
    if written:
        print(f"memprobe: wrote {', '.join(written)}", file=sys.stderr)


# --------------------------------------------------------------------------------- report

@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run or comparison folders written by memprobe run/compare.", show_default=False),
    per_rank: bool = PER_RANK,
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "CSV", help="Long CSV export."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "SUMMARY_CSV", help="Per scenario and rank CSV."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "JSON", help="Everything as JSON."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "MARKDOWN", help="GitHub Markdown table."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "PLOT", help="Stacked bars (.png or .svg)."),
) -> int:
    """Re-render saved runs (table, CSV, JSON, Markdown, plot) on any machine, without GPUs.

    Example: memprobe report results/h100x4-compare-tp4-ep2 --markdown table.md
    """
    from memprobe.compare import load_comparison, merge_comparisons

    _check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    comparisons = [load_comparison(path) for path in run_dirs]
    comparison = merge_comparisons(comparisons)
    if len(comparison.runs) == 1 and not any((csv_path, summary_csv, json_path, markdown, plot_path)):
        from memprobe.reports import render_run

        render_run(comparison.runs[0].run, sys.stdout, width=_console_width(), per_rank=per_rank)
        _print_rank_warnings([(comparison.runs[0].scenario.name, comparison.runs[0].run)])
        return 0
    _render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    return 0


def _register_gate() -> None:
    try:
        from memprobe.cli_gate import register
    except ImportError:  # pragma: no cover - gate module missing in a partial checkout
        return
    from memprobe.compare import run_scenarios

    register(app, run_scenarios)


_register_gate()


# ----------------------------------------------------------------------------------- main

def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Optional[list[str]] = None) -> int:
    from memprobe.launcher import interrupt_handlers

    restore = interrupt_handlers()
    try:
        result = app(args=argv, prog_name="memprobe", standalone_mode=False)
        return int(result or 0)
    except _EXIT_TYPES as exit_:
        return int(exit_.exit_code)
    except _ABORT_TYPES:
        print("memprobe: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except click_exceptions.ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `memprobe` alone: show the help
            error.show()
            return int(ExitCode.USAGE)
        command = error.ctx.command_path if getattr(error, "ctx", None) else "memprobe"
        print(f"memprobe: error: {_one_line(error.format_message())} (see '{command} --help')", file=sys.stderr)
        return int(ExitCode.USAGE)
    except MemprobeError as error:
        print(f"memprobe: error: {_one_line(str(error))}", file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt as interrupt:
        import signal

        number = interrupt.args[0] if interrupt.args and isinstance(interrupt.args[0], int) else signal.SIGINT
        code = ExitCode.TERMINATED if number == signal.SIGTERM else ExitCode.INTERRUPTED
        print(f"memprobe: interrupted by {signal.Signals(number).name}; workers stopped, finished readings kept", file=sys.stderr)
        return int(code)
    finally:
        restore()
