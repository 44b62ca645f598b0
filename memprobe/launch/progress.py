"""Progress while workers run: a Rich bar on a terminal, sparse plain lines otherwise (CI logs)."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress, TaskID


def _color_system() -> Literal["auto"] | None:
    """None (no styles at all, not only no colours) when NO_COLOR is set to anything (no-color.org; --no-color sets it)."""
    return None if os.environ.get("NO_COLOR") else "auto"


class Progress:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        from memprobe import verbosity

        self.stream = stream or sys.stderr
        self.enabled = enabled and verbosity.level() > verbosity.QUIET
        self.every_step = verbosity.level() >= verbosity.VERBOSE
        self.interactive = self.enabled and self.stream.isatty()
        self._bar: RichProgress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_plain: dict[str, tuple[float, str]] = {}

    def __enter__(self) -> "Progress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            bar = RichProgress(TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("steps"), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
                               console=Console(file=self.stream, color_system=_color_system()), transient=False)
            bar.__enter__()
            self._bar = bar
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def __call__(self, label: str, done: int, total: int, detail: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            if label not in self._tasks:
                self._tasks[label] = self._bar.add_task("", total=total, label=label, detail=detail)
            self._bar.update(self._tasks[label], completed=done, detail=detail)
            return
        now = time.monotonic()
        last_time, last_text = self._last_plain.get(label, (0.0, ""))
        text = f"memprobe: {label}: {done}/{total} steps ({detail})"
        if text != last_text and (self.every_step or now - last_time >= 2.0 or done in (0, total)):
            print(text, file=self.stream, flush=True)
            self._last_plain[label] = (now, text)
