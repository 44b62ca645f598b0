"""Errors that map to exit codes. The CLI turns each into one line on stderr."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    REGRESSION = 1  # the gate found a regression
    USAGE = 2  # bad input, caught before anything is launched
    MEASUREMENT = 3  # a worker failed, hung or could not be launched
    INCOMPARABLE = 4  # the gate's environment differs from the baseline's
    INTERRUPTED = 130  # SIGINT (128 + 2)
    TERMINATED = 143  # SIGTERM (128 + 15)


class MemprobeError(Exception):
    """Base class: ``str(error)`` is the one line the user sees."""

    exit_code: ExitCode = ExitCode.MEASUREMENT


class UsageError(MemprobeError):
    """Bad input: reported before any process is started or file written."""

    exit_code = ExitCode.USAGE


class DamagedInput(UsageError):
    """A saved file (readings.csv, run.json, a baseline) that contradicts itself or its run: exit 2, never judged."""


class MeasurementError(MemprobeError):
    """A run started but did not finish; finished readings were kept."""

    exit_code = ExitCode.MEASUREMENT

    def __init__(self, message: str, run_dir: str | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class Interrupted(MemprobeError):
    """SIGINT or SIGTERM arrived; workers were stopped, readings kept."""

    def __init__(self, signal_number: int, run_dir: str | None = None) -> None:
        import signal

        name = signal.Signals(signal_number).name
        super().__init__(f"interrupted by {name}; workers stopped" + (f", readings kept in {run_dir}" if run_dir else ""))
        self.exit_code = ExitCode.TERMINATED if signal_number == signal.SIGTERM else ExitCode.INTERRUPTED
        self.run_dir = run_dir


class IncomparableError(MemprobeError):
    """Two sets of bytes that cannot be judged against each other (another kind of memory): exit 4."""

    exit_code = ExitCode.INCOMPARABLE
