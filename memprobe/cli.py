"""The ``memprobe`` command line: the app and its commands (one module each in
:mod:`memprobe.commands`), and ``main``, which maps every outcome to an exit code 
(0 ok, 1 regression, 2 bad input, 3 measurement failed, 4 incomparable environment, 129/130/143
hung up, interrupted, terminated). Every option can also come from a
``MEMPROBE_<OPTION>`` environment variable.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from typing import Any, Callable, Optional

import typer

try:  # typer >= 0.2x vendors click as typer._click; older releases depend on click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    import click.exceptions as click_exceptions  # type: ignore[no-redef]  # the same module, where typer had it before

_EXIT_TYPES = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
_ABORT_TYPES = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)})

from memprobe.commands import baseline, calibrate, compare, estimate, gate, plan, report, run
from memprobe.errors import ExitCode, MemprobeError, interrupt_signal, signal_exit_code

app = typer.Typer(
    name="memprobe",
    help=(
        "Per-rank GPU memory of process groups and communicators at LLM-engine start-up.\n\n"
        "Examples (each runs as written in a clone; no GPU here: memprobe estimate answers with the same flags, and "
        "--device cpu runs the pipeline measuring host memory):\n\n"
        "\b\n"  # click: keep these lines as they are (copyable), do not rewrap
        "  memprobe plan --tp 8 --ep 4                 # the groups SGLang 0.5.23 builds (no GPU)\n"
        "  memprobe estimate --tp 8 --ep 4             # each rank's GPU bytes, ESTIMATED (no GPU, ~1 s)\n"
        "  memprobe plan --engine vllm-ref --tp 8 --moe   # vLLM 0.33.0's groups (--engine: sglang-ref, sglang, vllm-ref, vllm)\n"
        "  memprobe run --tp 4 --ep 2 --stack lean     # measure one layout (into memprobe-runs/)\n"
        "  memprobe compare --tp 4 --ep 2              # tp4 vs tp4/ep2 full vs lean, per rank\n"
        "  memprobe report results/h200x4-20261127/compare-tp4-ep2   # re-render saved runs\n"
        "  memprobe gate --baseline configs/baselines/h200x4-tp4-ep2-lean.json   # CI regression gate\n\n"
        "Results go to stdout, progress and notes to stderr (--quiet, --verbose on every command). Exit codes: 0 ok, "
        "1 regression (gate), 2 bad input, 3 measurement failed or data missing, 4 incomparable (gate), "
        "70 an unexpected error (its traceback in a temp file), 129/130/143 hung up/interrupted/terminated, 141 "
        "standard output's reader went away; each command's --help lists its own, and plan's the stacks of every engine. Shell completion: memprobe --install-completion."
    ),
    no_args_is_help=True,
    add_completion=True,  # Typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,  # plain help: copyable (no boxes) and Rich markup would eat the brackets of "memprobe[plot]"
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _print_version(value: bool) -> None:
    if value:
        from memprobe import __version__

        print(f"memprobe {__version__}")
        raise typer.Exit(0)


def _no_color(value: bool) -> None:
    if value:  # the environment, so that every Rich console (and any child process) honours it too
        os.environ["NO_COLOR"] = "1"


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print memprobe's version and exit."),
          no_color: bool = typer.Option(False, "--no-color", callback=_no_color, is_eager=True,
                                        help="No colours or styles on a terminal (as NO_COLOR=1 does).")) -> None:
    """Per-rank GPU memory of process groups and communicators at LLM-engine start-up."""


def command(function: Callable[..., Optional[int]]) -> Callable[..., None]:
    """A command as the app runs it: its int result becomes the exit code, and a MemprobeError one line on
    stderr (``memprobe: error: ...``, in every command alike) and its exit code; the same under ``main`` and under
    click's own runner."""

    @functools.wraps(function)
    def as_command(*args: Any, **kwargs: Any) -> None:
        try:
            code = function(*args, **kwargs)
        except MemprobeError as error:
            raise typer.Exit(report_error(error)) from None
        except KeyboardInterrupt as interrupt:  # typer would make every one, SIGTERM's and SIGHUP's too, exit 130
            raise typer.Exit(_interrupted(interrupt)) from None
        if code:
            raise typer.Exit(int(code))

    return as_command


app.command()(command(plan.plan))
app.command()(command(run.run))
app.command()(command(compare.compare))
app.command()(command(report.report))
app.command()(command(estimate.estimate))
app.command()(command(calibrate.calibrate))
app.command("gate", help=gate.GATE_HELP, no_args_is_help=True)(command(gate.gate))
baseline_app = typer.Typer(help="Make and refresh baseline files for `memprobe gate`.", no_args_is_help=True,
                           rich_markup_mode=None)
baseline_app.command("update", help=baseline.UPDATE_HELP, no_args_is_help=True)(
    command(baseline.update))
app.add_typer(baseline_app, name="baseline")


def report_error(error: MemprobeError) -> int:
    """The one way an error reaches the user: one line on stderr; its exit code."""
    print(f"memprobe: error: {_one_line(str(error))}", file=sys.stderr)
    return int(error.exit_code)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _stdout_closed() -> bool:
    """Whether standard output is closed (``>&-``). Python then sets sys.stdout to None, and the first file memprobe
    opens takes descriptor 1: the tables would go into a log, or be lost in a traceback after the whole run."""
    if sys.stdout is None:
        return True
    try:
        os.fstat(sys.stdout.fileno())
    except (io.UnsupportedOperation, AttributeError):  # an in-memory stream (tests): open
        return False
    except (OSError, ValueError):  # EBADF; ValueError: the stream object itself was closed
        return True
    return False


def _tune_garbage_collector() -> None:
    """Let the cyclic collector skip what import built, and run it less often.

    CPython (3.11-3.13) starts a collection every 700 net allocations: an estimate of 4096 ranks builds ~10^5 small
    records and spent a fifth of its time in ~230 collections that freed nothing (records hold no cycles).
    gc.freeze() also moves the imported modules' objects out of every later scan.
    """
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(argv: Optional[list[str]] = None) -> int:
    from memprobe import streams

    _tune_garbage_collector()
    streams.fall_back_to_ascii()
    if _stdout_closed():
        print("memprobe: error: standard output is closed; give memprobe a file or a pipe to print to (e.g. >/dev/null)",
              file=sys.stderr)
        return int(ExitCode.USAGE)
    return streams.finish_output(_run(argv))


def _run(argv: Optional[list[str]]) -> int:
    from memprobe import streams
    from memprobe.launch.interrupts import interrupt_handlers

    restore = interrupt_handlers()
    try:
        result = app(args=argv, prog_name="memprobe", standalone_mode=False)
        return int(result or 0)
    except _EXIT_TYPES as exit_:
        return int(exit_.exit_code)
    except _ABORT_TYPES as abort:
        # click turns a KeyboardInterrupt (and with it SIGTERM and SIGHUP, raised as one by memprobe's handlers)
        # into Abort: the signal is its cause
        cause = abort.__cause__ or abort.__context__
        return _interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt())
    except click_exceptions.ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `memprobe` alone: show the help
            error.show()
            return int(ExitCode.USAGE)
        context = getattr(error, "ctx", None)  # a UsageError's; other ClickExceptions have none
        command = context.command_path if context else "memprobe"
        print(f"memprobe: error: {_one_line(error.format_message())} (see '{command} --help')", file=sys.stderr)
        return int(ExitCode.USAGE)
    except MemprobeError as error:  # raised while the options were parsed (their callbacks)
        return report_error(error)
    except KeyboardInterrupt as interrupt:
        return _interrupted(interrupt)
    except SystemExit as exit_:
        failed = streams.output_failure(exit_)
        if failed is None:
            raise
        return failed
    except Exception as error:  # a bug, or standard output failing
        failed = streams.output_failure(error)
        return streams.unexpected(error, argv) if failed is None else failed
    finally:
        restore()


def _interrupted(interrupt: KeyboardInterrupt) -> int:
    import signal

    number = interrupt_signal(interrupt)
    print(f"memprobe: interrupted by {signal.Signals(number).name}", file=sys.stderr)
    return int(signal_exit_code(number))
