"""``memprobe compare``: a baseline layout against the MoE layout with each stack (or a scenario file), side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from memprobe.commands.common import (
    ALLOW_BUSY, ATTN_CP, ATTN_DP, DEVICE, ENV, ENV_OPT, ENV_PRESET, MASTER_ADDR, MASTER_PORT, MOE_DP, NNODES, NODE_RANK,
    NCCL_LOG, OUT_DIR, PER_RANK, PP, QUIET, RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, RUN_ID, SPLIT, TIMEOUT, TIMINGS, VERBOSE, WARMUP,
    check_choices, check_exports, check_out_dir, launch_options, measure, gathered_elsewhere, render_and_export,
    render_timings_of, show_attribution,
)
from memprobe.errors import UsageError
from memprobe.verbosity import info

# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def compare(
    tp: Optional[int] = typer.Option(None, "--tp", envvar=ENV + "TP", help="TP width (default: every visible GPU)."),
    ep: Optional[int] = typer.Option(None, "--ep", envvar=ENV + "EP", help="EP width of the MoE scenarios (default: tp / 2)."),
    pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stacks: str = typer.Option("full,lean", "--stacks", envvar=ENV + "COMPARE_STACKS", help="Comma-separated stacks for the MoE layout."),
    baseline_tp: Optional[int] = typer.Option(None, "--baseline-tp", envvar=ENV + "COMPARE_BASELINE_TP", help="TP width of the baseline (default: --tp)."),
    scenarios: Optional[Path] = typer.Option(None, "--scenarios", envvar=ENV + "COMPARE_SCENARIOS",
                                             help="TOML file of named scenarios (layout, stack, env each); see configs/scenarios/."),
    device: str = DEVICE, warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET, verbose: bool = VERBOSE, split: bool = SPLIT,
    nccl_log: bool = NCCL_LOG, timings: bool = TIMINGS,
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe, sglang, or memprobe,sglang: every scenario on both engines plus a "
                                    "fidelity report (reference engine against real SGLang, per rank, group and step)."),
    sglang: list[str] = typer.Option([], "--sglang", envvar=ENV + "COMPARE_SGLANG", metavar="LABEL=SITE",
                                     help="Add the MoE layout on a real SGLang installation (a site folder), as "
                                          "scenario <moe-layout>.sglang-LABEL with SGLang's own flags (stack installed). "
                                          "Repeatable: e.g. one release before the PR and one after."),
    jobs: int = typer.Option(0, "--jobs", "-j", envvar=ENV + "COMPARE_JOBS",
                             help="How many scenarios run at once. They share one torchrun launch (torch imported once per "
                                  "rank), each in processes and CUDA contexts of its own (per-process NVML figures do not "
                                  "see each other). 0 = auto: all at once on GPUs, one after another with --device cpu; "
                                  "1 = one after another.", show_default=True),
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "COMPARE_CSV", help="Long CSV: one row per scenario, rank, group and step."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "COMPARE_SUMMARY_CSV", help="One row per scenario and rank."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "COMPARE_JSON", help="Everything, as JSON with schema_version."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "COMPARE_MARKDOWN", help="The table as GitHub Markdown (also appended to $GITHUB_STEP_SUMMARY)."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "COMPARE_PLOT", help="Stacked bars per scenario (.png or .svg; needs matplotlib: memprobe-llm[plot])."),
) -> int:
    """Compare --tp T against --tp T --ep E with the full and the lean stack, per rank, group and communicator.

    Each scenario runs in its own clean set of processes. Examples:

    \b
      memprobe compare --tp 4 --ep 2
      memprobe compare --device cpu --tp 4 --ep 2 --plot /tmp/compare.png
      memprobe compare --scenarios configs/scenarios/nccl-knobs.toml --csv /tmp/knobs.csv

    Exit codes: 0 ok, 2 bad input (nothing launched), 3 the measurement failed (a rank failed, hung or did not
    start; finished readings are kept), 130 or 143 interrupted by SIGINT or SIGTERM.
    """
    from memprobe.model.scenario import load_scenario_file, parse_env_assignments, with_env

    options = launch_options(device, out_dir, timeout, nnodes, node_rank, master_addr, master_port, allow_busy_gpu, quiet, run_id,
                             nccl_log, rdzv_backend, rdzv_endpoint, rdzv_id)
    check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    check_choices(warmup=warmup, env_preset=env_preset)
    if jobs < 0:
        raise UsageError(f"--jobs must be 0 (auto) or more, got {jobs}")
    extra_env = parse_env_assignments(env)
    sglang_sites = _sglang_sites(sglang)
    if scenarios is not None:
        _refuse_ignored_with_file(tp=tp, ep=ep, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp, stacks=stacks,
                                  baseline_tp=baseline_tp, warmup=warmup, env_preset=env_preset, sglang=sglang_sites)
        scenario_set = with_env(load_scenario_file(scenarios), extra_env)
    else:
        scenario_set = _headline_set(tp, ep, pp, moe_dp, attn_dp, attn_cp, stacks, baseline_tp, env_preset, extra_env,
                                     warmup, sglang_sites, device, options)
    from memprobe.model.scenario import with_engines
    from memprobe.model.scenario import ENGINES

    engines = list(dict.fromkeys(e.strip() for e in engine.split(",") if e.strip()))
    unknown = [e for e in engines if e not in ENGINES]
    if not engines or unknown:
        raise UsageError(f"--engine {engine!r}: use memprobe, sglang or memprobe,sglang")
    scenario_set = with_engines(scenario_set, engines)
    nccl_settings = sorted({key for s in scenario_set.scenarios for key in s.env if key.startswith(("NCCL_", "TORCH_NCCL_"))})
    if device == "cpu" and nccl_settings:
        print(f"memprobe: note: --device cpu builds gloo groups only: {', '.join(nccl_settings)} "
              f"{'changes' if len(nccl_settings) == 1 else 'change'} nothing there (scenarios that differ only in "
              f"{'it' if len(nccl_settings) == 1 else 'them'} differ by host-memory noise)", file=sys.stderr)
    check_out_dir(out_dir)
    comparison = measure(scenario_set, options, jobs=jobs)
    if gathered_elsewhere([(item.scenario.name, item.run) for item in comparison.runs]):
        return 0
    render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    show_attribution([(item.scenario.name, item.run) for item in comparison.runs], split, nccl_log or None, per_rank)
    if timings:
        render_timings_of([(item.scenario.name, item.run) for item in comparison.runs])
    info(f"memprobe: results in {comparison.path}")
    return 0



def _sglang_sites(items: list[str]) -> list[tuple[str, str]]:
    from memprobe.measure.sglang_install import check_site
    from memprobe.model.scenario import parse_sglang_sites

    return [(label, check_site(path, f"--sglang {label}={path}")) for label, path in parse_sglang_sites(items)]


def _default_tp(device: str, options: Any) -> int:
    if device == "cpu":
        return 4
    from memprobe.launch.options import worker_environment
    from memprobe.launch.prepare import visible_gpu_count
    from memprobe.model.layout import Layout
    from memprobe.model.scenario import Scenario

    count, reason = visible_gpu_count(worker_environment(Scenario(name="probe", layout=Layout(tp=1)), options))
    if count == 0:
        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); use --device cpu or give --tp")
    return count


def _refuse_ignored_with_file(**given: Any) -> None:
    """A scenario file sets each scenario's layout, stacks, warm-up, preset and SGLang: the options for them
    are refused with --scenarios unless left at their defaults (read from compare's own declarations; issue 17)."""
    import inspect

    defaults = {name: parameter.default.default for name, parameter in inspect.signature(compare).parameters.items()}
    ignored = [name for name, value in given.items() if value != defaults[name]]
    if ignored:
        options = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise UsageError(f"--scenarios FILE sets each scenario's layout, stacks, warm-up, preset and SGLang; {options} "
                         f"would be ignored with it: put them in the file (per scenario or under [defaults])")


def _headline_set(tp: Optional[int], ep: Optional[int], pp: int, moe_dp: int, attn_dp: int, attn_cp: int, stacks: str,
                  baseline_tp: Optional[int], env_preset: str, env: dict[str, str], warmup: str,
                  sglang_sites: list[tuple[str, str]], device: str, options: Any) -> Any:
    """--tp T as the baseline, the MoE layout once per stack and SGLang installation; repeats dropped with a note."""
    from memprobe.model.distinct import distinct_scenarios
    from memprobe.model.scenario import headline_scenarios
    from memprobe.model.stacks import resolve_stack

    announce = tp is None
    if tp is None:
        tp = _default_tp(device, options)
    if ep is None:
        ep = max(1, tp // 2)
    stack_names = [s.strip() for s in stacks.split(",") if s.strip()]
    if not stack_names:
        raise UsageError("--stacks needs at least one stack, e.g. full,lean")
    for name in stack_names:
        resolve_stack(name, option="--stacks")
    scenario_set = headline_scenarios(tp=tp, ep=ep, stacks=stack_names, pp=pp, moe_dp=moe_dp, attn_dp=attn_dp,
                                      attn_cp=attn_cp, baseline_tp=baseline_tp, env_preset=env_preset,
                                      env=env, warmup=warmup, sglang_sites=sglang_sites)
    if announce:
        print(f"memprobe: no --tp given; comparing the largest layout this node supports: --tp {tp} --ep {ep}", file=sys.stderr)
    scenario_set, repeats = distinct_scenarios(scenario_set)
    for line in repeats:
        print(f"memprobe: note: {line}", file=sys.stderr)
    return scenario_set
