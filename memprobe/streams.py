"""How the process ends when its own output or its own code fails: standard output that cannot encode a character,
a reader that went away, a full disk under stdout, and an unexpected exception (a bug). Each keeps the exit codes'
meaning: none of them may end as 1, which the gate and ``estimate --check`` use for "a regression" / "a total was off".
Standard library only: every command goes through it."""

from __future__ import annotations

import codecs
import errno
import os
import sys
import traceback
import unicodedata
from typing import Optional

from memprobe.errors import ExitCode

ASCII_ERRORS = "memprobe-ascii"
# what the tables draw with, and its ASCII stand-in (the rest: their NFKD decomposition, else "?")
_ASCII = {"\u0394": "d", "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00d7": "x", "\u2248": "~",
          "\u2264": "<=", "\u2265": ">=", "\u2192": "->", "\u00b1": "+-", "\u00b5": "u", "\u2022": "*", "\u00b7": "."}


def _to_ascii(character: str) -> str:
    if character in _ASCII:
        return _ASCII[character]
    name = unicodedata.name(character, "")
    if name.startswith("BOX DRAWINGS"):
        return "-" if "HORIZONTAL" in name and "VERTICAL" not in name else "|" if "VERTICAL" in name and "HORIZONTAL" not in name else "+"
    plain = unicodedata.normalize("NFKD", character).encode("ascii", "ignore").decode()
    return plain or "?"


def _ascii_errors(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(_to_ascii(c) for c in error.object[error.start:error.end]), error.end


codecs.register_error(ASCII_ERRORS, _ascii_errors)


def fall_back_to_ascii() -> None:
    """Standard output and error that cannot encode the tables' characters ("Δ", box lines; PYTHONIOENCODING=ascii,
    a C locale) write an ASCII stand-in for each instead of failing on the first one."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue
        try:
            "\u0394\u2500\u2026".encode(encoding)
        except UnicodeEncodeError:
            stream.reconfigure(errors=ASCII_ERRORS)
        except LookupError:
            continue


def _silence_stdout() -> None:
    """Point descriptor 1 at /dev/null, so that the interpreter's last flush at exit fails no more
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def pipe_closed() -> int:
    """The reader of standard output went away (``| head -1``, ``| true``): end quietly, as a program killed by
    SIGPIPE does."""
    _silence_stdout()
    return int(ExitCode.PIPE_CLOSED)


def stdout_failed(error: OSError) -> int:
    """Standard output cannot be written (``> /dev/full``): one line, exit as for any output file."""
    _silence_stdout()
    print(f"memprobe: error: cannot write standard output: {error.strerror or error}", file=sys.stderr)
    return int(ExitCode.USAGE)


def stdout_is_broken() -> Optional[OSError]:
    """The error standard output gives on a flush now, or None when it takes its bytes."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except OSError as error:
        return error
    except ValueError:  # closed
        return None
    return None


# what a write to standard output fails with: a stream has no file name, memprobe's own files are written through
# OutputError, which names its file
_STREAM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def output_failure(error: BaseException) -> Optional[int]:
    """The exit code of an exception that stands for standard output failing, else None: click ends on EPIPE with
    ``sys.exit(1)`` after wrapping the streams in its PacifyFlushWrapper; a full disk is an OSError without a file."""
    if isinstance(error, SystemExit):
        return pipe_closed() if type(sys.stdout).__name__ == "PacifyFlushWrapper" else None
    if isinstance(error, BrokenPipeError):
        return pipe_closed()
    if isinstance(error, OSError) and error.filename is None and error.errno in _STREAM_ERRNOS:
        return stdout_failed(error)
    return None


def finish_output(code: int) -> int:
    """Flush standard output while the exit code can still say that it failed (at exit, Python would print a
    traceback of its own and exit 120)."""
    error = stdout_is_broken()
    if isinstance(error, BrokenPipeError):
        return pipe_closed()
    if error is not None:
        return stdout_failed(error)
    return code


def unexpected(error: BaseException, argv: Optional[list[str]] = None) -> int:
    """An exception memprobe did not expect: one line naming it and where its traceback was written (a file in the
    temp folder, never the user's folder or the terminal); exit 70, never a verdict's code."""
    import tempfile

    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    place = f" at {os.path.basename(where.filename)}:{where.lineno}" if where else ""
    details = ""
    try:
        handle, details = tempfile.mkstemp(prefix="memprobe-error-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8", errors="backslashreplace") as file:
            from memprobe import __version__

            file.write(f"memprobe {__version__}, Python {sys.version.split()[0]}\n")
            file.write(f"argv: {argv if argv is not None else sys.argv}\n\n")
            file.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    except OSError:
        details = ""
    message = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    where_written = f"; traceback in {details}" if details else " (the traceback could not be written to the temp folder)"
    print(f"memprobe: internal error{place}: {message}{where_written}; please report it", file=sys.stderr)
    return int(ExitCode.UNEXPECTED)
