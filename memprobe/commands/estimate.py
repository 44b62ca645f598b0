"""``memprobe estimate``: compare's tables for layouts and nodes you do not have, from NCCL's rules and a
one-GPU calibration, labelled as estimates; ``--check`` sets the estimate beside measured runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from memprobe import api
from memprobe.commands.options import (
    ALL_RANKS, DEFAULT_WIDTHS, ENV_OPT, ENV_PRESET, JSON_SCHEMA, PER_RANK, QUIET, STACKS, VERBOSE, WARMUP, layout_options,
    option,
)
from memprobe.commands.output import check_exports, render_and_export
from memprobe.errors import ExitCode, UsageError
from memprobe.paths import refuse_writing_inputs

Defaults = api.EstimateOptions


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
@layout_options
def estimate(
    tp: Optional[int] = option(Defaults.tp, "--tp", env="TP", help="TP width (required unless --scenarios or --check)."),
    ep: Optional[int] = option(Defaults.ep, "--ep", env="EP", help="EP width of the MoE scenarios (default: tp / 2)."),
    widths: Mapping[str, Any] = DEFAULT_WIDTHS,
    stacks: Optional[str] = option(Defaults.stacks, "--stacks", env="ESTIMATE_STACKS", help=STACKS, show_default=False),
    baseline_tp: Optional[int] = option(Defaults.baseline_tp, "--baseline-tp", env="ESTIMATE_BASELINE_TP", help="TP width of the baseline (default: --tp)."),
    scenarios: Optional[Path] = option(Defaults.scenarios, "--scenarios", env="ESTIMATE_SCENARIOS", help="TOML file of named scenarios, as compare reads."),
    warmup: str = WARMUP, env_preset: Optional[str] = ENV_PRESET, env: list[str] = ENV_OPT,
    gpus_per_node: Optional[int] = option(Defaults.gpus_per_node, "--gpus-per-node", env="ESTIMATE_GPUS_PER_NODE",
                                                help="GPUs per node, joined by NVSwitch (default: the world size, at most 8)."),
    nnodes: Optional[int] = option(Defaults.nnodes, "--nnodes", env="ESTIMATE_NNODES",
                                         help="Nodes (default: as many as the world size needs), joined by --network."),
    nccl: Optional[str] = option(Defaults.nccl, "--nccl", env="ESTIMATE_NCCL", metavar="VERSION",
                                 help="The NCCL whose rules apply (2.27.3 to 2.30.7; default: the installed torch's NCCL, read "
                                      "from package metadata without CUDA; without one, the NCCL the engine's release pins (vLLM "
                                      "0.33.0: 2.30.7), else the calibration's)."),
    network: str = option(Defaults.network, "--network", env="ESTIMATE_NETWORK",
                          help="Between nodes: ib-gdr (InfiniBand with GPUDirect RDMA, one NIC per GPU), ib (the same "
                               "without GPUDirect: NET buffers in host memory) or socket (NCCL's socket transport, one "
                               "interface per node)."),
    nic_gbps: Optional[float] = option(Defaults.nic_gbps, "--nic-gbps", env="ESTIMATE_NIC_GBPS",
                                       help="NIC speed in Gb/s (default: 400 for ib-gdr and ib, 10 for socket)."),
    gpu: Optional[str] = option(Defaults.gpu, "--gpu", env="ESTIMATE_GPU", help="GPU model (default: the packaged calibration's, NVIDIA H200)."),
    calibration: Optional[Path] = option(Defaults.calibration, "--calibration", env="ESTIMATE_CALIBRATION",
                                               help="A calibration file from `memprobe calibrate` (default: the packaged one for --gpu)."),
    engine: str = option(Defaults.engine, "--engine", env="ENGINE",
                               help="memprobe (also named sglang-ref) or vllm-ref: the stacks' flags; sglang or vllm: "
                                    "what the installed engine's own start-up (SGLang's initialize_model_parallel, "
                                    "vLLM's init_distributed_environment) asks for, learnt from a --device cpu run of "
                                    "it (torchrun, gloo)."),
    sglang: Optional[Path] = option(Defaults.sglang, "--sglang", env="ESTIMATE_SGLANG", metavar="SITE",
                                          help="With --engine sglang: a site folder holding the sglang package (default: the importable one)."),
    vllm: Optional[Path] = option(Defaults.vllm, "--vllm", env="ESTIMATE_VLLM", metavar="SITE",
                                  help="With --engine vllm: a site folder holding the vllm package (default: the "
                                       "importable one)."),
    check: list[Path] = option([], "--check", env="ESTIMATE_CHECK", metavar="RUN_OR_COMPARISON",
                                     help="Set the estimate beside measured runs (folders of runs are searched), per rank and step; "
                                          "exit 1 if a total is off by more than max(2 %, 16 MiB). Repeatable."),
    timeout: float = option(Defaults.timeout_s, "--timeout", env="TIMEOUT",
                            help="With --engine sglang: the longest a rank of the --device cpu run that learns SGLang's "
                                 "flags may go without a sign of life."),
    per_rank: bool = PER_RANK, all_ranks: bool = ALL_RANKS, json_schema: int = JSON_SCHEMA, quiet: bool = QUIET,
    verbose: bool = VERBOSE,
    csv_path: Optional[Path] = option(None, "--csv", env="ESTIMATE_CSV", help="Long CSV, as compare's (estimated)."),
    summary_csv: Optional[Path] = option(None, "--summary-csv", env="ESTIMATE_SUMMARY_CSV", help="One row per scenario and rank."),
    json_path: Optional[Path] = option(None, "--json", env="ESTIMATE_JSON", help="compare's JSON schema plus a top-level \"estimate\" marker."),
    markdown: Optional[Path] = option(None, "--markdown", env="ESTIMATE_MARKDOWN", help="The table as GitHub Markdown."),
    plot_path: Optional[Path] = option(None, "--plot", env="ESTIMATE_PLOT", help="Stacked bars (.png or .svg; needs memprobe[plot])."),
) -> int:
    """Estimate per-rank communicator memory for a layout you do not have: no GPU, nothing measured.

    The same scenarios and tables as compare, every number labelled as estimated. Examples:

    \b
      memprobe estimate --tp 8 --ep 4
      memprobe estimate --tp 8 --ep 4 --stacks full:v1,lean:v1,lean --per-rank
      memprobe estimate --engine vllm-ref --tp 8 --moe
      memprobe estimate --tp 16 --ep 8 --gpus-per-node 8 --network socket --nic-gbps 100
      memprobe estimate --tp 8 --ep 4 --nccl 2.27.5 --calibration mine.json
      memprobe estimate --check results/h200x4-20261127/compare-tp4-ep2

    Exit codes: 0 done, 1 a --check total off by more than the bound, 2 bad input (nothing estimated or written),
    3 --check found no run it could check. Every command: 70 an unexpected error (one line; its traceback in a temp
    file), 129/130/143 hung up, interrupted, terminated, 141 standard output's reader went away.
    """
    if not timeout > 0:  # checked here: only an --engine sglang estimate launches the run it limits
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout}")
    check_exports(csv_path, summary_csv, json_path, markdown, plot_path, json_schema)
    refuse_writing_inputs({"--csv": csv_path, "--summary-csv": summary_csv, "--json": json_path, "--markdown": markdown,
                           "--plot": plot_path}, [path for path in (scenarios, calibration) if path is not None])
    if check:
        api.check_choices(warmup=warmup, env_preset=env_preset, engine=engine)
        ignored = [option for option, value in (("--tp", tp), ("--ep", ep), ("--scenarios", scenarios), ("--csv", csv_path),
                                                ("--summary-csv", summary_csv), ("--json", json_path),
                                                ("--markdown", markdown), ("--plot", plot_path)) if value is not None]
        if ignored:
            raise UsageError(f"--check estimates the runs it is given and writes no export; {', '.join(ignored)} would be "
                             f"ignored with it")
        return _check(check, gpu, calibration, per_rank)
    comparison = api.estimate(tp=tp, ep=ep, **widths, stacks=stacks,
                              baseline_tp=baseline_tp, scenarios=scenarios, warmup=warmup, env_preset=env_preset,
                              env=tuple(env), gpus_per_node=gpus_per_node, nnodes=nnodes, gpu=gpu, calibration=calibration,
                              engine=engine, sglang=sglang, vllm=vllm, progress=not quiet, timeout_s=timeout, nccl=nccl,
                              network=network, nic_gbps=nic_gbps)
    render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path,
                      all_ranks=all_ranks, json_schema=json_schema)
    basis = comparison.runs[0].run.record.environment["estimate"]
    why = f" [that release: {basis['rules_nccl_why']}]" if basis.get("rules_nccl_why") else ""
    print(f"estimated (not measured) from {basis['rules']}{why} and the calibration {basis['calibration']} "
          f"({basis['gpu_model']}, driver {basis['driver']}, torch {basis['torch']}, NCCL {basis['nccl']}); "
          f"{basis['topology']}", file=sys.stdout)
    for warning in [*basis.get("warnings", []), *comparison.engine_notes()]:
        print(f"memprobe: warning: {warning}", file=sys.stderr)
    return 0


def _check(paths: list[Path], gpu: Optional[str], calibration: Optional[Path], per_rank: bool) -> int:
    from memprobe.reports.estimate_check import render_check

    results = api.check_estimate(paths, gpu, calibration)
    render_check(results, sys.stdout, per_rank=per_rank)
    checked = [result for result in results if not result.skipped]
    if not checked:
        print("memprobe: error: no run could be checked (see the reasons above)", file=sys.stderr)
        return int(ExitCode.MEASUREMENT)
    return 0 if all(result.within for result in checked) else int(ExitCode.REGRESSION)
