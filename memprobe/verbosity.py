"""How much a command says on stderr besides its results (stdout), and its notes, warnings and errors
(stderr), which are always shown: a note tells something about the results (a scenario left out, a setting
that changes nothing), so a script that silences the chatter must still see it.

``--quiet``: no progress and no confirmations (``memprobe: wrote ...``). Default: progress (sparse lines
off a terminal) and confirmations. ``--verbose``: also every progress step and what the command reads,
measures and writes. One level per process, set by each command from its options before it does anything else.
"""

from __future__ import annotations

import sys

from memprobe.errors import UsageError

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL


def apply(quiet: bool, verbose: bool) -> None:
    """Set the level from a command's --quiet and --verbose (both: exit 2, nothing done)."""
    global _level
    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other; give one of them")
    _level = QUIET if quiet else VERBOSE if verbose else NORMAL


def level() -> int:
    return _level


def info(message: str) -> None:
    """A confirmation: shown unless --quiet."""
    if _level >= NORMAL:
        print(message, file=sys.stderr, flush=True)


def detail(message: str) -> None:
    """Shown only with --verbose."""
    if _level >= VERBOSE:
        print(message, file=sys.stderr, flush=True)
