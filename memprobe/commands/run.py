"""``memprobe run``: measure one scenario and print its table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe.commands.common import (
    ALLOW_BUSY, ATTN_CP, ATTN_DP, DEVICE, ENV, ENV_OPT, ENV_PRESET, EP, MASTER_ADDR, MASTER_PORT, MOE_DP, NNODES, NODE_RANK,
    NCCL_LOG, OUT_DIR, PER_RANK, PP, QUIET, RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, RUN_ID, SPLIT, STACK, TIMEOUT, TIMINGS, TP,
    VERBOSE, WARMUP, check_choices, check_out_dir, console_width, launch_options, layout_from, print_rank_warnings,
    gathered_elsewhere, render_timings_of, show_attribution,
)
from memprobe.commands.paths import check_output_path
from memprobe.errors import UsageError

# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def run(
    tp: int = TP, ep: int = EP, pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stack: str = STACK, device: str = DEVICE, warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET, verbose: bool = VERBOSE, split: bool = SPLIT,
    nccl_log: bool = NCCL_LOG, timings: bool = TIMINGS,
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe: the reference engine; sglang: the installed SGLang's own "
                                    "initialize_model_parallel, sampled around every group it builds."),
    sglang: str = typer.Option("", "--sglang", envvar=ENV + "RUN_SGLANG", metavar="SITE",
                               help="With --engine sglang: the SGLang in this site folder (first on the workers' "
                                    "PYTHONPATH) instead of the importable one. --stack installed keeps its own flags."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "RUN_JSON",
                                             help="Also write the run as JSON (compare's schema, with schema_version: "
                                                  "docs/schema/comparison.schema.json)."),
) -> int:
    """Measure one layout: per group and step, the bytes each rank added (min / median / max).

    Writes readings.csv and run.json to memprobe-runs/RUN_ID/ (see --out-dir, --run-id). Examples:

    \b
      memprobe run --tp 4 --ep 2 --stack lean
      memprobe run --device cpu --tp 4 --ep 2 --stack full

    Exit codes: 0 ok, 2 bad input (nothing launched), 3 the measurement failed (a rank failed, hung or did not
    start; finished readings are kept), 130 or 143 interrupted by SIGINT or SIGTERM.
    """
    from memprobe.launch.prepare import new_run_dir, preflight
    from memprobe.launch.several import run_scenario
    from memprobe.model.scenario import Scenario, parse_env_assignments

    layout = layout_from(tp, ep, pp, moe_dp, attn_dp, attn_cp)
    check_choices(warmup=warmup, env_preset=env_preset, engine=engine)
    from memprobe.model.stacks import resolve_stack

    chosen = resolve_stack(stack)
    options = launch_options(device, out_dir, timeout, nnodes, node_rank, master_addr, master_port, allow_busy_gpu, quiet, run_id,
                             nccl_log, rdzv_backend, rdzv_endpoint, rdzv_id)
    label = Path(stack).stem if stack.endswith(".toml") else chosen.name.replace(":", "-")
    suffix = "" if engine == "memprobe" else f".{engine}"
    if sglang:
        from memprobe.measure.sglang_install import check_site

        if engine != "sglang":
            raise UsageError("--sglang needs --engine sglang")
        sglang = check_site(sglang)
    scenario = Scenario(name=f"{layout.slug()}-{label}{suffix}", layout=layout, stack=stack, env_preset=env_preset,
                        env=parse_env_assignments(env), warmup=warmup, engine=engine, sglang=sglang)
    check_out_dir(out_dir)
    check_output_path(json_path, "--json", suffixes=(".json",))
    preflight([scenario], options)
    run_dir = out_dir / run_id if run_id else new_run_dir(out_dir, scenario.name)
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists; choose another --run-id")
    from memprobe.launch.progress import Progress
    from memprobe.verbosity import detail

    detail(f"memprobe: measuring {scenario.name} on --device {device} into {run_dir}")
    with Progress(enabled=options.progress) as progress:
        result = run_scenario(scenario, options, run_dir, progress=progress, command=["memprobe", *sys.argv[1:]])
    if gathered_elsewhere([(scenario.name, result)]):
        return 0
    from memprobe.reports import render_run

    render_run(result, sys.stdout, width=console_width(), per_rank=per_rank)
    show_attribution([(scenario.name, result)], split, nccl_log, per_rank)
    if timings:
        render_timings_of([(scenario.name, result)])
    print_rank_warnings([(scenario.name, result)])
    if json_path is not None:
        _write_json(run_dir, json_path)
    return 0


def _write_json(run_dir: Path, json_path: Path) -> None:
    """The document ``memprobe report RUN_DIR --json`` writes: read back from the run folder, so the two agree."""
    from memprobe.model.comparison import load_comparison
    from memprobe.reports import write_json
    from memprobe.verbosity import info

    write_json(load_comparison(run_dir), json_path)
    info(f"memprobe: wrote {json_path}")
