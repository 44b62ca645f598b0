"""Output file paths, checked before anything is launched: a bad path is one line and exit 2 up front."""

from __future__ import annotations

import os
from pathlib import Path

from memprobe.errors import UsageError


def check_output_path(path: Path | None, option: str, *, suffixes: tuple[str, ...] = (),
                      missing_folders_allowed: bool = False, taken: dict[Path, str] | None = None) -> None:
    """Refuse an output path that cannot be written.

    ``suffixes``: the accepted endings (empty: any). ``missing_folders_allowed``: the writer creates the
    parent folders (the gate's reports), so only the nearest existing folder must be writable; otherwise
    the parent must exist (compare's and report's exports). ``taken``: resolved paths already claimed by
    other options of the same command, to refuse two outputs naming one file; it is updated.
    """
    if path is None:
        return
    if suffixes and path.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path}: must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file path")
    if taken is not None:
        resolved = path.resolve()
        if resolved in taken:
            raise UsageError(f"{option} {path} is the same file as {taken[resolved]}")
        taken[resolved] = option
    parent = path.parent if str(path.parent) else Path(".")
    if missing_folders_allowed:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    elif not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: cannot write under {parent}")


def refuse_writing_inputs(outputs: dict[str, Path | None], inputs: list[Path]) -> None:
    """Refuse an output that is one of the command's inputs or lies inside an input folder (``report DIR --json
    DIR/comparison.json`` would replace the measurement it reports on), before anything is written."""
    read = [Path(os.path.realpath(path)) for path in inputs if path is not None]
    for option, path in outputs.items():
        if path is None:
            continue
        target = Path(os.path.realpath(path))
        for source in read:
            if target == source or source in target.parents:
                what = "is" if target == source else "lies inside"
                raise UsageError(f"{option} {path} {what} {source}, which this command reads: writing it would "
                                 f"change the evidence; write it elsewhere")
