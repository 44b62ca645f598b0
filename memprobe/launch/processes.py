"""The processes of a launch: a free rendezvous port, finding them by token, stopping them, waiting for their GPUs.

torchrun starts its workers in sessions of their own, so every process of a launch carries the
launch's token in its environment (``/proc/PID/environ``, inherited by the measuring processes
its launchers fork) and is found again by it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable

from memprobe.measure import nvml
from memprobe.model.records import RUN_TOKEN_VARIABLE, process_carries

GPU_RELEASE_TIMEOUT_S = 15.0
KILL_GRACE_S = 5.0


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as stream:
            return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port for torchrun's rendezvous store, preferably below the ephemeral range.

    A port from bind(0) lies in the ephemeral range, where any outgoing connection (NCCL,
    gloo, another run) may take it before torchrun binds it (EADDRINUSE, seen on a 4-GPU run).
    """
    import random

    low = _ephemeral_low()
    candidates = random.Random().sample(range(20000, low), min(32, max(0, low - 20000))) if low > 20000 else []
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def carries_token(pid: int, token: str) -> bool:
    """Whether process ``pid`` still carries this run's token (a PID may have been reused since it was read)."""
    return process_carries(pid, RUN_TOKEN_VARIABLE, token)


def pids_with_token(token: str) -> list[int]:
    """Processes whose environment carries this run's token (workers live in their own sessions)."""
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and carries_token(int(entry), token)]


def send_signal(pid: int, number: int, group: bool = False) -> None:
    """``number`` to the process (or its group); SIGTERM with a SIGCONT after it, since a stopped process
    (SIGSTOP, a debugger) keeps a SIGTERM pending until it is continued (signal(7))."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, number)
        if number == signal.SIGTERM:
            kill(pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        pass


def is_stopped(pid: int | None) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, SIGTSTP, a debugger): state T or t in /proc/PID/stat (proc(5)).
    Such a rank is silent on its own, while its peers, blocked in a collective with it, only wait."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            return stream.read().rsplit(")", 1)[-1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            return stream.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_everything(process: subprocess.Popen[bytes], token: str, worker_pids: set[int], grace_s: float = KILL_GRACE_S,
                    hurry: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM torchrun's group and every worker; SIGKILL what is left after ``grace_s``, or as soon as
    ``hurry()`` says so (another stop signal arrived meanwhile)."""
    pids = {pid for pid in worker_pids if carries_token(pid, token)} | set(pids_with_token(token))
    if process.poll() is None:
        send_signal(process.pid, signal.SIGTERM, group=True)
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not hurry():
        if process.poll() is not None and not any(alive(pid) for pid in pids):
            break
        time.sleep(0.05)
    if process.poll() is None:
        send_signal(process.pid, signal.SIGKILL, group=True)
    for pid in {pid for pid in pids if carries_token(pid, token)} | set(pids_with_token(token)):
        send_signal(pid, signal.SIGKILL)
    try:
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)


def wait_for_gpu_release(worker_pids: set[int], environment: dict[str, str], timeout_s: float = GPU_RELEASE_TIMEOUT_S) -> float:
    """Wait until NVML lists none of ``worker_pids`` on the visible GPUs; returns the seconds waited.

    A killed worker has exited before the driver has torn its CUDA context down; on 2 x H200 a
    ``nvidia-smi`` right after a run still listed one (results/sglang-fidelity-20261127/x2). Waiting here
    means memprobe returns with the GPUs free, and a run straight after it sees no stranger's memory.
    PIDs NVML cannot see (another PID namespace) end the wait at once.
    """
    started = time.monotonic()
    gpus = nvml.visible_gpus(environment)
    if not worker_pids or not nvml.is_available(gpus):
        return 0.0
    handles = [nvml.handle_by_uuid(gpu.uuid) for gpu in gpus]
    while time.monotonic() - started < timeout_s:
        listed: set[int] = set()
        for handle in handles:
            processes = nvml.process_memory(handle) if nvml.is_available(handle) else handle
            if nvml.is_available(processes):
                listed.update(processes)
        if not listed & worker_pids:
            break
        time.sleep(0.05)
    return round(time.monotonic() - started, 3)


def signal_own(pids: set[int], token: str, number: int) -> None:
    """Signal those of ``pids`` that still carry this launch's token (one scenario's processes)."""
    for pid in pids:
        if carries_token(pid, token):
            send_signal(pid, number)
