"""What to say where a measurement needs GPUs and none is visible: the estimate that answers without one, as a
command with the user's own flags, beside ``--device cpu`` (which measures host memory, not GPU bytes)."""

from __future__ import annotations

import shlex
import sys
from typing import Sequence

#: options of run / compare that ``memprobe estimate`` takes with the same meaning
SHARED = frozenset({"--tp", "--ep", "--pp", "--moe-dp", "--attn-dp", "--attn-cp", "--stacks", "--baseline-tp",
                    "--scenarios", "--warmup", "--env-preset", "--env", "--engine", "--per-rank", "--csv",
                    "--summary-csv", "--json", "--markdown", "--plot"})
RENAMED = {"--stack": "--stacks"}  # run measures one stack; estimate takes a list
NO_VALUE = frozenset({"--per-rank", "--allow-busy-gpu", "-q", "--quiet", "-v", "--verbose", "--split", "--nccl-log",
                      "--timings"})


def _layout_flags() -> tuple[frozenset[str], frozenset[str]]:
    """Every engine's layout flags as its layout declares them (``--dp``, ``--enable-expert-parallel``, ``--moe``
    and its off form ``--dense`` ...), which estimate takes with the same meaning, and the switches among them (no
    value follows a switch)."""
    from memprobe import engines

    flags: set[str] = {"--layout"}
    switches: set[str] = set()
    for engine in engines.all_engines():
        layout = engine.layout_type
        for name in layout.field_names():
            spellings = layout.spellings(name)
            flags.update(spellings)
            if layout.is_switch(name):
                switches.update(spellings)
    return frozenset(flags), frozenset(switches)


def estimate_command(argv: Sequence[str]) -> str | None:
    """``memprobe estimate`` with the shared flags of a ``run`` / ``compare`` command line; None for other commands."""
    if len(argv) < 2 or argv[1] not in ("run", "compare"):
        return None
    layout_flags, switches = _layout_flags()
    # run's --sglang / --vllm name a site folder as estimate's do (compare's take LABEL=SITE)
    shared = SHARED | layout_flags | ({"--sglang", "--vllm"} if argv[1] == "run" else frozenset())
    command, index = ["memprobe", "estimate"], 2
    while index < len(argv):
        token = argv[index]
        name, equals, _ = token.partition("=")
        takes_value = (token.startswith("-") and not equals and name not in NO_VALUE | switches
                       and index + 1 < len(argv))
        if RENAMED.get(name, name) in shared:
            command.append(RENAMED.get(name, name) + token[len(name):])
            if takes_value:
                command.append(argv[index + 1])
        index += 2 if takes_value else 1
    return shlex.join(command)


def no_gpu_hint(argv: Sequence[str] | None = None) -> str:
    """The sentence after "no NVIDIA GPU visible (...)"."""
    argv = list(sys.argv if argv is None else argv)
    estimate = estimate_command(argv)
    if estimate and "--tp" not in estimate and "--scenarios" not in estimate:  # run / compare default to every GPU
        estimate = estimate.replace("memprobe estimate", "memprobe estimate --tp N", 1)
    if estimate:
        answer = f"`{estimate}` answers without one (estimated GPU bytes)"
    elif len(argv) > 1 and argv[1] == "gate":
        answer = ("`memprobe gate --estimate` judges an estimated baseline without one (made by "
                  "`memprobe baseline update --estimate`); a GPU baseline is judged on GPUs only")
    else:
        answer = "`memprobe estimate --tp N` with the same flags answers without one (estimated GPU bytes)"
    return f"{answer}; --device cpu runs the pipeline measuring host memory, not GPU bytes"


__all__ = ["estimate_command", "no_gpu_hint"]
