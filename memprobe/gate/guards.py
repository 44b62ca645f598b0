"""What a gate's verdict guards (the installed engine's own code, or memprobe's reproduction of it), and the
``memprobe baseline update`` arguments that record the same scenarios the same way (same engine site,
``--estimate``, scenario selection), so that the printed update command runs as printed."""

from __future__ import annotations

import shlex
from typing import Any, Mapping, Sequence


def guards(scenarios: Sequence[Any]) -> str:
    """One line per kind of scenario judged: whose code the bytes come from."""
    parts: list[str] = []
    for scenario in scenarios:
        ref = scenario.engine_ref
        if ref.installed:
            where = f" at {scenario.sglang}" if scenario.sglang else ""
            part = f"the installed {ref.engine.label} {ref.engine.installed_version(scenario.sglang)}'s code{where}"
        else:
            release = ref.engine.reference_release or ref.engine.label
            part = f"memprobe's reproduction of {release} (your engine's code is not run)"
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


def update_arguments(*, estimate: bool, sites: Mapping[str, str], scenarios: Sequence[str], device: str,
                     calibration: Any, gpus_per_node: Any, from_results: bool) -> list[str]:
    """``baseline update`` arguments for what the gate judged (after ``--from RESULTS`` where it judged results)."""
    arguments: list[str] = []
    for name in scenarios:
        arguments += ["--scenario", name]
    if from_results:
        return arguments
    if estimate:
        arguments.append("--estimate")
        if calibration:
            arguments += ["--calibration", str(calibration)]
        if gpus_per_node:
            arguments += ["--gpus-per-node", str(gpus_per_node)]
    elif device and device != "cuda":
        arguments += ["--device", device]
    for engine, site in sites.items():  # --sglang SITE, --vllm SITE
        if site:
            arguments += [f"--{engine}", site]
    return arguments


def quoted(arguments: Sequence[str]) -> str:
    return shlex.join(arguments)


__all__ = ["guards", "update_arguments"]
