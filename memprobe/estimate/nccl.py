"""How NCCL 2.28.9 sizes one communicator on one rank, as pure arithmetic (no torch, no GPU).

Every rule cites the line of NVIDIA/nccl at tag v2.28.9-1 it comes from (``src/`` omitted). The rules
cover what memprobe's groups do with a communicator: ``ncclCommInitRank`` and a 1-element fp32
all-reduce, on GPUs of one node joined by an NVSwitch (all GPUs of a node reach each other over
their NVLinks at the same bandwidth) and, between nodes, a :class:`Network`: InfiniBand with or
without GPUDirect RDMA, or NCCL's socket transport. The same lines hold from NCCL 2.27.3 to 2.30.7
(:mod:`memprobe.estimate.nccl_versions` lists them per release).

What is sized here (per rank, per communicator):

* channels: the ring/tree search on an NVSwitch node (``graph/search.cc``), channel duplication
  (``search.cc:961-974``, ``graph/connect.cc:452``) and ``NCCL_MIN/MAX_CTAS`` (``connect.cc:490-491``);
  p2p channels (``graph/paths.cc:862-886``);
* eager connection (cuMem off, or ``NCCL_RUNTIME_CONNECT=0``; ``init.cc:1269-1308``): every ring
  and tree peer of every channel, plus the shared NET pool of the local proxy;
* lazy connection (cuMem on): the per-channel structures at init, each a cuMem mapping of one
  allocation granule (``channel.cc:42-56``, ``init.cc:512-514``), and the ring on the first all-reduce;
* buffer sizes per connection: P2P (``transport/p2p.cc:377-380, 445-448``) and NET, on the GPU only
  with GPUDirect (``transport/net.cc:881, 1048``).

* the warm-up's algorithm (``graph/tuning.cc`` LL latencies) and the local memory CUDA adds when a process first
  launches a kernel with a larger stack than its earlier ones (NCCL's tree kernel, from the sm_90 cubin).

Not sized: NVLS (memprobe keeps ``NCCL_NVLS_ENABLE=0``, as SGLang does), CollNet, PXN, NCCL's small
per-channel structures when cuMem is off (a few hundred KiB per communicator that share 2 MiB pages
of the CUDA allocator), and the once-per-process cost of NCCL's first communicator (device code,
the ring kernel's stack, proxy): that one comes from the calibration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

from memprobe.errors import UsageError
from memprobe.units import KIB as KiB, MIB as MiB

NCCL_VERSION = "2.28.9"

# include/device.h:24, 86, 92-93, 109-110; init.cc:697-699
NCCL_STEPS = 8
MAXCHANNELS = 64
LL_BUFFSIZE = 8 * 512 * NCCL_STEPS * 16  # NCCL_LL_LINES_PER_THREAD x NCCL_LL_MAX_NTHREADS x steps x sizeof(ncclLLFifoLine)
LL128_BUFFSIZE = 120 * 640 * NCCL_STEPS * 8  # NCCL_LL128_ELEMS_PER_THREAD x NCCL_LL128_MAX_NTHREADS x steps x 8 B
SIMPLE_BUFFSIZE = 1 << 22
CUDA_IPC_MIN = 2 * MiB  # include/comm.h:38: P2P buffers are rounded up to it
CONN_MEM = 4096  # sizeof(ncclSendMem) = sizeof(ncclRecvMem) = MEM_ALIGN (include/comm.h:37, 45-69)
SHARED_STEPS = 16  # transport/net.cc:628
P2P_NVL_CHUNKSIZE, P2P_NET_CHUNKSIZE, P2P_PCI_CHUNKSIZE = 512 * KiB, 128 * KiB, 128 * KiB  # init.cc:704-706
CUMEM_GRANULARITY = 2 * MiB  # CU_MEM_ALLOC_GRANULARITY_MINIMUM on Hopper; every cuMem allocation is rounded to it
LOC_BW = 5000.0  # graph/topo.h:15: the bandwidth NCCL gives a single GPU talking to itself
NVLINK_BW = {90: 20.6, 80: 20.0, 86: 12.0, 70: 20.0, 100: 40.1}  # graph/topo.h:16-21, per link, GB/s
SM90_SPEEDS_INTRA = (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0)  # graph/search.cc:981
SM90_SPEEDS_INTER = (48.0, 45.0, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0, 17.5, 15.0, 12.0, 6.0, 3.0, 2.4, 1.2, 0.24, 0.12)  # :982
SEARCH_MAX_CHANNELS = MAXCHANNELS // 2  # init.cc: ringGraph/treeGraph maxChannels

#: NCCL variables the rules read, with what NCCL takes when they are unset.
MODELLED_VARIABLES = (
    "NCCL_CUMEM_ENABLE", "NCCL_RUNTIME_CONNECT", "NCCL_BUFFSIZE", "NCCL_LL_BUFFSIZE", "NCCL_LL128_BUFFSIZE",
    "NCCL_MAX_CTAS", "NCCL_MIN_CTAS", "NCCL_MAX_NCHANNELS", "NCCL_MIN_NCHANNELS", "NCCL_MAX_NRINGS", "NCCL_MIN_NRINGS",
    "NCCL_MAX_P2P_NCHANNELS", "NCCL_MIN_P2P_NCHANNELS", "NCCL_P2P_NVL_CHUNKSIZE", "NCCL_P2P_NET_CHUNKSIZE",
    "NCCL_P2P_PCI_CHUNKSIZE", "NCCL_P2P_READ_ENABLE", "NCCL_NVLS_ENABLE", "NCCL_NET_GDR_LEVEL",
)
#: NCCL variables that change no device allocation the rules size (logging, interface names).
NEUTRAL_VARIABLES = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE", "NCCL_SOCKET_IFNAME", "NCCL_IB_HCA",
                     "NCCL_COMM_SPLIT_SHARE_RESOURCES", "NCCL_VERSION")


def _align(value: int, granule: int) -> int:
    return -(-value // granule) * granule


def _pow2_up(value: int) -> int:
    power = 1
    while power < value:
        power *= 2
    return power


@dataclass(frozen=True)
class NcclSettings:
    """The NCCL variables a scenario sets, read the way NCCL 2.28.9 reads them."""

    cumem: bool
    runtime_connect: bool = True
    buffsizes: tuple[int, int, int] = (LL_BUFFSIZE, LL128_BUFFSIZE, SIMPLE_BUFFSIZE)  # LL, LL128, Simple
    max_ctas: int = MAXCHANNELS
    min_ctas: int = 1
    max_p2p_channels: int = MAXCHANNELS
    min_p2p_channels: int = 1
    chunk_nvl: int = P2P_NVL_CHUNKSIZE
    chunk_net: int = P2P_NET_CHUNKSIZE
    p2p_read: bool | None = None  # None: NCCL decides (paths.cc:371)
    gdr: bool = True
    version: str = NCCL_VERSION  # the NCCL whose rules apply (memprobe.estimate.nccl_versions)

    @property
    def eager(self) -> bool:
        """init.cc:1269: lazy (runtime) connection needs cuMem; without it init connects every ring and tree peer."""
        return not (self.cumem and self.runtime_connect)

    @classmethod
    def from_env(cls, env: Mapping[str, str], cumem_default: bool = True) -> "NcclSettings":
        unknown = sorted(key for key in env if key.startswith("NCCL_") and key not in MODELLED_VARIABLES + NEUTRAL_VARIABLES)
        if unknown:
            raise UsageError(f"the estimate does not model {', '.join(unknown)}; it models "
                             f"{', '.join(MODELLED_VARIABLES)} (measure with memprobe run instead)")
        if _int(env, "NCCL_NVLS_ENABLE", 0) not in (0,):
            raise UsageError("the estimate models NCCL_NVLS_ENABLE=0 only (NVLink SHARP buffers are not sized)")
        ll, ll128, simple = (_buffsize(env, "NCCL_LL_BUFFSIZE", LL_BUFFSIZE), _buffsize(env, "NCCL_LL128_BUFFSIZE", LL128_BUFFSIZE),
                             _buffsize(env, "NCCL_BUFFSIZE", SIMPLE_BUFFSIZE))
        max_channels = min(MAXCHANNELS, max(1, _channels(env, "MAX", MAXCHANNELS)))  # connect.cc:342-355
        min_channels = min(MAXCHANNELS, max(0, _channels(env, "MIN", 0)))  # connect.cc:328-338
        read = env.get("NCCL_P2P_READ_ENABLE")
        return cls(
            cumem=bool(_int(env, "NCCL_CUMEM_ENABLE", 1 if cumem_default else 0)),
            runtime_connect=bool(_int(env, "NCCL_RUNTIME_CONNECT", 1)),
            buffsizes=(ll, ll128, simple),
            max_ctas=max(1, min(MAXCHANNELS, _ctas(env, "NCCL_MAX_CTAS", MAXCHANNELS), max_channels)),
            min_ctas=max(1, min(MAXCHANNELS, max(_ctas(env, "NCCL_MIN_CTAS", 1), min_channels))),
            max_p2p_channels=_int(env, "NCCL_MAX_P2P_NCHANNELS", MAXCHANNELS),
            min_p2p_channels=_int(env, "NCCL_MIN_P2P_NCHANNELS", 1),
            chunk_nvl=_int(env, "NCCL_P2P_NVL_CHUNKSIZE", P2P_NVL_CHUNKSIZE),
            chunk_net=_int(env, "NCCL_P2P_NET_CHUNKSIZE", P2P_NET_CHUNKSIZE),
            p2p_read=None if read is None else bool(_int(env, "NCCL_P2P_READ_ENABLE", 0)),
            gdr=_int(env, "NCCL_NET_GDR_LEVEL", 1) != 0,
        )


# strtoll(str, nullptr, 0) as misc/param.cc:84 (ncclLoadParam) calls it: C whitespace, a sign, then 0x hex, 0 octal or
# decimal digits, the rest of the text ignored ("1_048_576" is 1, "abc" is 0)
_STRTOLL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _strtoll(text: str) -> int | None:
    """The number NCCL 2.28.9 reads from ``text``; None where strtoll sets errno (ERANGE past int64)."""
    match = _STRTOLL.match(text)
    if match is None:
        return 0
    digits = match.group(2)
    value = int(digits[2:], 16) if digits[:2] in ("0x", "0X") else int(digits, 8) if digits.startswith("0") else int(digits)
    value = -value if match.group(1) == "-" else value
    return value if INT64_MIN <= value <= INT64_MAX else None


def _c_int(value: int) -> int:
    """An int64 parameter stored in a C ``int`` (``int buffSizes[]``, include/comm.h:536; ``int maxCTAsEnv``,
    init.cc:1636-1637): its low 32 bits, as the two's-complement conversion every NCCL build uses."""
    return (value + 2**31) % 2**32 - 2**31


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    if value is None or value == "":  # param.cc:82: an empty value is unset
        return default
    parsed = _strtoll(value)
    if parsed is None:  # NCCL would log "Invalid value" and run on its default: the scenario says otherwise
        raise UsageError(f"{key}={value!r} is past int64: NCCL {NCCL_VERSION} ignores it and keeps its default "
                         f"(misc/param.cc:85-87); leave it unset for that")
    return parsed


def _buffsize(env: Mapping[str, str], key: str, default: int) -> int:
    """init.cc:700-713: -2 (the parameter's default) means NCCL's size; any other value is taken as given, in an int.
    A size whose step (a buffer holds NCCL_STEPS of them) is under one byte leaves NCCL nothing to run with: refused."""
    raw = _int(env, key, -2)
    if raw == -2:
        return default
    size = _c_int(raw)
    if size // NCCL_STEPS < 1 or raw != size:
        read = f"{size:,} bytes" if raw == size else f"{raw:,}, kept in a C int as {size:,}"
        raise UsageError(f"{key}={env[key]!r}: NCCL {NCCL_VERSION} reads it as {read} (strtoll, init.cc:713), no buffer "
                         f"NCCL can run with; give a size of at least {NCCL_STEPS} bytes and below 2 GiB")
    return size


def _ctas(env: Mapping[str, str], key: str, default: int) -> int:
    """init.cc:1661-1680: a value <= 0 (in an int) is ignored ("too low, leaving it set at ..."); above MAXCHANNELS it
    is capped (init.cc:1760-1767)."""
    value = _c_int(_int(env, key, default))
    return default if value <= 0 else min(value, MAXCHANNELS)


def _channels(env: Mapping[str, str], bound: str, default: int) -> int:
    """connect.cc:328-355: NCCL_<bound>_NRINGS, then NCCL_<bound>_NCHANNELS over it, each -2 (its default) when unset."""
    value = default
    for key in (f"NCCL_{bound}_NRINGS", f"NCCL_{bound}_NCHANNELS"):
        read = _int(env, key, -2)
        if read != -2:
            value = _c_int(read)
    return value


NETWORKS = ("ib-gdr", "ib", "socket")
#: NIC speed when none is given: a 400 Gb/s InfiniBand NIC; for sockets NCCL's own figure for an interface whose
#: speed it cannot read (transport/net_socket.cc:104-106), which is what the loopback runs of results/ measured.
DEFAULT_NIC_GBPS = {"ib-gdr": 400.0, "ib": 400.0, "socket": 10.0}


@dataclass(frozen=True)
class Network:
    """How nodes are joined. ``ib-gdr``: InfiniBand (or RoCE) with GPUDirect RDMA, one NIC per GPU; ``ib``: the
    same NICs without GPUDirect; ``socket``: NCCL's socket transport over one interface per node."""

    kind: str = "ib-gdr"
    nic_gbps: float = DEFAULT_NIC_GBPS["ib-gdr"]

    @classmethod
    def of(cls, kind: str, nic_gbps: float | None = None) -> "Network":
        if kind not in NETWORKS:
            raise UsageError(f"--network {kind!r}: one of {', '.join(NETWORKS)}")
        if nic_gbps is not None and not 0 < nic_gbps <= 10_000:
            raise UsageError(f"--nic-gbps {nic_gbps:g}: a NIC speed in Gb/s, above 0 and at most 10000")
        return cls(kind, DEFAULT_NIC_GBPS[kind] if nic_gbps is None else float(nic_gbps))

    @property
    def gdr(self) -> bool:
        """Whether NET buffers can sit on the GPU: only with GPUDirect RDMA (net.cc:881, 1048 use ``useGdr``); the
        socket transport takes host pointers only, so NCCL's GDR check fails for it."""
        return self.kind == "ib-gdr"

    @property
    def nic_bw(self) -> float:
        """GB/s as NCCL's topology holds it: the NIC's speed in Mb/s over 8000 (graph/topo.cc:373)."""
        return self.nic_gbps * 1000 / 8000

    def nics_per_node(self, gpus_per_node: int) -> int:
        return 1 if self.kind == "socket" else gpus_per_node

    def describe(self) -> str:
        what = {"ib-gdr": "InfiniBand with GPUDirect RDMA", "ib": "InfiniBand without GPUDirect (NET buffers in host memory)",
                "socket": "NCCL's socket transport (NET buffers in host memory)"}[self.kind]
        return f"{what}, {self.nic_gbps:g} Gb/s per NIC"


@dataclass(frozen=True)
class GpuLinks:
    """What the channel search sees of one GPU: its compute capability and its NVLinks to the node's NVSwitch."""

    compute_capability: int  # e.g. 90
    nvlinks: int
    arm_host: bool = False  # the calibrated HGX H200 nodes are x86; only NCCL's NET chunk reads it

    @property
    def nvlink_bw(self) -> float:
        """graph/search.cc:29-37 getTotalBw: the sum of a GPU's NVLink bandwidths (topo.h:16-21 per link)."""
        per_link = NVLINK_BW.get(self.compute_capability, NVLINK_BW[90] if self.compute_capability >= 90 else 20.0)
        return self.nvlinks * per_link


def _search_intra(bandwidth: float, speeds: tuple[float, ...]) -> tuple[int, float]:
    """Channels and speed of NCCL's ring search inside one NVSwitch node (graph/search.cc:1072-1157).

    On an NVSwitch every ring channel takes ``speed`` on each GPU's one link to the switch, in and out,
    so ``floor(bw / speed)`` channels fit (up to the search's maximum). The search starts at the fastest
    speed not above the path bandwidth (:1075), keeps a solution only if it moves more bytes
    (``nChannels x speed``, ties keep the earlier one), and lowers the speed while the next one is above
    0.49 of the best found (:1143-1146).
    """
    index = 0
    while speeds[index] > bandwidth and index < len(speeds) - 1:
        index += 1
    best_channels, best_speed = 0, 0.0
    while True:
        speed = speeds[index]
        channels = min(SEARCH_MAX_CHANNELS, int(bandwidth // speed))
        if channels * speed > best_channels * best_speed:
            best_channels, best_speed = channels, speed
        if best_channels == SEARCH_MAX_CHANNELS:  # every channel found: the search stops as optimal
            break
        if index >= len(speeds) - 1 or (best_channels and speeds[index + 1] / best_speed <= 0.49):
            break
        index += 1
    return max(1, best_channels), best_speed


def _search_inter(nic_bw: float, nics: int) -> tuple[int, float]:
    """Channels and speed of the ring search across nodes: as :func:`_search_intra`, each of ``nics`` NICs of
    ``nic_bw`` GB/s carrying ``floor(nic_bw / speed)`` channels (a 400 Gb/s NIC: one at 48 GB/s; NCCL's
    10 Gb/s socket default: one at 1.2 GB/s)."""
    speeds = SM90_SPEEDS_INTER
    index = 0
    while speeds[index] > nic_bw and index < len(speeds) - 1:
        index += 1
    best_channels, best_speed = 0, 0.0
    while True:
        speed = speeds[index]
        found = min(SEARCH_MAX_CHANNELS, nics * int(nic_bw // speed))
        if found * speed > best_channels * best_speed:
            best_channels, best_speed = found, speed
        if best_channels == SEARCH_MAX_CHANNELS or index >= len(speeds) - 1:
            break
        if best_channels and speeds[index + 1] / best_speed <= 0.49:
            break
        index += 1
    return (best_channels, best_speed) if best_channels else (1, speeds[-1])  # search.cc:1187-1194: a simple order


def _duplicate(channels: int, speed: float, compute_capability: int) -> int:
    """graph/search.cc:961-974 ncclTopoDupChannels."""
    if speed < 25.0:
        return channels
    if compute_capability > 80 and speed < 50.0 and channels > 4:
        return channels
    return min(channels * 2, SEARCH_MAX_CHANNELS)


@dataclass(frozen=True)
class Channels:
    collective: int  # ring/tree channels ("coll channels" in NCCL's init log)
    p2p: int  # "p2p channels": the NET pool and the structures of the channels above ``collective``
    search: int  # channels the topology search found, before duplication
    speed: float  # GB/s per channel of that search


@lru_cache(maxsize=None)
def channels(n_ranks: int, n_nodes: int, links: GpuLinks, nics_per_node: int, settings: NcclSettings,
             network: Network = Network()) -> Channels:
    """Channel counts of a communicator of ``n_ranks`` ranks over ``n_nodes`` nodes."""
    if n_nodes <= 1:
        # search.cc:41-45: a single GPU talks to itself at LOC_BW; else the NVLink bandwidth to the switch
        bandwidth = LOC_BW if n_ranks == 1 else links.nvlink_bw
        search, speed = _search_intra(bandwidth, SM90_SPEEDS_INTRA)
        found = _duplicate(search, speed, links.compute_capability)
    else:
        # Between nodes every ring channel leaves its node through a NIC: the search (search.cc:1072-1157, the
        # inter-node speeds of :982) starts at the fastest speed not above the NIC's bandwidth (:1075), the GPU's
        # path to it being no narrower (PCIe Gen5 x16), and fits floor(bw / speed) channels through each NIC.
        # GPUDirect does not enter the search: NCCL asks for it when it connects (net.cc:301, 344).
        nics = max(1, min(nics_per_node, n_ranks // n_nodes))
        search, speed = _search_inter(network.nic_bw, nics)
        found = _duplicate(search, speed, links.compute_capability)
    collective = min(MAXCHANNELS, found * 2)  # connect.cc:452 "Duplication should be complete now"
    if n_nodes > 1 and links.compute_capability >= 90 and speed > 45.0 and collective < 16:
        collective *= 2  # connect.cc:480-483: 4 compute channels per search channel across nodes
    collective = min(collective, settings.max_ctas)  # connect.cc:490
    collective = max(collective, min(settings.min_ctas, MAXCHANNELS))  # connect.cc:491 copyChannels
    p2p = max(min(collective, settings.max_p2p_channels), settings.min_p2p_channels)  # paths.cc:866-867
    p2p = min(_pow2_up(p2p), MAXCHANNELS)  # paths.cc:883-885
    return Channels(collective=collective, p2p=p2p, search=search, speed=speed)


@dataclass(frozen=True)
class Peers:
    """Per channel, the peers a rank receives from and sends to on the ring and the tree."""

    recv_local: frozenset[int]
    send_local: frozenset[int]
    recv_remote: frozenset[int]
    send_remote: frozenset[int]
    ring_recv: int
    ring_send: int


def ring_and_tree_peers(rank: int, n_ranks: int, ranks_per_node: int, eager: bool) -> Peers:
    """Whom a rank connects to per channel (transport/generic.cc:21-23 ring, :50-53 tree).

    Ring and tree follow rank order: on an NVSwitch every order is equally fast and NCCL's search takes the
    GPUs in index order, so ring ``r-1 -> r -> r+1`` and, inside a node, the tree is the chain of the
    node's ranks (seen in every committed NCCL log: "Channel 00/24 : 0 1 2 3", "Trees ... 1/-1/-1->0->-1").
    Across nodes the tree joins the nodes' first ranks in a binary tree (connect.cc connectTrees).
    Connections are made once per (channel, peer, direction) (generic.cc via ncclTransportP2pConnect).
    Lazy connection (cuMem on) connects only the ring, on the first all-reduce: a 4-byte all-reduce
    runs Ring/LL on these nodes (the cuMem runs of 2 and 4 H200s connect no tree peer).
    """
    recv, send = _peer_sets(rank, n_ranks, ranks_per_node, eager)
    node = rank // ranks_per_node
    return Peers(
        recv_local=frozenset(p for p in recv if p // ranks_per_node == node),
        send_local=frozenset(p for p in send if p // ranks_per_node == node),
        recv_remote=frozenset(p for p in recv if p // ranks_per_node != node),
        send_remote=frozenset(p for p in send if p // ranks_per_node != node),
        ring_recv=(rank - 1) % n_ranks, ring_send=(rank + 1) % n_ranks,
    )


def _peer_sets(rank: int, n_ranks: int, ranks_per_node: int, eager: bool) -> tuple[set[int], set[int]]:
    """(peers received from, peers sent to) of :func:`ring_and_tree_peers`, without the rank itself."""
    recv, send = {(rank - 1) % n_ranks}, {(rank + 1) % n_ranks}
    if eager:
        node = rank // ranks_per_node
        first = node * ranks_per_node
        last = min(n_ranks, first + ranks_per_node) - 1
        chain = [peer for peer in (rank - 1, rank + 1) if first <= peer <= last]
        recv.update(chain)
        send.update(chain)
        if rank == first:
            heads = [peer_node * ranks_per_node for peer_node in _tree_neighbours(node, -(-n_ranks // ranks_per_node))]
            recv.update(heads)
            send.update(heads)
    recv.discard(rank)
    send.discard(rank)
    return recv, send


def peer_counts(rank: int, n_ranks: int, ranks_per_node: int, eager: bool) -> tuple[int, int, int, int]:
    """(local receive, local send, remote receive, remote send) peers: all a rank's bytes depend on."""
    if n_ranks == 1:
        return (0, 0, 0, 0)
    recv, send = _peer_sets(rank, n_ranks, ranks_per_node, eager)
    node = rank // ranks_per_node
    recv_local = sum(1 for peer in recv if peer // ranks_per_node == node)
    send_local = sum(1 for peer in send if peer // ranks_per_node == node)
    return recv_local, send_local, len(recv) - recv_local, len(send) - send_local


def list_peer_counts(n_ranks: int, ranks_per_node: int, eager: bool) -> list[tuple[int, int, int, int]]:
    """:func:`peer_counts` of every index of a list of ``n_ranks``.

    A node strictly between the first and the last, holding two ranks or more, has its ring neighbours on the
    nodes either side and no rank of it is another node's first: its ranks' counts depend only on their place on
    the node and on how many tree neighbours the node has, so each such kind of node is worked out once.
    """
    n_nodes = -(-n_ranks // ranks_per_node)
    counts: list[tuple[int, int, int, int]] = []
    kinds: dict[int, list[tuple[int, int, int, int]]] = {}
    for node in range(n_nodes):
        members = range(node * ranks_per_node, min(n_ranks, (node + 1) * ranks_per_node))
        if ranks_per_node < 2 or node in (0, n_nodes - 1):
            counts.extend(peer_counts(rank, n_ranks, ranks_per_node, eager) for rank in members)
            continue
        kind = len(_tree_neighbours(node, n_nodes)) if eager else 0
        if kind not in kinds:
            kinds[kind] = [peer_counts(rank, n_ranks, ranks_per_node, eager) for rank in members]
        counts.extend(kinds[kind])
    return counts


def _tree_neighbours(node: int, n_nodes: int) -> set[int]:
    """Parent and children of ``node`` in a binary tree over the nodes (heap order)."""
    neighbours = {child for child in (2 * node + 1, 2 * node + 2) if child < n_nodes}
    if node > 0:
        neighbours.add((node - 1) // 2)
    return neighbours


@dataclass(frozen=True)
class Part:
    """One kind of allocation in a communicator: how many, how large each, why."""

    kind: str
    count: int
    each_bytes: int
    rule: str

    @property
    def bytes(self) -> int:
        return self.count * self.each_bytes


#: Per-thread stack of the 4-byte fp32 sum all-reduce kernels, from NCCL 2.28.9's sm_90 cubin (``cuobjdump
#: -res-usage`` of nvidia-nccl-cu13 2.28.9's libnccl.so.2: ncclDevKernel_AllReduce_Sum_f32_RING_LL, _TREE_LL).
WARMUP_KERNEL_STACK = {"ring": 1736, "tree": 1856}
THREADS_PER_SM = 2048  # sm_90: the most resident threads per SM, each given the stack in local memory
# graph/tuning.cc:143-166 tuner constants, LL protocol: base latency per algorithm, per-hop latency per link (us)
LL_BASE_LATENCY = {"tree": 6.8, "ring": 6.6}
LL_NVLINK_LATENCY = {"tree": 0.6, "ring": 0.6}
LL_NET_LATENCY = {"tree": 5.0, "ring": 2.7}
NET_OVERHEAD = 1.0  # tuning.cc:214-219 getNetOverhead on x86 Intel (2.0 on AMD): the least a ring step costs across nodes


def _log2i(value: int) -> int:
    return value.bit_length() - 1


def warmup_algorithm(n_ranks: int, n_nodes: int) -> str:
    """The algorithm NCCL's tuner picks for a 4-byte all-reduce: the LL latencies of graph/tuning.cc:353-385 (the
    bandwidth term of 4 bytes is nil). On one node the ring is 0.2 us faster; across 3 or more nodes (or 2 nodes
    of several GPUs) the tree's log2 hops win."""
    per_node = n_ranks // n_nodes
    steps, inter_steps = 2 * (n_ranks - 1), (0 if n_nodes == 1 else 2 * (n_nodes - 1))
    inter = {algo: LL_NET_LATENCY["tree"] if per_node == 1 else LL_NET_LATENCY[algo] for algo in ("ring", "tree")}  # :356
    intra = max(LL_NVLINK_LATENCY["ring"], NET_OVERHEAD) if n_nodes > 1 else LL_NVLINK_LATENCY["ring"]  # :371-377
    ring = LL_BASE_LATENCY["ring"] + (steps - inter_steps) * intra + inter_steps * inter["ring"]
    tree = LL_BASE_LATENCY["tree"] + 2 * ((per_node - 1) * LL_NVLINK_LATENCY["tree"] + _log2i(n_nodes) * inter["tree"])
    return "tree" if tree < ring else "ring"


def local_memory(stack: int, sm_count: int) -> int:
    """What CUDA reserves on the GPU for a per-thread stack of ``stack`` bytes: every resident thread of every SM,
    the stack rounded to 16 bytes, the whole in 2 MiB pages. CUDA grows it when a kernel needing a larger stack is
    launched (NCCL leaves cudaLimitStackSize alone unless NCCL_SET_STACK_SIZE=1: init.cc:1412, 1537-1539)."""
    return _align(_align(stack, 16) * THREADS_PER_SM * sm_count, CUMEM_GRANULARITY)


@dataclass(frozen=True)
class CommunicatorEstimate:
    """What one rank's communicator allocates at init and at its first all-reduce."""

    n_ranks: int
    channels: Channels
    init_parts: tuple[Part, ...] = field(default_factory=tuple)
    first_use_parts: tuple[Part, ...] = field(default_factory=tuple)
    warmup: str = ""  # the algorithm of its first 4-byte all-reduce ("" for one rank)

    @property
    def init_bytes(self) -> int:
        return sum(part.bytes for part in self.init_parts)

    @property
    def first_use_bytes(self) -> int:
        return sum(part.bytes for part in self.first_use_parts)

    @property
    def bytes(self) -> int:
        return self.init_bytes + self.first_use_bytes

    def describe(self) -> str:
        parts = [*self.init_parts, *self.first_use_parts]
        text = " + ".join(f"{part.count} x {_mib(part.each_bytes)} {part.kind}" for part in parts if part.count)
        return f"{self.n_ranks} ranks, {self.channels.collective} coll / {self.channels.p2p} p2p channels: {text or 'nothing'}"


def _mib(value: int) -> str:
    return f"{value / MiB:g} MiB"


def p2p_buffer_sizes(settings: NcclSettings, read: bool) -> tuple[int, int]:
    """(send, receive) bytes of one P2P connection (transport/p2p.cc:377-380, 445-448)."""
    ll, ll128, simple = settings.buffsizes
    send = CONN_MEM + (simple if read else 0)
    recv = CONN_MEM + ll + ll128 + (0 if read else simple)
    return _align(send, CUDA_IPC_MIN), _align(recv, CUDA_IPC_MIN)


def net_buffer_sizes(settings: NcclSettings, network: Network = Network()) -> tuple[int, int]:
    """(send, receive) device bytes of one NET connection (transport/net.cc:881, 1048): with GPUDirect, LL128 and
    Simple on the GPU on the send side (LL stays in host memory), every protocol on the receive side; without it
    (``ib``, ``socket`` or ``NCCL_NET_GDR_LEVEL=0``) all of them in host memory."""
    if not (settings.gdr and network.gdr):
        return 0, 0
    ll, ll128, simple = settings.buffsizes
    return _align(ll128 + simple, CUDA_IPC_MIN), _align(ll + ll128 + simple, CUDA_IPC_MIN)


def p2p_chunk(settings: NcclSettings, n_nodes: int, links: GpuLinks | None = None) -> int:
    """init.cc:716-721: the P2P chunk, at most an eighth of the Simple buffer; from NCCL 2.29.2 the NET chunk is
    doubled on Arm hosts with sm100 GPUs (init.cc:751-752 there; see :mod:`memprobe.estimate.nccl_versions`)."""
    from memprobe.estimate.nccl_versions import net_chunk_ratio

    ratio = net_chunk_ratio(settings.version, links.arm_host, links.compute_capability) if links else 1
    chunk = settings.chunk_net * ratio if n_nodes > 1 else settings.chunk_nvl
    return min(chunk, settings.buffsizes[2] // NCCL_STEPS)


@lru_cache(maxsize=None)
def communicator(rank: int, n_ranks: int, ranks_per_node: int, links: GpuLinks, nics_per_node: int,
                 settings: NcclSettings, network: Network = Network()) -> CommunicatorEstimate:
    """One rank's bytes of a communicator whose ranks fill nodes of ``ranks_per_node`` in rank order."""
    n_nodes = -(-n_ranks // ranks_per_node)
    chans = channels(n_ranks, n_nodes, links, nics_per_node, settings, network)
    init: list[Part] = []
    first_use: list[Part] = []
    if settings.cumem:
        # channel.cc:42,45,56: three cuMem allocations per channel initialised (every p2p channel too,
        # paths.cc:889), plus devComm and rankToLocalRank (init.cc:512-514); each rounded to a granule
        structures = 3 * max(chans.collective, chans.p2p) + 2
        init.append(Part("channel structures", structures, CUMEM_GRANULARITY, "channel.cc:42-56, init.cc:512-514"))
    if n_ranks == 1:  # generic.cc:18: a one-rank communicator connects no peer
        if settings.eager:
            init.append(_net_pool(chans, n_nodes, settings, links))
        return CommunicatorEstimate(n_ranks, chans, tuple(init), tuple(first_use))
    peers = ring_and_tree_peers(rank, n_ranks, ranks_per_node, settings.eager)
    read = settings.p2p_read if settings.p2p_read is not None else links.compute_capability == 80  # paths.cc:371
    p2p_send, p2p_recv = p2p_buffer_sizes(settings, read)
    net_send, net_recv = net_buffer_sizes(settings, network)
    c = chans.collective
    connections = [
        Part("P2P receive buffers", c * len(peers.recv_local), p2p_recv, "transport/p2p.cc:445-448"),
        Part("P2P send buffers", c * len(peers.send_local), p2p_send, "transport/p2p.cc:377-380"),
        Part("NET receive buffers", c * len(peers.recv_remote), net_recv, "transport/net.cc:1048"),
        Part("NET send buffers", c * len(peers.send_remote), net_send, "transport/net.cc:881"),
    ]
    connections = [part for part in connections if part.count and part.each_bytes]
    if settings.eager:
        init.extend(connections)
        init.append(_net_pool(chans, n_nodes, settings, links))
    else:
        first_use.extend(connections)
    return CommunicatorEstimate(n_ranks, chans, tuple(init), tuple(first_use), warmup_algorithm(n_ranks, n_nodes))


def _net_pool(chans: Channels, n_nodes: int, settings: NcclSettings, links: GpuLinks) -> Part:
    """init.cc:1307-1308 + transport/net.cc:647: the local NET proxy's shared pool, allocated at init in the
    eager branch even when every peer is reached over NVLink: p2p channels x 16 steps x the P2P chunk. It is on
    the GPU whatever the network (net.cc:706 passes ``cuda=1``), GPUDirect or not."""
    size = chans.p2p * SHARED_STEPS * p2p_chunk(settings, n_nodes, links)
    return Part("shared NET pool", 1, size, "init.cc:1307-1308, net.cc:647, 706")
