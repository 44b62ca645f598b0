"""``memprobe baseline update``: write a deterministic baseline file from fresh measurements or saved runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from memprobe import api
from memprobe.commands.options import CALIBRATION, ESTIMATE, NCCL, NETWORK, NIC_GBPS, QUIET, VERBOSE, option
from memprobe.launch.options import LaunchOptions
from memprobe.paths import refuse_writing_inputs

Defaults = api.BaselineOptions
SHOWN_CHANGES = 20


UPDATE_HELP = """Write a baseline file from fresh measurements or a saved run.

The file is deterministic (sorted keys, bytes as integers, no timestamps): identical numbers give an identical file, so the pull request's diff is the acknowledgement of a change. An existing file's thresholds and description are kept. With --scenario, only those scenarios are replaced and the others are kept.

Examples:

\b
memprobe baseline update --scenarios configs/scenarios/moe-stacks.toml -s tp4-ep2-lean --out my-baseline.json
memprobe baseline update --from results/h200x4-20261127/compare-tp4-ep2 --out my-baseline.json
memprobe baseline update --out my-baseline.json --device cpu   (an existing file: measures its own scenarios again)
memprobe baseline update --estimate --scenarios configs/scenarios/moe-stacks.toml --out my-baseline.json   (no GPU: estimated)

Exit codes: 0 written or unchanged, 2 bad input (nothing measured or written), 3 the measurement failed (the file is left as it was). Every command: 70 an unexpected error (one line; its traceback in a temp file), 129/130/143 hung up, interrupted, terminated, 141 standard output's reader went away.

Two updates of one file at once take turns (each keeps the other's scenarios); the file keeps its mode, and a symlink is written through (the link stays).
"""


# A command: long only by its Typer option declarations (one per line with its help); its body is short.
def update(
    out: Path = option(..., "--out", "-o", env="BASELINE_UPDATE_OUT", show_default=False,
                       help="Baseline JSON file to write (kept thresholds if it exists)."),
    scenarios_file: Optional[Path] = option(Defaults.scenarios_file, "--scenarios", env="BASELINE_UPDATE_SCENARIOS",
                                            help="Scenario TOML file to measure."),
    from_dir: Optional[Path] = option(Defaults.from_dir, "--from", env="BASELINE_UPDATE_FROM",
                                      help="Take the numbers from this saved run or comparison folder (no GPU needed)."),
    scenario: Optional[list[str]] = option(None, "--scenario", "-s", env="BASELINE_UPDATE_SCENARIO",
                                           help="Only this scenario (repeatable); the file's other scenarios are kept."),
    device: str = option(LaunchOptions.device, "--device", env="DEVICE",
                         help="cuda, or cpu (host RSS readings; for CPU-only baselines). Not used with --from."),
    out_dir: Path = option(LaunchOptions.out_dir, "--out-dir", env="OUT_DIR",
                           help="Folder that receives the run folders measured for the baseline. Not used with --from."),
    timeout: float = option(LaunchOptions.timeout_s, "--timeout", env="TIMEOUT",
                            help="The longest any rank may go without a new reading (counted from launch, or from its "
                                 "scenario's turn). Not used with --from."),
    estimate: bool = ESTIMATE, calibration: Optional[Path] = CALIBRATION,
    gpus_per_node: Optional[int] = option(Defaults.gpus_per_node, "--gpus-per-node", env="BASELINE_UPDATE_GPUS_PER_NODE",
                                          help="With --estimate: GPUs per node (default: the world size, at most 8)."),
    sglang: str = option(Defaults.sglang, "--sglang", env="BASELINE_UPDATE_SGLANG", metavar="SITE",
                         help="The SGLang of scenarios with engine sglang: this site folder (default: the scenario's own, else "
                              "the importable SGLang)."),
    vllm: str = option(Defaults.vllm, "--vllm", env="BASELINE_UPDATE_VLLM", metavar="SITE",
                       help="The vLLM of scenarios with engine vllm: this site folder (default: the scenario's own, else "
                            "the importable vLLM)."),
    nccl: Optional[str] = NCCL, network: str = NETWORK, nic_gbps: Optional[float] = NIC_GBPS,
    quiet: bool = QUIET, verbose: bool = VERBOSE,
) -> int:
    refuse_writing_inputs({"--out": out}, [path for path in (from_dir, scenarios_file, calibration) if path is not None])
    launch = LaunchOptions(device=device, out_dir=out_dir, timeout_s=timeout)
    update = api.make_baseline(out=out, scenarios_file=scenarios_file, from_dir=from_dir, scenarios=tuple(scenario or ()),
                               estimate=estimate, calibration=calibration, gpus_per_node=gpus_per_node, sglang=sglang, vllm=vllm,
                               nccl=nccl, network=network, nic_gbps=nic_gbps, launch=launch)
    _show(update)
    return 0


def _show(update: api.BaselineUpdate) -> None:
    import sys

    for note in update.notes:
        print(f"memprobe: note: {note}", file=sys.stderr)
    ranks, count = update.ranks(), len(update.document["scenarios"])
    what = f"{count} scenario{'s' if count != 1 else ''}, {ranks} rank{'s' if ranks != 1 else ''}"
    keys = [scenario.get("environment_key", {}) for scenario in update.document["scenarios"].values()]
    if keys and all(key.get("sampling_mode") == "estimate" for key in keys):
        what += ", ESTIMATED GPU memory: nothing measured"
    if not update.changed:
        print(f"{update.path}: unchanged ({what})")
    elif update.created:
        print(f"{update.path}: written ({what}); review and commit it")
    else:
        print(f"{update.path}: updated ({what}); {len(update.changes)} change(s)")
        for line in update.changes[:SHOWN_CHANGES]:
            print(f"  {line}")
        if len(update.changes) > SHOWN_CHANGES:
            print(f"  ... and {len(update.changes) - SHOWN_CHANGES} more (see the diff)")
