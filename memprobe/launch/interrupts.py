"""The stop signals (SIGINT, SIGTERM, SIGHUP) as memprobe takes them: one handler for the whole process, set by
the CLI before any command runs. Standard library only: every command, `memprobe estimate` too, installs it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable


class Interrupts:
    """The stop signals memprobe received (SIGINT, SIGTERM, SIGHUP), in order.

    Outside a launch the first one raises KeyboardInterrupt wherever the main thread is. Inside one
    (:meth:`deferred`) no signal raises: the launch sees the first between two polls and ends through
    its cleanup (processes stopped, every finished reading and run.json written), and a later signal
    only hurries that cleanup (SIGKILL at once instead of after the grace). An exception raised by a
    second Ctrl-C in the middle of the cleanup would skip it and lose the readings.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.received: list[int] = []
        self.acted_on = False
        self._deferring = 0

    def on_signal(self, number: int, frame: object) -> None:
        self.received.append(number)
        if self._deferring == 0 and not self.acted_on:
            self.acted_on = True
            raise KeyboardInterrupt(number)

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    def take(self) -> KeyboardInterrupt:
        """The first signal, as the exception that ends the launch acting on it."""
        self.acted_on = True
        return KeyboardInterrupt(self.first)

    @contextlib.contextmanager
    def deferred(self):
        with self._lock:
            self._deferring += 1
        try:
            yield
        finally:
            with self._lock:
                self._deferring -= 1
                outermost = self._deferring == 0
        # reached without an exception only: a signal that came after the launch's last poll is acted on now
        if outermost and self.first is not None and not self.acted_on:
            raise self.take()


INTERRUPTS = Interrupts()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def interrupt_handlers() -> Callable[[], None]:
    """SIGINT, SIGTERM and SIGHUP all go through :data:`INTERRUPTS` (Python's default SIGHUP action ends the
    process at once, skipping every cleanup); returns a function that restores the previous handlers."""
    INTERRUPTS.reset()
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, INTERRUPTS.on_signal)

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
