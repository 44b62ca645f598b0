"""Validated launch options, built by the CLI (as torchrun's ``config_from_args`` -> ``LaunchConfig``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from memprobe.engines.sites import site_first
from memprobe.errors import UsageError
from memprobe.fields import check_fields
from memprobe.model.records import NCCL_LOG_FOLDER
from memprobe.model.scenario import Scenario, env_presets, validate_name

DEVICES = ("cuda", "cpu")
RDZV_BACKENDS = ("c10d", "static")
DEFAULT_TIMEOUT_S = 300.0
#: --device cpu: the most ranks one node runs (each imports torch: ~300 MB of host memory and a core's share).
CPU_RANKS_PER_NODE = 64
_NOT_SETTINGS = ("NCCL_VERSION",)  # image metadata, not a setting (set by NVIDIA containers)
RECORDED_ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_DEVICE_ORDER",
                         "CUDA_VISIBLE_DEVICES", "CUDA_MODULE_LOADING", "TORCH_SYMM_MEM_", "NVSHMEM_DISABLE_NVLS")
_HOST = re.compile(r"[A-Za-z0-9._:-]+")  # always fullmatch: "$" would let a trailing newline in


# Users' runs go to a git-ignored folder; results/ holds the committed evidence
DEFAULT_OUT_DIR = Path("memprobe-runs")


@dataclass(frozen=True)
class LaunchOptions:
    """How scenarios are launched; the same for every scenario of one command."""

    device: str = "cuda"
    out_dir: Path = DEFAULT_OUT_DIR
    timeout_s: float = DEFAULT_TIMEOUT_S
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    rdzv_backend: str = "c10d"  # torchrun's dynamic rendezvous, used instead of master-addr/port when an endpoint is given
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    allow_busy_gpu: bool = False
    progress: bool = True
    run_id: str | None = None
    nccl_log: bool = False  # --nccl-log: NCCL's debug log of every worker into <run>/nccl/

    def __post_init__(self) -> None:
        check_fields(self)  # out_dir as a str or os.PathLike becomes a Path; a value of the wrong type is one line
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not (self.timeout_s > 0):
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.nnodes < 1 or not (0 <= self.node_rank < self.nnodes):
            raise UsageError(f"--node-rank must be in [0, --nnodes) and --nnodes >= 1; got {self.node_rank} of {self.nnodes}")
        if self.master_port is not None and not (1 <= self.master_port <= 65535):
            raise UsageError(f"--master-port must be 1..65535, got {self.master_port}")
        if not _HOST.fullmatch(self.master_addr):
            raise UsageError(f"--master-addr {self.master_addr!r} is not a host name or address")
        if self.nnodes > 1 and self.master_port is None and self.rdzv_endpoint is None:
            raise UsageError("--nnodes > 1 needs the same --master-port on every node (or --rdzv-endpoint HOST:PORT)")
        if self.rdzv_endpoint is not None and not _HOST.fullmatch(self.rdzv_endpoint):
            raise UsageError(f"--rdzv-endpoint {self.rdzv_endpoint!r} is not HOST[:PORT]")
        if self.rdzv_id is not None:
            validate_name(self.rdzv_id, "--rdzv-id")
        # etcd rendezvous keeps its store from the workers, and each scenario rendezvouses in that store
        if self.rdzv_backend not in RDZV_BACKENDS:
            raise UsageError(f"--rdzv-backend must be c10d or static, got {self.rdzv_backend!r}")
        if self.run_id is not None:
            validate_name(self.run_id, "--run-id")


def worker_environment(scenario: Scenario, options: LaunchOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment workers start with.

    An engine's preset (``sglang``: SGLang's engine variables) is applied *unless the user already did*
    (``entrypoints/engine.py:1878-1921``); scenario ``env`` and ``--env`` always win.
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA's device order match the NVML mapping.
    """
    environment = dict(os.environ if base is None else base)
    for key, value in env_presets()[scenario.env_preset].items():
        environment.setdefault(key, value)
    environment.update(scenario.env)
    environment = site_first(environment, scenario.sglang)  # the installation this scenario asked for comes first
    environment.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def nccl_log_environment(run_dir: Path) -> dict[str, str]:
    """``--nccl-log``: NCCL logs its allocations and channel set-up (ALLOC,INIT: ~190 KB per rank and
    communicator set; 0 bytes of GPU memory on 4 x H200, NCCL 2.28.9) to one file per process."""
    folder = (run_dir / NCCL_LOG_FOLDER).resolve()
    return {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "ALLOC,INIT", "NCCL_DEBUG_FILE": str(folder / "%h.%p.log")}


def recorded_environment(environment: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in sorted(environment.items())
            if key.startswith(RECORDED_ENV_PREFIXES) and key not in _NOT_SETTINGS}
