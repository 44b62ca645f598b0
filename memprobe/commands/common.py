"""What the commands share: Typer options, the builders of validated configs from them, and the
rendering of a finished comparison with its exports.

Environment variables, one rule (issue 15): an option that means the same in every command that has
it (those defined here: layout widths, --stack, --device, --warmup, --env-preset, --env, --engine,
--out-dir, --run-id, --timeout, the torchrun options, --allow-busy-gpu, --per-rank, --quiet, --verbose) reads
``MEMPROBE_<OPTION>``; every other option, a command's own files and switches, reads
``MEMPROBE_<COMMAND>_<OPTION>`` (``MEMPROBE_COMPARE_JSON``, ``MEMPROBE_PLAN_JSON``,
``MEMPROBE_GATE_BASELINE``, ``MEMPROBE_BASELINE_UPDATE_OUT``), so setting one never changes another
command's meaning."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from memprobe.commands.paths import check_output_path
from memprobe.errors import UsageError
from memprobe.launch.options import CPU_RANKS_PER_NODE, DEFAULT_OUT_DIR  # noqa: F401  (DEFAULT_OUT_DIR: also the gate's and baseline update's default)

ENV = "MEMPROBE_"


def layout_from(tp: int, ep: int, pp: int, moe_dp: int, attn_dp: int, attn_cp: int):
    from memprobe.model.layout import Layout

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


def launch_options(device: str, out_dir: Path, timeout: float, nnodes: int, node_rank: int, master_addr: str,
                   master_port: Optional[int], allow_busy_gpu: bool, quiet: bool, run_id: Optional[str],
                   nccl_log: bool = False, rdzv_backend: str = "c10d", rdzv_endpoint: Optional[str] = None,
                   rdzv_id: Optional[str] = None):
    """How scenarios are launched. ``--env`` is not here: it belongs to each scenario's identity (issue 12)."""
    from memprobe.launch.options import LaunchOptions

    return LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout, nnodes=nnodes, node_rank=node_rank,
                         master_addr=master_addr, master_port=master_port, allow_busy_gpu=allow_busy_gpu,
                         progress=not quiet, run_id=run_id, nccl_log=nccl_log,
                         rdzv_backend=rdzv_backend, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)


DEVICE = typer.Option("cuda", "--device", envvar=ENV + "DEVICE",
                      help="cuda: one rank per GPU, NVML readings. cpu: the same pipeline on gloo with host-RSS readings "
                           f"(no GPU needed; pynccl and custom all-reduce are skipped; at most {CPU_RANKS_PER_NODE} ranks per node).")
OUT_DIR = typer.Option(DEFAULT_OUT_DIR, "--out-dir", envvar=ENV + "OUT_DIR", help="Folder that receives one sub-folder per run.")
RUN_ID = typer.Option(None, "--run-id", envvar=ENV + "RUN_ID", help="Name of the run folder (default: UTC time + layout).")
TIMEOUT = typer.Option(300.0, "--timeout", envvar=ENV + "TIMEOUT",
                       help="The longest any rank may go without a sign of life: an event in its stream, such as a new reading "
                            "(counted from launch, or from its scenario's turn "
                            "when scenarios run in turn, so a rank that never starts is caught too); then that scenario's "
                            "processes are stopped and the silent rank is named.")
NNODES = typer.Option(1, "--nnodes", envvar=ENV + "NNODES", help="Nodes (passed to torchrun).")
NODE_RANK = typer.Option(0, "--node-rank", envvar=ENV + "NODE_RANK", help="This node's rank (passed to torchrun).")
MASTER_ADDR = typer.Option("127.0.0.1", "--master-addr", envvar=ENV + "MASTER_ADDR", help="Rendezvous host (passed to torchrun).")
MASTER_PORT = typer.Option(None, "--master-port", envvar=ENV + "MASTER_PORT",
                           help="Rendezvous port (default: a free port; needed with --nnodes > 1 unless --rdzv-endpoint is given).")
RDZV_BACKEND = typer.Option("c10d", "--rdzv-backend", envvar=ENV + "RDZV_BACKEND", help="torchrun's dynamic rendezvous backend (with --rdzv-endpoint): c10d or static.")
RDZV_ENDPOINT = typer.Option(None, "--rdzv-endpoint", envvar=ENV + "RDZV_ENDPOINT",
                             help="HOST:PORT of torchrun's dynamic rendezvous (Slurm, Kubernetes); replaces --master-addr/--master-port "
                                  "and --node-rank decides only which ranks' streams this node keeps.")
RDZV_ID = typer.Option(None, "--rdzv-id", envvar=ENV + "RDZV_ID", help="Rendezvous id shared by all nodes (default: the scenario's name).")
TIMINGS = typer.Option(False, "--timings", envvar=ENV + "TIMINGS",
                       help="Also show where the time went: torchrun start, import, CUDA context, each step, gather, teardown, GPU release.")
ALLOW_BUSY = typer.Option(False, "--allow-busy-gpu", envvar=ENV + "ALLOW_BUSY_GPU",
                          help="Measure even when other processes use the GPUs and only device-level figures are available.")


def _verbosity_option(ctx: typer.Context, param: typer.CallbackParam, value: bool) -> bool:
    """Sets the level while the options are parsed, so that it holds before the command does anything."""
    from memprobe import verbosity

    given = ctx.meta.setdefault("memprobe.verbosity", set())
    if value:
        given.add(param.name)
    verbosity.apply("quiet" in given, "verbose" in given)
    return value


QUIET = typer.Option(False, "--quiet", "-q", envvar=ENV + "QUIET", callback=_verbosity_option,
                     help="No progress and no confirmations of files written, on stderr (results, notes, warnings and errors are still shown).")
VERBOSE = typer.Option(False, "--verbose", "-v", envvar=ENV + "VERBOSE", callback=_verbosity_option,
                       help="Also every progress step and what the command reads, measures and writes (on stderr).")
ENV_OPT = typer.Option([], "--env", envvar=ENV + "ENV", help="KEY=VALUE for the workers' environment (repeatable), e.g. NCCL_BUFFSIZE=1048576.")
ENV_PRESET = typer.Option("sglang", "--env-preset", envvar=ENV + "ENV_PRESET",
                          help="sglang: SGLang's engine settings (NCCL_CUMEM_ENABLE=0, NCCL_NVLS_ENABLE=0, "
                               "TORCH_NCCL_AVOID_RECORD_STREAMS=1, CUDA_DEVICE_MAX_CONNECTIONS=8) unless already set; none: NCCL defaults.")
WARMUP = typer.Option("tiny", "--warmup", envvar=ENV + "WARMUP",
                      help="First collective on each group after init: none, tiny (1-element all-reduce) or sweep (4 B..64 MiB all-reduce + all-gather).")
NCCL_LOG = typer.Option(False, "--nccl-log", envvar=ENV + "NCCL_LOG",
                        help="Record NCCL's own account of every communicator: NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS=ALLOC,INIT "
                             "into <run>/nccl/ (one log per process); shown beside each step's bytes (see report --nccl).")
SPLIT = typer.Option(False, "--split", envvar=ENV + "SPLIT",
                     help="Also show every step's bytes split into torch's caching allocator (torch-reserved change) and the rest.")
PER_RANK = typer.Option(False, "--per-rank", envvar=ENV + "PER_RANK", help="Show every rank, not the worst rank and the spread.")


def check_choices(**given: str) -> None:
    """--warmup, --env-preset and --engine checked as the user wrote them, before any scenario is named
    after them (issue 15: `--warmup huge` was reported against a scenario the user never wrote)."""
    from memprobe.model.scenario import ENGINES, ENV_PRESETS, WARMUPS

    allowed = {"warmup": WARMUPS, "env_preset": tuple(sorted(ENV_PRESETS)), "engine": ENGINES}
    for key, value in given.items():
        if value not in allowed[key]:
            raise UsageError(f"--{key.replace('_', '-')} {value!r}: use one of {', '.join(allowed[key])}")


def check_out_dir(out_dir: Path) -> None:
    from memprobe.launch.prepare import check_out_dir as check

    check(out_dir)


WIDE_OUTPUT = 200  # files and pipes: every column (issue 15)


def console_width() -> int:
    """$COLUMNS when set, else the terminal's real width on a terminal, else wide for files and pipes."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return max(60, int(columns))
    if sys.stdout.isatty():
        return max(60, shutil.get_terminal_size((WIDE_OUTPUT, 24)).columns)
    return WIDE_OUTPUT


def print_rank_warnings(runs: list[tuple[str, Any]]) -> None:
    """What workers warned about (a GPU shared with other processes, device-level fallback), once each."""
    seen: set[str] = set()
    for name, run in runs:
        for info in run.record.ranks:
            for warning in info.warnings:
                line = f"memprobe: warning: {name} rank {info.rank}: {warning}"
                if warning not in seen:
                    seen.add(warning)
                    print(line, file=sys.stderr)


def check_exports(csv_path: Optional[Path], summary_csv: Optional[Path], json_path: Optional[Path],
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
            raise UsageError("--plot needs matplotlib: pip install matplotlib (the plot extra, 'memprobe-llm[plot]')") from None


def render_and_export(comparison: Any, per_rank: bool, csv_path: Optional[Path], summary_csv: Optional[Path],
                       json_path: Optional[Path], markdown: Optional[Path], plot_path: Optional[Path]) -> None:
    from memprobe import reports

    reports.render_comparison(comparison, sys.stdout, width=console_width(), per_rank=per_rank)
    from memprobe.reports.fidelity import render_fidelity

    render_fidelity(comparison, sys.stdout)
    print_rank_warnings([(item.scenario.name, item.run) for item in comparison.runs])
    exports = ((csv_path, "write_csv"), (summary_csv, "write_summary_csv"), (json_path, "write_json"),
               (markdown, "write_markdown"), (plot_path, "write_plot"))
    written = []
    for path, writer in exports:
        if path:  # the writer is looked up only when asked for: the exports import pandas
            getattr(reports, writer)(comparison, path)
            written.append(str(path))
    if written:
        from memprobe.verbosity import info

        info(f"memprobe: wrote {', '.join(written)}")



def measure(scenario_set: Any, options: Any, jobs: int = 0) -> Any:
    """Run a scenario set with progress on stderr (a bar on a terminal, sparse lines in CI logs)."""
    from memprobe.launch.progress import Progress
    from memprobe.launch.several import run_scenarios
    from memprobe.verbosity import detail

    detail(f"memprobe: measuring {', '.join(s.name for s in scenario_set.scenarios)} on --device {options.device}, "
           f"run folders under {options.out_dir}")
    with Progress(enabled=options.progress) as progress:
        return run_scenarios(scenario_set, options, progress=progress, command=["memprobe", *sys.argv[1:]], jobs=jobs)


def show_attribution(runs: list[tuple[str, Any]], split: bool, nccl: Optional[bool], per_rank: bool) -> None:
    """``--split``: each run's steps split into torch cache and the rest. NCCL's account of each communicator:
    with ``nccl`` True always (saying when a run has no logs), with None wherever the run has NCCL logs."""
    from memprobe.analysis.nccl_account import has_logs
    from memprobe.reports.nccl_account import render_nccl_account
    from memprobe.reports.split_table import render_split

    for name, run in runs:
        if split:
            print(f"\n{name}:", file=sys.stdout)
            render_split(run, sys.stdout, width=console_width(), per_rank=per_rank)
        if nccl or (nccl is None and has_logs(run)):
            print(f"\n{name}:", file=sys.stdout)
            render_nccl_account(run, sys.stdout, width=max(console_width(), 170))


def print_results_pointer(name: str, run: Any) -> None:
    """On a node other than 0: where the gathered results are, and what this node kept."""
    where = run.record.results_at or {}
    ranks = sorted({info.rank for info in run.record.ranks} | set(run.ranks))
    print(f"memprobe: {name}: this node's ranks {ranks[0]}-{ranks[-1]} finished; the gathered results are on host "
          f"{where.get('host', '?')} in {where.get('folder', '?')}; this node kept its ranks' streams in {run.path}",
          file=sys.stderr)


def gathered_elsewhere(runs: list[tuple[str, Any]]) -> bool:
    """Whether another node gathered these runs' readings (issue 13); if so, says where, per run."""
    if not any(run.record.results_at is not None for _, run in runs):
        return False
    for name, run in runs:
        print_results_pointer(name, run)
    return True


def render_timings_of(runs: list[tuple[str, Any]]) -> None:
    from memprobe.reports.timings import render_timings

    for name, run in runs:
        render_timings(name, run.record, sys.stdout)
