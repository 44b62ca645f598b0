"""torchrun under a parent-death signal: ``python -m memprobe.launch.guard PARENT_PID LOG_DIR TORCHRUN_ARGS...``.

memprobe starts torchrun through this module so that torchrun never outlives it, whatever ends memprobe
(SIGKILL, a crash, a hang-up it could not act on). Linux sends the signal of ``PR_SET_PDEATHSIG`` when the
parent exits, and keeps it across ``execve`` (prctl(2)); SIGTERM is the signal torchrun's agent turns into
a shutdown that stops its workers (``torch.distributed.elastic``: SignalException -> ``_shutdown``). Its
launchers and their measuring processes set the same kind of signal on their own parents
(:mod:`memprobe.measure.worker`), so they end with torchrun in turn. torchrun runs in this same process
(no extra interpreter start).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import shutil
import signal
import sys

from memprobe.model.records import TORCHRUN_PID_VARIABLE

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def main(argv: list[str]) -> None:
    parent, log_dir = int(argv[1]), argv[2]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # memprobe died before prctl took effect: nobody would stop us
            sys.exit(128 + signal.SIGTERM)
        # the launchers torchrun starts check that it still runs once their own parent-death signal is set
        os.environ[TORCHRUN_PID_VARIABLE] = str(os.getpid())
        sys.argv = ["torchrun", *argv[3:]]
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    finally:  # torchrun's own log folder, also when memprobe is gone and cannot remove it
        shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
