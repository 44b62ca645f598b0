"""``memprobe compare``: a baseline layout against the MoE layout with each stack (or a scenario file), side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from memprobe import api
from memprobe.commands.options import (
    ALLOW_BUSY, ALL_RANKS, DEFAULT_WIDTHS, DEVICE, ENV_OPT, ENV_PRESET, JSON_SCHEMA, MASTER_ADDR, MASTER_PORT,
    NCCL_LOG, NNODES, NODE_RANK, OUT_DIR, PER_RANK, QUIET, RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, RUN_ID, SPLIT, STACKS,
    TIMEOUT, TIMINGS, VERBOSE, WARMUP, launch_options, layout_options, option,
)
from memprobe.commands.output import check_exports, named_runs, render_and_export, render_timings_of, show_attribution
from memprobe.verbosity import info

Defaults = api.CompareOptions


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
@layout_options
def compare(
    tp: Optional[int] = option(Defaults.tp, "--tp", env="TP", help="TP width (default: every visible GPU)."),
    ep: Optional[int] = option(Defaults.ep, "--ep", env="EP", help="EP width of the MoE scenarios (default: tp / 2)."),
    widths: Mapping[str, Any] = DEFAULT_WIDTHS,
    stacks: Optional[str] = option(Defaults.stacks, "--stacks", env="COMPARE_STACKS", help=STACKS, show_default=False),
    baseline_tp: Optional[int] = option(Defaults.baseline_tp, "--baseline-tp", env="COMPARE_BASELINE_TP",
                                        help="TP width of the baseline (default: --tp)."),
    scenarios: Optional[Path] = option(Defaults.scenarios, "--scenarios", env="COMPARE_SCENARIOS",
                                       help="TOML file of named scenarios (layout, stack, env each); see configs/scenarios/."),
    device: str = DEVICE, warmup: str = WARMUP, env_preset: Optional[str] = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, all_ranks: bool = ALL_RANKS, json_schema: int = JSON_SCHEMA,
    quiet: bool = QUIET, verbose: bool = VERBOSE, split: bool = SPLIT,
    nccl_log: bool = NCCL_LOG, timings: bool = TIMINGS,
    engine: str = option(Defaults.engine, "--engine", env="ENGINE",
                         help="memprobe (also named sglang-ref), sglang, or memprobe,sglang: every scenario on both engines plus a "
                              "fidelity report (reference engine against real SGLang, per rank, group and step); "
                              "vllm-ref, vllm or vllm-ref,vllm: the same for vLLM."),
    sglang: list[str] = option(list(Defaults.sglang), "--sglang", env="COMPARE_SGLANG", metavar="[LABEL=]SITE",
                               help="Add the MoE layout on a real SGLang installation (a site folder), as "
                                    "scenario <moe-layout>.sglang-LABEL with SGLang's own flags (stack installed); "
                                    "LABEL defaults to the release installed in SITE. "
                                    "Repeatable: e.g. one release before the PR and one after."),
    vllm: list[str] = option(list(Defaults.vllm), "--vllm", env="COMPARE_VLLM", metavar="[LABEL=]SITE",
                             help="With --engine vllm-ref: add the compared layout on a real vLLM installation (a site "
                                  "folder), as scenario <layout>.vllm-LABEL with vLLM's own decisions (stack "
                                  "installed); LABEL defaults to the release installed in SITE. Repeatable."),
    jobs: int = option(Defaults.jobs, "--jobs", "-j", env="COMPARE_JOBS",
                       help="How many scenarios run at once. They share one torchrun launch (torch imported once per "
                            "rank), each in processes and CUDA contexts of its own (per-process NVML figures do not "
                            "see each other). 0 = auto: all at once on GPUs, one after another with --device cpu; "
                            "1 = one after another.", show_default=True),
    csv_path: Optional[Path] = option(None, "--csv", env="COMPARE_CSV", help="Long CSV: one row per scenario, rank, group and step."),
    summary_csv: Optional[Path] = option(None, "--summary-csv", env="COMPARE_SUMMARY_CSV", help="One row per scenario and rank."),
    json_path: Optional[Path] = option(None, "--json", env="COMPARE_JSON", help="Everything, as JSON with schema_version."),
    markdown: Optional[Path] = option(None, "--markdown", env="COMPARE_MARKDOWN",
                                      help="The table as GitHub Markdown (also appended to $GITHUB_STEP_SUMMARY)."),
    plot_path: Optional[Path] = option(None, "--plot", env="COMPARE_PLOT",
                                       help="Stacked bars per scenario (.png or .svg; needs matplotlib: memprobe-llm[plot])."),
) -> int:
    """Compare --tp T against --tp T --ep E with the full and the lean stack, per rank, group and communicator.

    Each scenario runs in its own clean set of processes. Examples:

    \b
      memprobe compare --tp 4 --ep 2
      memprobe compare --device cpu --tp 4 --ep 2 --plot /tmp/compare.png
      memprobe compare --device cpu --engine vllm-ref --tp 2 --moe
      memprobe compare --scenarios configs/scenarios/nccl-knobs.toml --csv /tmp/knobs.csv

    Exit codes: 0 ok, 2 bad input (nothing launched), 3 the measurement failed (a rank failed, hung or did not
    start; finished readings are kept), 129, 130 or 143 hung up, interrupted by SIGINT or terminated by SIGTERM.
    Every command: 70 an unexpected error (one line; its traceback in a temp file), 141 standard output's reader
    went away.
    """
    launch = launch_options(device, out_dir, timeout, quiet, nnodes, node_rank, master_addr, master_port, allow_busy_gpu,
                            run_id, nccl_log, rdzv_backend, rdzv_endpoint, rdzv_id)
    check_exports(csv_path, summary_csv, json_path, markdown, plot_path, json_schema)
    comparison = api.compare(tp=tp, ep=ep, **widths, stacks=stacks,
                             baseline_tp=baseline_tp, scenarios=scenarios, warmup=warmup, env_preset=env_preset,
                             env=tuple(env), engine=engine, sglang=tuple(sglang), vllm=tuple(vllm), jobs=jobs, launch=launch)
    if api.gathered_elsewhere(comparison.runs):
        return 0
    render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path,
                      all_ranks=all_ranks, json_schema=json_schema)
    show_attribution(named_runs(comparison), split, nccl_log or None, per_rank)
    if timings:
        render_timings_of(named_runs(comparison))
    info(f"memprobe: results in {comparison.path}")
    return 0
