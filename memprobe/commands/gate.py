"""``memprobe gate``: judge GPU memory against a baseline kept in git (exit 1 on a regression).

It parses, calls :func:`memprobe.api.judge` and writes the verdict; with ``--results`` it judges saved
results without GPUs. Every input is checked before anything runs or any file is written; a bad
input exits 2 with one line on stderr. Exit codes are those of :class:`memprobe.errors.ExitCode`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from memprobe import api
from memprobe.commands.options import (
    CALIBRATION, ESTIMATE, GATE_TIMEOUT, MASTER_ADDR, MASTER_PORT, NCCL, NETWORK, NIC_GBPS, NNODES, NODE_RANK, QUIET,
    RDZV_BACKEND, RDZV_ENDPOINT, RDZV_ID, VERBOSE, option,
)
from memprobe.errors import ExitCode
from memprobe.launch.options import LaunchOptions
from memprobe.paths import check_output_path, refuse_writing_inputs

Defaults = api.GateOptions

GATE_HELP = """Judge GPU memory against a baseline kept in git; exit 1 on a regression.

Runs the baseline's scenarios (or, with --results, judges a saved run without GPUs) and compares every rank's bytes per group and step. A metric regresses when it grows by more than BOTH the relative and the absolute threshold (default +5% and +64 MiB); thresholds can be set per metric, group or scenario in the baseline file, or here.

Exit codes: 0 pass, 1 regression, 2 usage or configuration error, 3 measurement or launch failure, 4 environment differs from the baseline's key (GPU, driver, CUDA, torch, NCCL and its settings, NVML sampling mode, memprobe version), the scenario's definition changed, or the baseline holds another kind of memory (GPU against host RSS, or an estimate against a measurement: never judged, not even with --allow-env-mismatch). Every command: 70 an unexpected error (one line; its traceback in a temp file, never 1), 129/130/143 hung up, interrupted, terminated, 141 standard output's reader went away.

Examples:

\b
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --junit-xml gate.xml
memprobe gate --estimate --baseline configs/baselines/estimated-h200x8-tp8-ep4-lean.json   (no GPU: an estimated baseline)
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean --threshold metric=moe_*/first_use,relative=2%,absolute=16MiB
memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json --results results/h200x4-20261127/compare-tp4-ep2/tp4-ep2-lean --threshold scenario=tp4-ep2-lean,metric=total_after_first_use,max=4GiB
"""


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def gate(
    baseline: Path = option(..., "--baseline", "-b", env="GATE_BASELINE", show_default=False,
                            help="Baseline JSON file (made by `memprobe baseline update`)."),
    results: Optional[Path] = option(None, "--results", env="GATE_RESULTS",
                                     help="Judge this saved run or comparison folder instead of measuring (no GPU needed)."),
    scenario: Optional[list[str]] = option(None, "--scenario", "-s", env="GATE_SCENARIO",
                                           help="Judge only this baseline scenario (repeatable)."),
    relative: Optional[str] = option(Defaults.relative, "--relative", env="GATE_RELATIVE",
                                     help="Relative threshold for every metric, e.g. 5% or 0.05; overrides the baseline file."),
    absolute: Optional[str] = option(Defaults.absolute, "--absolute", env="GATE_ABSOLUTE",
                                     help="Absolute threshold for every metric, e.g. 64MiB; overrides the baseline file."),
    threshold: Optional[list[str]] = option(None, "--threshold", "-t", env="GATE_THRESHOLD",
                                            help="Comma-separated KEY=VALUE: optional scenario=NAME and metric=GLOB, then relative=P, "
                                                 "absolute=SIZE, max=SIZE (a cap) or ignore=true. Repeatable; wins over the baseline file."),
    allow_env_mismatch: bool = option(Defaults.allow_env_mismatch, "--allow-env-mismatch", env="GATE_ALLOW_ENV_MISMATCH",
                                      help="Compare even where the environment differs from the baseline's key (and say so) "
                                           "instead of exit 4."),
    markdown: Optional[Path] = option(None, "--markdown", env="GATE_MARKDOWN",
                                      help="Write the verdict as Markdown here (also appended to $GITHUB_STEP_SUMMARY when set)."),
    junit_xml: Optional[Path] = option(None, "--junit-xml", env="GATE_JUNIT_XML",
                                       help="Write JUnit XML here: one test case per scenario and rank."),
    json_path: Optional[Path] = option(None, "--json", env="GATE_JSON", help="Write the verdict as JSON here."),
    device: str = option(LaunchOptions.device, "--device", env="DEVICE",
                         help="cuda, or cpu (host RSS; only judged against a baseline made with --device cpu, never a GPU one). "
                              "Ignored with --results."),
    out_dir: Path = option(LaunchOptions.out_dir, "--out-dir", env="OUT_DIR",
                           help="Folder that receives the run folders the gate measures (ignored with --results)."),
    timeout: float = GATE_TIMEOUT,
    sglang: str = option(Defaults.sglang, "--sglang", env="GATE_SGLANG", metavar="SITE",
                         help="The SGLang under test for baseline scenarios recorded with --engine sglang: this site folder "
                              "(default: the importable SGLang). The verdict names both SGLangs."),
    vllm: str = option(Defaults.vllm, "--vllm", env="GATE_VLLM", metavar="SITE",
                       help="The vLLM under test for baseline scenarios recorded with --engine vllm: this site folder "
                            "(default: the importable vLLM)."),
    nnodes: int = NNODES, node_rank: int = NODE_RANK, master_addr: str = MASTER_ADDR, master_port: Optional[int] = MASTER_PORT,
    rdzv_backend: str = RDZV_BACKEND, rdzv_endpoint: Optional[str] = RDZV_ENDPOINT, rdzv_id: Optional[str] = RDZV_ID,
    estimate: bool = ESTIMATE, calibration: Optional[Path] = CALIBRATION,
    nccl: Optional[str] = NCCL, network: str = NETWORK, nic_gbps: Optional[float] = NIC_GBPS,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    taken = {baseline.resolve(): "--baseline"}
    for name, path in (("--markdown", markdown), ("--junit-xml", junit_xml), ("--json", json_path)):
        check_output_path(path, name, missing_folders_allowed=True, taken=taken)
    refuse_writing_inputs({"--markdown": markdown, "--junit-xml": junit_xml, "--json": json_path},
                          [path for path in (results, calibration) if path is not None])
    launch = LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout, nnodes=nnodes, node_rank=node_rank,
                           master_addr=master_addr, master_port=master_port, rdzv_backend=rdzv_backend,
                           rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id)
    result = api.judge(baseline=baseline, results=results, scenarios=tuple(scenario or ()), relative=relative,
                       absolute=absolute, thresholds=tuple(threshold or ()), allow_env_mismatch=allow_env_mismatch,
                       sglang=sglang, vllm=vllm, estimate=estimate, calibration=calibration, nccl=nccl, network=network,
                       nic_gbps=nic_gbps, launch=launch)
    if result is None:  # another node gathered the measurement; it judges
        return int(ExitCode.OK)
    return _report(result, markdown, junit_xml, json_path)


def _report(result: Any, markdown: Optional[Path], junit_xml: Optional[Path], json_path: Optional[Path]) -> int:
    """The verdict on stdout and into the files asked for; a file that cannot be written turns a pass into exit 2."""
    from memprobe.gate.render import render_lines, render_table

    problems = _write_reports(result, markdown, junit_xml, json_path)
    render_table(result, sys.stdout)
    render_lines(result, sys.stdout)
    code = int(result.exit_code)
    for problem in problems:
        print(f"memprobe: error: could not write {problem}", file=sys.stderr)
    if problems and code == ExitCode.OK:
        code = int(ExitCode.USAGE)
    return code


def _write_reports(result: Any, markdown: Optional[Path], junit_xml: Optional[Path], json_path: Optional[Path]) -> list[str]:
    from memprobe.gate.render import append_to_step_summary, write_json, write_junit_xml, write_markdown

    problems: list[str] = []
    for name, path, writer in (("--markdown", markdown, write_markdown), ("--junit-xml", junit_xml, write_junit_xml),
                               ("--json", json_path, write_json)):
        if path is None:
            continue
        try:
            writer(result, path)
        except OSError as error:
            problems.append(f"{name} {path}: {error.strerror or error}")
    try:
        append_to_step_summary(result)
    except OSError as error:
        problems.append(f"$GITHUB_STEP_SUMMARY: {error.strerror or error}")
    return problems
