"""``memprobe run``: measure one scenario and print its table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe.commands.common import (
    ALLOW_BUSY, ATTN_CP, ATTN_DP, DEVICE, ENV, ENV_OPT, ENV_PRESET, EP, MASTER_ADDR, MASTER_PORT, MOE_DP, NNODES, NODE_RANK,
    OUT_DIR, PER_RANK, PP, QUIET, RUN_ID, STACK, TIMEOUT, TP, WARMUP, check_out_dir, console_width, launch_options, layout_from,
    print_rank_warnings,
)
from memprobe.errors import UsageError

def run(
    tp: int = TP, ep: int = EP, pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stack: str = STACK, device: str = DEVICE, warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET,
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe: the reference engine; sglang: the installed SGLang's own "
                                    "initialize_model_parallel, sampled around every group it builds."),
    sglang: str = typer.Option("", "--sglang", envvar=ENV + "SGLANG", metavar="SITE",
                               help="With --engine sglang: the SGLang in this site folder (first on the workers' "
                                    "PYTHONPATH) instead of the importable one. --stack installed keeps its own flags."),
) -> int:
    """Measure one layout: per group and step, the bytes each rank added (min / median / max).

    Writes results/<run-id>/readings.csv and run.json. Example: memprobe run --tp 4 --ep 2 --stack lean
    """
    from memprobe.launch.supervisor import new_run_dir, preflight, run_scenario
    from memprobe.model.scenario import Scenario, parse_env_assignments

    layout = layout_from(tp, ep, pp, moe_dp, attn_dp, attn_cp)
    from memprobe.model.stacks import resolve_stack

    chosen = resolve_stack(stack)
    options = launch_options(device, out_dir, timeout, nnodes, node_rank, master_addr, master_port, allow_busy_gpu, quiet, run_id)
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
    preflight([scenario], options)
    run_dir = out_dir / run_id if run_id else new_run_dir(out_dir, scenario.name)
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists; choose another --run-id")
    from memprobe.launch.progress import Progress

    with Progress(enabled=options.progress) as progress:
        result = run_scenario(scenario, options, run_dir, progress=progress, command=["memprobe", *sys.argv[1:]])
    from memprobe.reports import render_run

    render_run(result, sys.stdout, width=console_width(), per_rank=per_rank)
    print_rank_warnings([(scenario.name, result)])
    return 0
