"""``memprobe estimate``: compare's tables for layouts and nodes you do not have, from NCCL's rules and a
one-GPU calibration, labelled as estimates; ``--check`` sets the estimate beside measured runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from memprobe.commands.common import (
    ATTN_CP, ATTN_DP, ENV, ENV_OPT, ENV_PRESET, MOE_DP, PER_RANK, PP, QUIET, VERBOSE, WARMUP, check_choices, check_exports,
    render_and_export,
)
from memprobe.errors import ExitCode, MeasurementError, MemprobeError, UsageError

# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def estimate(
    tp: Optional[int] = typer.Option(None, "--tp", envvar=ENV + "TP", help="TP width (required unless --scenarios or --check)."),
    ep: Optional[int] = typer.Option(None, "--ep", envvar=ENV + "EP", help="EP width of the MoE scenarios (default: tp / 2)."),
    pp: int = PP, moe_dp: int = MOE_DP, attn_dp: int = ATTN_DP, attn_cp: int = ATTN_CP,
    stacks: str = typer.Option("full,lean", "--stacks", envvar=ENV + "ESTIMATE_STACKS", help="Comma-separated stacks for the MoE layout."),
    baseline_tp: Optional[int] = typer.Option(None, "--baseline-tp", envvar=ENV + "ESTIMATE_BASELINE_TP", help="TP width of the baseline (default: --tp)."),
    scenarios: Optional[Path] = typer.Option(None, "--scenarios", envvar=ENV + "ESTIMATE_SCENARIOS", help="TOML file of named scenarios, as compare reads."),
    warmup: str = WARMUP, env_preset: str = ENV_PRESET, env: list[str] = ENV_OPT,
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", envvar=ENV + "ESTIMATE_GPUS_PER_NODE",
                                                help="GPUs per node, joined by NVSwitch (default: the world size, at most 8)."),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", envvar=ENV + "ESTIMATE_NNODES",
                                         help="Nodes (default: as many as the world size needs); between nodes one NIC per GPU with GPUDirect RDMA."),
    gpu: Optional[str] = typer.Option(None, "--gpu", envvar=ENV + "ESTIMATE_GPU", help="GPU model (default: the packaged calibration's, NVIDIA H200)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", envvar=ENV + "ESTIMATE_CALIBRATION",
                                               help="A calibration file from `memprobe calibrate` (default: the packaged one for --gpu)."),
    engine: str = typer.Option("memprobe", "--engine", envvar=ENV + "ENGINE",
                               help="memprobe: the stacks' flags; sglang: the flags the installed SGLang's initialize_model_parallel "
                                    "passes, learnt from a --device cpu run of it (torchrun, gloo)."),
    sglang: Optional[Path] = typer.Option(None, "--sglang", envvar=ENV + "ESTIMATE_SGLANG", metavar="SITE",
                                          help="With --engine sglang: a site folder holding the sglang package (default: the importable one)."),
    check: list[Path] = typer.Option([], "--check", envvar=ENV + "ESTIMATE_CHECK", metavar="RUN_OR_COMPARISON",
                                     help="Set the estimate beside measured runs (folders of runs are searched), per rank and step; "
                                          "exit 1 if a total is off by more than max(2 %, 16 MiB). Repeatable."),
    per_rank: bool = PER_RANK, quiet: bool = QUIET, verbose: bool = VERBOSE,
    csv_path: Optional[Path] = typer.Option(None, "--csv", envvar=ENV + "ESTIMATE_CSV", help="Long CSV, as compare's (estimated)."),
    summary_csv: Optional[Path] = typer.Option(None, "--summary-csv", envvar=ENV + "ESTIMATE_SUMMARY_CSV", help="One row per scenario and rank."),
    json_path: Optional[Path] = typer.Option(None, "--json", envvar=ENV + "ESTIMATE_JSON", help="compare's JSON schema plus a top-level \"estimate\" marker."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", envvar=ENV + "ESTIMATE_MARKDOWN", help="The table as GitHub Markdown."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", envvar=ENV + "ESTIMATE_PLOT", help="Stacked bars (.png or .svg; needs memprobe[plot])."),
) -> int:
    """Estimate per-rank communicator memory for a layout you do not have: no GPU, nothing measured.

    The same scenarios and tables as compare, every number labelled as estimated. Examples:

    \b
      memprobe estimate --tp 8 --ep 4
      memprobe estimate --tp 8 --ep 4 --stacks full:v1,lean:v1,lean --per-rank
      memprobe estimate --tp 16 --ep 8 --gpus-per-node 8
      memprobe estimate --check results/h200x4-20261127/compare-tp4-ep2

    Exit codes: 0 done, 1 a --check total off by more than the bound, 2 bad input (nothing estimated or written),
    3 --check found no run it could check.
    """
    from memprobe.estimate.calibration import find_calibration

    check_exports(csv_path, summary_csv, json_path, markdown, plot_path)
    check_choices(warmup=warmup, env_preset=env_preset, engine=engine)
    chosen = find_calibration(gpu, calibration)
    if check:
        ignored = [option for option, value in (("--tp", tp), ("--ep", ep), ("--scenarios", scenarios), ("--csv", csv_path),
                                                ("--summary-csv", summary_csv), ("--json", json_path),
                                                ("--markdown", markdown), ("--plot", plot_path)) if value is not None]
        if ignored:
            raise UsageError(f"--check estimates the runs it is given and writes no export; {', '.join(ignored)} would be "
                             f"ignored with it")
        return _check(check, chosen, gpu is not None or calibration is not None, per_rank)
    scenario_set = _scenario_set(tp, ep, pp, moe_dp, attn_dp, attn_cp, stacks, baseline_tp, scenarios, warmup,
                                 env_preset, env, engine, sglang)
    comparison = estimated(scenario_set, chosen, gpus_per_node, nnodes, quiet)
    render_and_export(comparison, per_rank, csv_path, summary_csv, json_path, markdown, plot_path)
    basis = comparison.runs[0].run.record.environment["estimate"]
    print(f"estimated (not measured) from {basis['rules']} and the calibration {basis['calibration']} "
          f"({basis['gpu_model']}, driver {basis['driver']}, torch {basis['torch']}); {basis['topology']}", file=sys.stdout)
    return 0


def _scenario_set(tp, ep, pp, moe_dp, attn_dp, attn_cp, stacks, baseline_tp, scenarios, warmup, env_preset, env, engine, sglang):
    from memprobe.model.distinct import distinct_scenarios
    from memprobe.model.scenario import headline_scenarios, load_scenario_file, parse_env_assignments, with_env
    from memprobe.model.stacks import resolve_stack

    extra_env = parse_env_assignments(env)
    if scenarios is not None:
        if tp is not None or ep is not None:
            raise UsageError("--scenarios FILE sets each scenario's layout; --tp/--ep would be ignored with it")
        scenario_set = with_env(load_scenario_file(scenarios), extra_env)
    else:
        if tp is None:
            raise UsageError("memprobe estimate needs --tp (or --scenarios FILE, or --check RUN)")
        names = [name.strip() for name in stacks.split(",") if name.strip()]
        if not names:
            raise UsageError("--stacks needs at least one stack, e.g. full,lean")
        for name in names:
            resolve_stack(name, option="--stacks")
        if engine == "sglang":
            names = ["lean"]  # one MoE scenario: SGLang's own flags replace the stack below
        scenario_set = headline_scenarios(tp=tp, ep=ep if ep is not None else max(1, tp // 2), stacks=names, pp=pp,
                                          moe_dp=moe_dp, attn_dp=attn_dp, attn_cp=attn_cp, baseline_tp=baseline_tp,
                                          env_preset=env_preset, env=extra_env, warmup=warmup)
        scenario_set, repeats = distinct_scenarios(scenario_set)
        for line in repeats:
            print(f"memprobe: note: {line}", file=sys.stderr)
    if engine == "sglang":
        scenario_set = _on_sglang(scenario_set, str(sglang) if sglang else "")
    return scenario_set


def _on_sglang(scenario_set, site: str):
    """Every scenario on real SGLang (its own flags: stack installed), as ``--engine sglang`` measures it."""
    from dataclasses import replace

    from memprobe.measure.sglang_install import check_site
    from memprobe.model.scenario import ScenarioSet
    from memprobe.model.stacks import resolve_stack

    site = check_site(site, f"--sglang {site}") if site else ""
    names = {s.name: f"{s.layout.slug()}.sglang" for s in scenario_set.scenarios}
    installed = resolve_stack("installed")
    renamed = {names[s.name]: replace(s, name=names[s.name], engine="sglang", sglang=site, stack="installed",
                                      resolved_stack=installed) for s in scenario_set.scenarios}
    scenarios = tuple(renamed.values())
    return ScenarioSet(scenarios=scenarios, baseline=names[scenario_set.baseline])


def estimated(scenario_set, calibration, gpus_per_node: Optional[int], nnodes: Optional[int], quiet: bool):
    """Every scenario estimated (estimate, gate --estimate, baseline update --estimate); scenarios on real SGLang
    first learn its flags from a --device cpu run of it."""
    from memprobe.estimate.comparison import estimate_comparison

    on_sglang = any(scenario.engine == "sglang" for scenario in scenario_set.scenarios)
    sglang_runs = _sglang_flags_runs(scenario_set, quiet) if on_sglang else None
    return estimate_comparison(scenario_set, calibration, gpus_per_node=gpus_per_node, nnodes=nnodes, sglang_runs=sglang_runs)


def _sglang_flags_runs(scenario_set, quiet: bool):
    """A --device cpu run of each scenario on real SGLang: the flags its groups were built with."""
    import tempfile

    from memprobe.commands.common import launch_options, measure

    from memprobe.model.scenario import ScenarioSet

    on_sglang = tuple(scenario for scenario in scenario_set.scenarios if scenario.engine == "sglang")
    with tempfile.TemporaryDirectory(prefix="memprobe-estimate-") as folder:
        options = launch_options("cpu", Path(folder), 300.0, 1, 0, "127.0.0.1", None, False, quiet, None)
        try:
            comparison = measure(ScenarioSet(scenarios=on_sglang, baseline=on_sglang[0].name), options)
        except MeasurementError as error:  # its folder goes with the temporary one: say what failed here
            raise MeasurementError(f"the --device cpu run of SGLang that tells its groups' flags failed: "
                                   f"{_first_failure(Path(folder)) or error}") from None
        return {item.scenario.name: item.run for item in comparison.runs}


def _first_failure(folder: Path) -> str:
    from memprobe.model.records import load_run

    for record in sorted(folder.rglob("run.json")):
        try:
            failure = load_run(record.parent).record.failure
        except MemprobeError:
            continue
        if failure is not None:
            last = failure.last_lines[-1].strip() if failure.last_lines else ""
            return failure.describe() + (f"; last line: {last}" if last else "")
    return ""


def _check(paths: list[Path], calibration, explicit: bool, per_rank: bool) -> int:
    from memprobe.estimate.calibration import load_calibration, packaged_calibrations
    from memprobe.estimate.check import check_run, measured_runs
    from memprobe.reports.estimate_check import render_check

    known = {c.gpu_model: c for c in ([calibration] if explicit else [load_calibration(p) for p in packaged_calibrations()])}
    results = [check_run(where, run, known.get) for where, run in measured_runs(paths)]
    render_check(results, sys.stdout, per_rank=per_rank)
    checked = [result for result in results if not result.skipped]
    if not checked:
        print("memprobe: error: no run could be checked (see the reasons above)", file=sys.stderr)
        return int(ExitCode.MEASUREMENT)
    return 0 if all(result.within for result in checked) else int(ExitCode.REGRESSION)
