"""Errors that map to exit codes. The CLI turns each into one line on stderr."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    REGRESSION = 1  # the gate found a regression
    USAGE = 2  # bad input, caught before anything is launched
    MEASUREMENT = 3  # a worker failed, hung or could not be launched
    INCOMPARABLE = 4  # the gate's environment differs from the baseline's
    UNEXPECTED = 70  # an unexpected error (a bug in memprobe), never 1: the gate's "regression"; sysexits.h EX_SOFTWARE
    HUNG_UP = 129  # SIGHUP (128 + 1): the terminal closed, a CI runner cancelled
    INTERRUPTED = 130  # SIGINT (128 + 2)
    PIPE_CLOSED = 141  # SIGPIPE (128 + 13): the reader of standard output went away (`| head -1`)
    TERMINATED = 143  # SIGTERM (128 + 15)


def signal_exit_code(signal_number: int) -> ExitCode:
    """The shell's convention, 128 + the signal's number, for the signals memprobe stops on."""
    import signal

    codes: dict[int, ExitCode] = {signal.SIGHUP: ExitCode.HUNG_UP, signal.SIGTERM: ExitCode.TERMINATED}
    return codes.get(signal_number, ExitCode.INTERRUPTED)


def interrupt_signal(interrupt: KeyboardInterrupt) -> int:
    """The signal a KeyboardInterrupt stands for: memprobe's handlers raise it with the signal's number
    (``KeyboardInterrupt(signal.SIGTERM)``); Python's own, for Ctrl-C, with none (SIGINT)."""
    import signal

    number = interrupt.args[0] if interrupt.args else None
    return number if isinstance(number, int) else int(signal.SIGINT)


class MemprobeError(Exception):
    """Base class: ``str(error)`` is the one line the user sees."""

    exit_code: ExitCode = ExitCode.MEASUREMENT


class UsageError(MemprobeError):
    """Bad input: reported before any process is started or file written."""

    exit_code = ExitCode.USAGE


class OptionTypeError(UsageError, TypeError):
    """A Python API value of the wrong type (a field of an options value, a path): exit 2 as bad input, and a
    TypeError as Python's own wrong-argument errors are."""


class EngineNotInstalled(UsageError):
    """An installed engine that the workers would import and cannot find: ``engine`` (``vllm``, ``sglang``) and
    ``install`` (the pip line that makes a site folder of it), for a caller that knows why the engine was asked for."""

    def __init__(self, message: str, engine: str, install: str) -> None:
        super().__init__(message)
        self.engine = engine
        self.install = install


class DamagedInput(UsageError):
    """A saved file (readings.csv, run.json, a baseline) that contradicts itself or its run: exit 2, never judged."""


class MeasurementError(MemprobeError):
    """A run started but did not finish; finished readings were kept."""

    exit_code = ExitCode.MEASUREMENT

    def __init__(self, message: str, run_dir: str | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class OutputError(MemprobeError, OSError):
    """A file could not be written (a full disk, a read-only folder); nothing was left half-written.

    Exit 2 for an export the user asked for; a run turns it into a :class:`MeasurementError` (exit 3).
    Also an OSError (same errno and strerror), for callers that collect write problems as OSErrors."""

    exit_code = ExitCode.USAGE

    def __init__(self, path: str, error: OSError) -> None:
        OSError.__init__(self, error.errno, error.strerror or str(error), path)
        self.message = f"cannot write {path}: {error.strerror or error}"

    def __str__(self) -> str:
        return self.message


class Interrupted(MemprobeError):
    """SIGINT, SIGTERM or SIGHUP arrived; workers were stopped, readings kept."""

    def __init__(self, signal_number: int, run_dir: str | None = None) -> None:
        import signal

        name = signal.Signals(signal_number).name
        super().__init__(f"interrupted by {name}; workers stopped" + (f", readings kept in {run_dir}" if run_dir else ""))
        self.exit_code = signal_exit_code(signal_number)
        self.signal_number = signal_number
        self.run_dir = run_dir


class IncomparableError(MemprobeError):
    """Two sets of bytes that cannot be judged against each other (another kind of memory): exit 4."""

    exit_code = ExitCode.INCOMPARABLE
