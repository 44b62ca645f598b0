"""Each scenario of one torchrun launch rendezvouses under keys of its own in torchrun's store.

The scenarios of a comparison share one torchrun launch; their processes find each other through
the store torchrun's agent hosts for its workers (``MASTER_ADDR:MASTER_PORT``, shared with the
workers since torch 2.4: ``TORCHELASTIC_USE_AGENT_STORE=True``). ``init_process_group`` with
``init_method=INIT_METHOD`` gets that store behind a prefix naming the scenario, so two scenarios
side by side never read each other's keys. Both engines pass ``INIT_METHOD`` (SGLang's
``init_distributed_environment`` hands its ``distributed_init_method`` to torch unchanged).
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

SCHEME = "memprobe"
INIT_METHOD = f"{SCHEME}://"


def _scenario_store(url: str, scenario: str, timeout: datetime.timedelta | None = None,
                    **_: Any) -> Iterator[tuple[Any, int, int]]:
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise RuntimeError("torchrun does not share its store with the workers here (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                           "or an etcd rendezvous); memprobe gives each scenario its own keys in that store")
    query = parse_qs(urlparse(url).query)
    rank = int(query["rank"][0]) if "rank" in query else int(os.environ["RANK"])
    world_size = int(query["world_size"][0]) if "world_size" in query else int(os.environ["WORLD_SIZE"])
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                           wait_for_workers=False, timeout=timeout or datetime.timedelta(minutes=30))
    yield dist.PrefixStore(f"memprobe/{scenario}/", client), rank, world_size


def use_scenario_store(scenario: str) -> None:
    """From now on ``init_method=INIT_METHOD`` rendezvouses under ``scenario``'s keys (call once per process)."""
    import importlib

    # torch.distributed re-exports a *function* named rendezvous, which hides the module of that name
    rendezvous = importlib.import_module("torch.distributed.rendezvous")

    def handler(url: str, **kwargs: Any) -> Iterator[tuple[Any, int, int]]:
        return _scenario_store(url, scenario, **kwargs)

    rendezvous.register_rendezvous_handler(SCHEME, handler)


def nccl_host() -> str:
    """The host NCCL takes this process to be on: ``NCCL_HOSTID`` replaces the host name in NCCL's host hash
    (NCCL 2.28.9 misc/utils.cc:87-90), so processes of one machine with distinct ``NCCL_HOSTID``s are as many nodes
    to NCCL, joined over its network transport; memprobe names their node the same way."""
    host_id = os.environ.get("NCCL_HOSTID")
    return f"{socket.gethostname()}/NCCL_HOSTID={host_id}" if host_id else socket.gethostname()
