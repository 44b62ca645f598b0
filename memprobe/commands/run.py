"""``memprobe run``: measure one scenario and print its table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from memprobe import api
from memprobe.commands.options import (
    ALLOW_BUSY, DEFAULT_WIDTHS, DEVICE, ENV_OPT, ENV_PRESET, EP, JSON_SCHEMA, MASTER_ADDR, MASTER_PORT, NCCL_LOG,
    NNODES, NODE_RANK, OUT_DIR, PER_RANK, QUIET, RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, RUN_ID, SPLIT, STACK, TIMEOUT,
    TIMINGS, TP, VERBOSE, WARMUP, launch_options, layout_options, option,
)
from memprobe.commands.output import console_width, print_rank_warnings, render_timings_of, show_attribution
from memprobe.errors import UsageError
from memprobe.paths import check_output_path


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
@layout_options
def run(
    tp: int = TP, ep: int = EP, widths: Mapping[str, Any] = DEFAULT_WIDTHS,
    stack: Optional[str] = STACK, device: str = DEVICE, warmup: str = WARMUP, env_preset: Optional[str] = ENV_PRESET, env: list[str] = ENV_OPT,
    out_dir: Path = OUT_DIR, run_id: Optional[str] = RUN_ID, timeout: float = TIMEOUT, nnodes: int = NNODES,
    node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    allow_busy_gpu: bool = ALLOW_BUSY, per_rank: bool = PER_RANK, quiet: bool = QUIET, verbose: bool = VERBOSE, split: bool = SPLIT,
    nccl_log: bool = NCCL_LOG, timings: bool = TIMINGS,
    engine: str = option(api.RunOptions.engine, "--engine", env="ENGINE",
                         help="sglang-ref (or its older name memprobe): memprobe's reproduction of SGLang's start-up; "
                              "sglang: the installed SGLang's own initialize_model_parallel, sampled around every "
                              "group it builds; vllm-ref / vllm: the same for vLLM (vllm runs the installed vLLM's "
                              "own init_distributed_environment + ensure_model_parallel_initialized)."),
    sglang: str = option(api.RunOptions.sglang, "--sglang", env="RUN_SGLANG", metavar="SITE",
                         help="With --engine sglang: the SGLang in this site folder (first on the workers' "
                              "PYTHONPATH) instead of the importable one. --stack installed keeps its own flags."),
    vllm: str = option(api.RunOptions.vllm, "--vllm", env="RUN_VLLM", metavar="SITE",
                       help="With --engine vllm: the vLLM in this site folder (first on the workers' PYTHONPATH) "
                            "instead of the importable one."),
    json_path: Optional[Path] = option(None, "--json", env="RUN_JSON",
                                       help="Also write the run as JSON (compare's schema, with schema_version: "
                                            "docs/schema/comparison.schema.json)."),
    json_schema: int = JSON_SCHEMA,
) -> int:
    """Measure one layout: per group and step, the bytes each rank added (min / median / max).

    Writes readings.csv and run.json to memprobe-runs/RUN_ID/ (see --out-dir, --run-id). Examples:

    \b
      memprobe run --tp 4 --ep 2 --stack lean
      memprobe run --device cpu --tp 4 --ep 2 --stack full
      memprobe run --device cpu --engine vllm-ref --tp 2 --moe --stack shared-ep

    Exit codes: 0 ok, 2 bad input (nothing launched), 3 the measurement failed (a rank failed, hung or did not
    start; finished readings are kept), 129, 130 or 143 hung up, interrupted by SIGINT or terminated by SIGTERM.
    Every command: 70 an unexpected error (one line; its traceback in a temp file), 141 standard output's reader
    went away.
    """
    launch = launch_options(device, out_dir, timeout, quiet, nnodes, node_rank, master_addr, master_port, allow_busy_gpu,
                            run_id, nccl_log, rdzv_backend, rdzv_endpoint, rdzv_id)
    check_output_path(json_path, "--json", suffixes=(".json",))
    if json_schema not in (1, 2):
        raise UsageError(f"--json-schema must be 1 or 2, got {json_schema}")
    result = api.run(tp=tp, ep=ep, **widths, stack=stack, warmup=warmup,
                     env_preset=env_preset, env=tuple(env), engine=engine, sglang=sglang, vllm=vllm, launch=launch)
    if api.gathered_elsewhere([result]):
        return 0
    from memprobe.reports import render_run

    runs = [(result.scenario.name, result.run)]
    render_run(result.run, sys.stdout, width=console_width(), per_rank=per_rank)
    show_attribution(runs, split, nccl_log, per_rank)
    if timings:
        render_timings_of(runs)
    print_rank_warnings(runs)
    if json_path is not None:
        assert result.run.path is not None  # a measured run always has its folder
        _write_json(result.run.path, json_path, json_schema)
    return 0


def _write_json(run_dir: Path, json_path: Path, schema: int) -> None:
    """The document ``memprobe report RUN_DIR --json`` writes: read back from the run folder, so the two agree."""
    from memprobe.model.comparison import load_comparison
    from memprobe.reports import write_json
    from memprobe.verbosity import info

    write_json(load_comparison(run_dir), json_path, schema=schema)
    info(f"memprobe: wrote {json_path}")
