"""NCCL's own account of each communicator, from its debug log. Standard library only.

Input: one file written by one process with ``NCCL_DEBUG=INFO``, ``NCCL_DEBUG_SUBSYS=ALLOC,INIT`` (or ``ALL``) and
``NCCL_DEBUG_FILE=dir/%h.%p.log``. Output: the communicators of that process in the order they were initialised,
each with its identity (comm pointer, commId, rank, nranks, cudaDev, busId), channels, ring/tree peers, the
connections it set up, and the allocations NCCL logged for it, classified by kind and by device/host memory.

Log facts this parser relies on (NCCL 2.28.9, checked against the library's own strings and against real logs):

* Every line is ``host:pid:tid [cudaDev] NCCL INFO <message>`` (WARN lines carry ``file:line``; an optional
  ``[timestamp] `` prefix is accepted). The message text is the call site's format string.
* Allocation lines do **not** carry a comm pointer: ``<file>:<line> Cuda Alloc Size <bytes> pointer <p>``
  (2.28; 2.29+ add `` (<function>)`` after the line and ``memType <n>`` at the end). ``<file>:<line>`` is the
  call site of the allocation macro, so it names what is allocated (see ``SITE_KINDS``).
* Only ``ncclCommInitRank... - Init START/COMPLETE``, ``comm %p rank %d nRanks %d nNodes ...`` and the
  collective lines of the COLL subsystem (``AllReduce: opCount ... comm %p [nranks=%d]``) name a comm pointer.
  So allocations are attributed by thread and position:
    1. a line between a comm's ``Init START`` and ``Init COMPLETE`` belongs to that comm (phase ``init``);
       a new thread id first seen inside that window is that comm's proxy thread (tid -> comm);
    2. later lines from a thread known to belong to a comm (its proxy thread) stay with that comm
       (phase ``connect``: runtime/lazy connection at the first collective, ``NCCL_RUNTIME_CONNECT``);
    3. other later lines go to the comm named by the most recent collective line (ALL/COLL logs), else to
       the comm that completed init most recently (phase ``connect``);
    4. the pinned 4-byte abort flag (init.cc:1994) is logged just *before* its comm's Init START: it waits
       for the next START (``how="next_start"``);
    5. lines before any comm go to the pseudo-communicator ``process``.
  A device allocation whose address is reused by a later one was freed by then (NCCL logs frees only at TRACE);
  if that happens inside the same comm's window it is ``transient`` and left out of the sums (2 MiB IPC probe).
* ``Cuda Alloc Size`` is logged with the *requested* size whatever the allocator: cudaMalloc when
  ``NCCL_CUMEM_ENABLE=0``, cuMemCreate (rounded up to the 2 MiB granularity, not logged) when cuMem is on.
  P2P buffers are logged twice when cudaMalloc is used (``Cuda Alloc Size`` at p2p.cc and
  ``Allocated shareable buffer`` with the same pointer); with cuMem only the second line exists. The parser
  keeps one record per pointer.

API (stdlib only):
  parse_file(path, cumem=None, env=None) -> ProcessLog       one log file (one process)
  ProcessLog.communicators: [Communicator] in Init START order; .process (lines before the first comm)
  Communicator: key/pointer, comm_id, rank, nranks, cuda_dev, bus_id, api, channel_counts, rings, trees,
      connections, allocations [Allocation], summary(phase, memory, rounded) -> {kind: bytes}, total(), counts(),
      connection_plan() (buffers implied by ring + tree), topology(), peers()
  Allocation: bytes, rounded_bytes, file/line/site, kind, memory (device|host), allocator (cudaMalloc|cuMem|host),
      comm, phase (init|connect|process), how, tid, freed_line, transient
  p2p_protocol_split(comm, env) -> LL / LL128 / Simple / control_and_padding bytes (inferred from buffer sizes)
  map_logs(pids, log_dir) -> {rank: Path};  parse_logs(pids, env, log_dir) -> {rank: ProcessLog}
  label_communicators(log, [(label, nranks), ...])
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterable

from memprobe.units import MIB

CUMEM_GRANULARITY = 2 * MIB  # cuMemGetAllocationGranularity(MINIMUM) on H100/H200 (NCCL rounds every cuMem alloc)

# ----------------------------------------------------------------------------------------------- line prefix

_PREFIX = re.compile(
    r"^(?:\[[^\]]*\]\s+)?(?P<host>[^\s:]+):(?P<pid>\d+):(?P<tid>\d+)\s+"
    r"(?:\[(?P<dev>-?\d+)\]\s+)?(?:(?P<ts>[0-9.]+)\s+)?(?:(?P<wsite>\S+:\d+)(?:\s+\([^)]*\))?\s+)?"
    r"NCCL\s+(?P<level>INFO|WARN|TRACE|CALL|ATTN)\s?(?P<msg>.*)$"
)


@dataclass
class LogLine:
    lineno: int
    host: str
    pid: int
    tid: int
    dev: int | None
    level: str
    msg: str


def parse_line(text: str, lineno: int = 0) -> LogLine | None:
    m = _PREFIX.match(text.rstrip("\n"))
    if not m:
        return None
    dev = m.group("dev")
    return LogLine(lineno, m.group("host"), int(m.group("pid")), int(m.group("tid")),
                   int(dev) if dev is not None else None, m.group("level"), m.group("msg").strip())


# ------------------------------------------------------------------------------------------------ messages

_SITE = r"(?P<file>[^\s:]+):(?P<line>\d+)(?:\s+\((?P<func>[^)]*)\))?\s+"
# (api, memory) per allocation message
_ALLOC_MESSAGES = [
    (re.compile(_SITE + r"Cuda (?:Alloc|Calloc|CallocAsync) Size (?P<size>\d+) pointer (?P<ptr>\S+)(?:\s+memType (?P<memtype>\d+))?"), "cuda", "device"),
    (re.compile(_SITE + r"Cuda Host Alloc Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "cudaHostAlloc", "host"),
    (re.compile(_SITE + r"CUMEM Host Alloc Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "cuMemHost", "host"),
    (re.compile(_SITE + r"(?:Host Calloc|malloc) Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "malloc", "host"),
    (re.compile(_SITE + r"Ib Alloc Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "malloc", "host"),
    (re.compile(r"(?:" + _SITE + r")?Mem Realloc old size (?P<old>\d+), new size (?P<size>\d+) pointer (?P<ptr>\S+)"), "realloc", "host"),
    (re.compile(r"(?:" + _SITE + r")?Allocated (?P<size>\d+) bytes of shared memory in (?P<ptr>\S+)"), "shm", "host"),
    (re.compile(r"(?:" + _SITE + r")?Persistent cudaMallocAsync work buf Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "cudaMallocAsync", "device"),
    (re.compile(r"(?:" + _SITE + r")?Persistent host work buf Size (?P<size>\d+) pointer (?P<ptr>\S+)"), "cudaHostAlloc", "host"),
    (re.compile(r"(?:" + _SITE + r")?memory stack (?:non-)?hunk malloc\((?P<size>\d+)\)"), "malloc", "host"),
]
_SHAREABLE = re.compile(r"(?:" + _SITE + r")?(?:PSM:)?Allocated shareable buffer (?P<ptr>\S+) size (?P<size>\d+) ipcDesc")
_CUMEM_SHAREABLE = re.compile(r"CUMEM allocated shareable buffer (?P<ptr>\S+) size (?P<size>\d+)")
_NVLS_ALLOC = re.compile(r"NVLS rank \d+ \(dev \d+\) alloc done, ucptr (?P<ptr>\S+) ucgran \d+ mcptr \S+ mcgran \d+ "
                         r"ucsize (?P<size>\d+) mcsize (?P<mcsize>\d+)")

_INIT = re.compile(
    r"(?:\[Rank \d+\]\s+)?(?P<api>\w+) comm (?P<comm>0x[0-9a-fA-F]+|\(nil\)) rank (?P<rank>-?\d+) nranks (?P<nranks>\d+) "
    r"cudaDev (?P<cudaDev>-?\d+) nvmlDev (?P<nvmlDev>-?\d+) busId (?P<busId>[0-9a-fA-F]+) "
    r"(?:commId 0x(?P<commId>[0-9a-fA-F]+)|parent (?P<parent>\S+) (?:splitCount|childCount) (?P<childCount>-?\d+) "
    r"color (?P<color>-?\d+) key (?P<key>-?\d+)(?: commId 0x(?P<commId2>[0-9a-fA-F]+))?)\s*- Init (?P<what>START|COMPLETE)")
_TOPO_COMM = re.compile(r"comm (?P<comm>0x[0-9a-fA-F]+) rank (?P<rank>\d+) nRanks (?P<nranks>\d+) nNodes (?P<nNodes>\d+) "
                        r"localRanks (?P<localRanks>\d+) localRank (?P<localRank>\d+) MNNVL (?P<mnnvl>\d+)")
_DESTROY = re.compile(r"comm (?P<comm>0x[0-9a-fA-F]+) rank (?P<rank>-?\d+) nranks (?P<nranks>-?\d+) cudaDev -?\d+ busId \S+ - "
                      r"(?P<what>Destroy|Abort) COMPLETE")
_CHANNEL_COUNTS = re.compile(r"(?P<coll>\d+) coll channels, (?P<collnet>\d+) collnet channels, (?P<nvls>\d+) nvls channels, "
                             r"(?P<p2p>\d+) p2p channels, (?P<p2pPerPeer>\d+) p2p channels per peer")
_RING_ORDER = re.compile(r"^Channel (?P<c>\d+)/(?P<n>\d+) :\s*(?P<ranks>(?:-?\d+\s*)+)$")
_RING = re.compile(r"^Ring (?P<c>\d+) : (?P<prev>-?\d+) -> (?P<me>-?\d+) -> (?P<next>-?\d+)")
_TREES = re.compile(r"^Trees\s*(?P<rest>.*)$")
_TREE_ITEM = re.compile(r"\[(?P<c>\d+)\]\s*(?P<d0>-?\d+)/(?P<d1>-?\d+)/(?P<d2>-?\d+)->(?P<me>-?\d+)->(?P<up>-?\d+)")
_TREE_GRAPH = re.compile(r"^Tree (?P<c>\d+) : (?P<up>-?\d+) -> (?P<me>-?\d+) -> (?P<down>-?\d+(?:/-?\d+)*)")
_CONN = re.compile(r"^Channel (?P<c>\d+)/(?P<conn>\d+) : (?P<src>\d+)\[(?P<srcdev>[0-9a-fx]+)\] -> (?P<dst>\d+)\[(?P<dstdev>[0-9a-fx]+)\]"
                   r"(?: \[(?P<dir>send|receive)\])? via (?P<via>\S+(?: pointer)?)(?P<tail>.*)$")
_CONN_SHM = re.compile(r"^Channel (?P<c>\d+) : (?P<src>\d+)\[(?P<srcdev>[0-9a-fx]+)\] -> (?P<dst>\d+)\[(?P<dstdev>[0-9a-fx]+)\] via (?P<via>\S+)(?P<tail>.*)$")
_COLL = re.compile(r"^(?P<op>\w+): opCount (?P<opCount>[0-9a-fA-F]+) .*comm (?P<comm>0x[0-9a-fA-F]+) \[nranks=(?P<nranks>\d+)\]")
_CONNECTED = re.compile(r"^Connected (?:all rings|all trees|NVLS|binomial trees|collnet|CollNet|Collnet)")
_INIT_TIMINGS = re.compile(r"^Init timings - (?P<api>\w+): rank (?P<rank>\d+) nranks (?P<nranks>\d+) total (?P<total>[0-9.]+)")
_BUFFSIZE_ENV = re.compile(r"^NCCL_(?P<name>BUFFSIZE|LL_BUFFSIZE|LL128_BUFFSIZE|CUMEM_ENABLE|RUNTIME_CONNECT|MAX_CTAS|MIN_CTAS|"
                           r"NVLS_ENABLE|P2P_LEVEL|MAX_NCHANNELS|MIN_NCHANNELS) set by environment to (?P<value>\S+?)\.?$")
_P2P_CHUNK = re.compile(r"^P2P Chunksize set to (?P<n>\d+)")
_CC = re.compile(r"^CC (?:On|Off), workFifoBytes (?P<n>\d+)")
_VERSION = re.compile(r"NCCL version (?P<v>[0-9.]+\S*)")
_CUMEM_HINT = re.compile(r"P2P/CUMEM|cuMem|CUMEM")

# ------------------------------------------------------------------------------- call site -> kind (2.28.9)
# kind names: p2p_buffers (per-peer ring/tree/p2p connection buffers: LL + LL128 + Simple on the receiver,
# ncclSendMem on the sender), shm_buffers, net_buffers, nvls_buffers, collnet_buffers, channels (per-channel peer
# tables and ring user-ranks on the device), devcomm (device comm+channel structures), work_fifo, profiler,
# proxy (proxy state/ops pools), register (user-buffer registration), enqueue (per-launch work), bootstrap,
# topology, other.
_FILE_KINDS = [
    ("transport/p2p.cc", "p2p_buffers"),
    ("transport/shm.cc", "shm_buffers"),
    ("transport/net.cc", "net_buffers"),
    ("transport/net_ib", "net_buffers"),
    ("transport/net_socket", "net_buffers"),
    ("transport/nvls.cc", "nvls_buffers"),
    ("transport/coll_net.cc", "collnet_buffers"),
    ("transport/generic.cc", "connection_setup"),
    ("transport.cc", "connection_setup"),
    ("channel.cc", "channels"),
    ("proxy.cc", "proxy"),
    ("register", "register"),
    ("enqueue.cc", "enqueue"),
    ("bootstrap.cc", "bootstrap"),
    ("graph/", "topology"),
    ("misc/shmutils.cc", "shm_buffers"),
    ("allocator.cc", "allocator"),
    ("symmetric", "symmetric"),
    ("dev_runtime.cc", "symmetric"),
    ("ce_coll.cc", "ce_coll"),
    ("init.cc", "init_other"),
]
# Call sites of NCCL 2.28.9 (file:line as logged; checked in runs with NCCL_DEBUG_SUBSYS=ALL, which show what each
# allocation is for, and against the 2.2x source of the same functions). Lines not listed keep the file's kind.
SITE_KINDS: dict[tuple[str, int], str] = {
    ("init.cc", 512): "devcomm",            # devCommSetup: ncclCudaCallocAsync(&devCommAndChans) (device comm + MAXCHANNELS channels)
    ("init.cc", 514): "devcomm",            # devCommSetup: rankToLocalRank[nRanks] (device)
    ("init.cc", 556): "work_fifo",          # devCommSetup: ncclCudaHostCalloc(&workFifoBuf, NCCL_WORK_FIFO_BYTES=1 MiB) (host pinned)
    ("init.cc", 566): "profiler_counters",  # devCommSetup: profiler.workStarted (host pinned)
    ("init.cc", 567): "profiler_counters",  # devCommSetup: profiler.workCompleted (host pinned)
    ("init.cc", 1994): "abort_flag",        # ncclCommInitRankDev: abortFlagDev (host pinned, 4 B), logged *before* Init START
    ("channel.cc", 42): "channels",         # initChannel: sharedRes->devPeers[c] (tpNRanks x ncclDevChannelPeer = 608 B each)
    ("channel.cc", 45): "channels",         # initChannel: channel->devPeers (nRanks+1+nvlsRanks pointers)
    ("channel.cc", 56): "channels",         # initChannel: channel->devRingUserRanks (nRanks ints)
    ("transport/p2p.cc", 183): "p2p_ipc_probe",  # topology: legacy CUDA IPC capability probe, CUDA_IPC_MIN = 2 MiB, freed at once
    ("transport/p2p.cc", 233): "p2p_buffers",    # ncclP2pAllocateShareableBuffer (proxy thread): connection buffers
    ("transport/net.cc", 656): "net_shared_buffers",  # sharedNetBuffersInit via ncclProxyMsgSharedInit: p2pnChannels x 16 x p2pChunkSize
}
# Messages without a call site
MESSAGE_KINDS = {"shm": "proxy_shm", "realloc": "host_bookkeeping", "cudaMallocAsync": "enqueue"}


def _base(path: str) -> str:
    path = path.replace("\\", "/")
    i = path.rfind("/src/")
    return path[i + 5:] if i >= 0 else path


def classify(file: str | None, line: int | None, api: str, memory: str, size: int) -> str:
    """Kind of an allocation from its call site (file:line), its API and size. P2P buffers are split into
    receive/send later (``_split_p2p``), when the comm's buffer sizes are known."""
    if file is None:
        return MESSAGE_KINDS.get(api, "host_bookkeeping" if memory == "host" else "other")
    base = _base(file)
    kind = SITE_KINDS.get((base, line or 0))
    if kind:
        return kind
    if base.startswith("misc/utils.cc") or "memory stack" in base:
        return "host_bookkeeping"
    for fragment, k in _FILE_KINDS:
        if fragment in base:
            kind = k
            break
    else:
        kind = "other"
    if kind == "init_other":
        if memory == "device":
            return "devcomm"
        if api in ("cudaHostAlloc", "cuMemHost"):
            return "work_fifo" if size >= MIB else "host_pinned_small"
        return "host_bookkeeping"
    if kind == "p2p_buffers" and memory == "host":
        return "p2p_host"
    return kind


# ------------------------------------------------------------------------------------------------- records

@dataclass
class Allocation:
    lineno: int
    tid: int
    bytes: int               # as logged (requested size)
    pointer: str
    file: str | None
    line: int | None
    func: str | None
    api: str                 # cuda (cudaMalloc or cuMem, see allocator), cudaHostAlloc, cuMemHost, malloc, shm, ...
    memory: str              # device | host
    kind: str
    allocator: str           # cudaMalloc | cuMem | cudaMallocAsync | host
    rounded_bytes: int       # what the allocator takes: cuMem rounds to CUMEM_GRANULARITY; otherwise = bytes
    comm: str = "process"
    phase: str = "process"   # process | init | connect
    how: str = ""            # attribution: window | tid | collective | last_complete | next_start | none
    memtype: int | None = None
    freed_line: int | None = None   # a later device allocation reused this address: it was freed by then
    freed_in: str | None = None     # comm key whose window that reuse fell in
    message: str = ""

    @property
    def site(self) -> str:
        return f"{_base(self.file)}:{self.line}" if self.file else "-"

    @property
    def transient(self) -> bool:
        """Freed again inside the same comm's window (e.g. the 2 MiB legacy-IPC probe): not part of its footprint."""
        return self.freed_line is not None and self.freed_in == self.comm


@dataclass
class Connection:
    lineno: int
    channel: int
    conn_index: int
    src: int
    dst: int
    via: str        # P2P/IPC, P2P/CUMEM, P2P/direct, SHM/..., NET/...
    direction: str  # send (printed by the sender's setup), receive (NET receive lines)
    phase: str = ""
    text: str = ""


@dataclass
class Communicator:
    key: str                 # comm pointer, with '#n' appended if the pointer is reused
    pointer: str
    index: int               # order of Init START in this process (0-based)
    api: str = ""
    comm_id: str | None = None
    rank: int = -1
    nranks: int = 0
    cuda_dev: int = -1
    nvml_dev: int = -1
    bus_id: str = ""
    parent: str | None = None
    color: int | None = None
    split_key: int | None = None
    n_nodes: int | None = None
    local_ranks: int | None = None
    local_rank: int | None = None
    init_start_line: int = 0
    init_complete_line: int | None = None
    init_seconds: float | None = None
    main_tid: int | None = None
    proxy_tids: list[int] = field(default_factory=list)
    channel_counts: dict[str, int] = field(default_factory=dict)
    p2p_chunk_size: int | None = None
    rings: dict[int, list[int]] = field(default_factory=dict)        # channel -> ring order ("Channel 00/24 : 0 1 2 3")
    ring_neighbours: dict[int, tuple[int, int]] = field(default_factory=dict)  # channel -> (prev, next) (GRAPH: "Ring 00 : 3 -> 0 -> 1")
    trees: dict[int, dict] = field(default_factory=dict)             # channel -> {"down": [...], "up": n}
    n_channels_logged: int | None = None
    connections: list[Connection] = field(default_factory=list)
    allocations: list[Allocation] = field(default_factory=list)
    collectives: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)                  # "Connected all rings" etc.
    destroyed_line: int | None = None

    # ---- summaries
    def live(self, phase: str | None = None, memory: str | None = "device") -> list[Allocation]:
        return [a for a in self.allocations if not a.transient and (phase is None or a.phase == phase)
                and (memory is None or a.memory == memory)]

    def summary(self, phase: str | None = None, memory: str | None = "device", rounded: bool = True) -> dict[str, int]:
        """{kind: bytes} of this comm's allocations (transient ones left out). ``rounded``: as the allocator takes
        them (cuMem: 2 MiB granularity), else as logged."""
        out: dict[str, int] = {}
        for a in self.live(phase, memory):
            out[a.kind] = out.get(a.kind, 0) + (a.rounded_bytes if rounded else a.bytes)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def total(self, phase: str | None = None, memory: str = "device", rounded: bool = True) -> int:
        return sum(self.summary(phase, memory, rounded).values())

    def counts(self, phase: str | None = None, memory: str | None = "device") -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.live(phase, memory):
            out[a.kind] = out.get(a.kind, 0) + 1
        return out

    def peers(self) -> dict[str, list[int]]:
        """Ranks this rank sends to (its own connection lines) and, from ring/tree info, receives from."""
        send = sorted({c.dst for c in self.connections if c.src == self.rank and c.direction != "receive"})
        plan = self.connection_plan()
        recv = sorted(set(plan["recv"]) | {c.src for c in self.connections if c.dst == self.rank})
        return {"send_to": send, "receive_from": recv}

    def ring_links(self) -> dict[int, tuple[int, int]]:
        """channel -> (prev, next) of this rank: GRAPH "Ring" lines, else the ring order ("Channel 00/24 : 0 1 2 3",
        logged by the comm's rank 0 only; see share_rings)."""
        if self.ring_neighbours:
            return dict(self.ring_neighbours)
        out = {}
        for ch, order in self.rings.items():
            if self.rank in order and len(order) > 1:
                i = order.index(self.rank)
                out[ch] = (order[i - 1], order[(i + 1) % len(order)])
        return out

    def connection_plan(self, algorithms: tuple[str, ...] = ("ring", "tree")) -> dict[str, dict[int, int]]:
        """Connections NCCL sets up for this rank, from its ring and tree: per peer, the number of channels with a
        receive buffer (ring prev, tree parent and children) and a send buffer (ring next, tree parent and children).
        A (channel, peer, direction) shared by ring and tree is connected once. With NCCL_RUNTIME_CONNECT (cuMem on)
        only the algorithms the first collectives used are connected: pass algorithms=("ring",) for a 1-element
        all-reduce."""
        recv: set[tuple[int, int]] = set()
        send: set[tuple[int, int]] = set()
        if "ring" in algorithms:
            for ch, (prev, nxt) in self.ring_links().items():
                recv.add((ch, prev))
                send.add((ch, nxt))
        if "tree" in algorithms:
            for ch, t in self.trees.items():
                for peer in ([t["up"]] if t["up"] >= 0 else []) + list(t["down"]):
                    recv.add((ch, peer))
                    send.add((ch, peer))

        def count(links):
            out: dict[int, int] = {}
            for _, peer in links:
                if peer != self.rank:
                    out[peer] = out.get(peer, 0) + 1
            return dict(sorted(out.items()))
        return {"recv": count(recv), "send": count(send)}

    def topology(self) -> dict[str, object]:
        """Per-channel ring neighbours and tree parent/children of this rank, compressed to distinct patterns."""
        ring: dict[tuple[int, int], int] = {}
        for key in self.ring_links().values():
            ring[key] = ring.get(key, 0) + 1
        tree: dict[tuple[int, tuple[int, ...]], int] = {}
        for t in self.trees.values():
            parent_children = (t["up"], tuple(t["down"]))
            tree[parent_children] = tree.get(parent_children, 0) + 1
        return {"ring (prev, next): channels": ring, "tree (parent, children): channels": tree}


@dataclass
class ProcessLog:
    path: str
    host: str | None = None
    pid: int | None = None
    cuda_dev: int | None = None
    version: str | None = None
    cumem: bool | None = None
    env: dict[str, str] = field(default_factory=dict)
    communicators: list[Communicator] = field(default_factory=list)
    process: Communicator = field(default_factory=lambda: Communicator(key="process", pointer="", index=-1))
    unparsed_alloc_lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_lines: int = 0

    def by_key(self, key: str) -> Communicator:
        if key == "process":
            return self.process
        for c in self.communicators:
            if c.key == key:
                return c
        raise KeyError(key)

    def all_allocations(self) -> list[Allocation]:
        out = list(self.process.allocations)
        for c in self.communicators:
            out.extend(c.allocations)
        return sorted(out, key=lambda a: a.lineno)

    def summary(self, rounded: bool = True) -> list[dict]:
        """One row per communicator (and ``process`` for lines before the first one): identity, channel counts,
        device bytes by kind per phase, host bytes."""
        rows = []
        for c in [self.process] + self.communicators:
            rows.append({
                "comm": c.key, "index": c.index, "api": c.api, "commId": c.comm_id, "rank": c.rank, "nranks": c.nranks,
                "cudaDev": c.cuda_dev, "busId": c.bus_id, "channels": c.channel_counts,
                "peers": c.peers() if c.key != "process" else {},
                "device_init": c.summary("init", "device", rounded), "device_connect": c.summary("connect", "device", rounded),
                "device_process": c.summary("process", "device", rounded),
                "device_total": c.total(None, "device", rounded), "host_total": c.total(None, "host", rounded),
                "host": c.summary(None, "host", rounded),
                "n_allocations": len(c.allocations), "n_connections": len(c.connections),
            })
        return rows

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


# -------------------------------------------------------------------------------------------------- parser

LOG_PATTERNS = ("*.log", "*.log.gz")  # as NCCL_DEBUG_FILE writes them; gzipped as committed evidence is kept


def open_log(path: str | os.PathLike) -> IO[str]:
    """A log as text, whether plain or gzipped (``.gz``)."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, "r", encoding="utf-8", errors="replace")


def log_files(folder: str | os.PathLike) -> list[Path]:
    """The NCCL logs in ``folder``, plain or gzipped, in name order."""
    return sorted(path for pattern in LOG_PATTERNS for path in Path(folder).glob(pattern) if path.is_file())


def parse_file(path: str | os.PathLike, cumem: bool | None = None, env: dict[str, str] | None = None) -> ProcessLog:
    with open_log(path) as f:
        return parse_lines(f, path=str(path), cumem=cumem, env=env)


def parse_text(text: str, cumem: bool | None = None, env: dict[str, str] | None = None) -> ProcessLog:
    return parse_lines(text.splitlines(), path="<text>", cumem=cumem, env=env)


_PRE_INIT_SITES = {("init.cc", 1994)}  # logged by ncclCommInitRank* before the comm's "Init START" line


def parse_lines(lines: Iterable[str], path: str = "<lines>", cumem: bool | None = None,
                env: dict[str, str] | None = None) -> ProcessLog:
    """Parse one process's NCCL log.

    ``cumem``: whether NCCL used cuMem for device memory; None = detect (see :func:`_detect_cumem`). ``env``:
    NCCL_* variables the process ran with (run.json); used for buffer sizes (NCCL_BUFFSIZE, NCCL_LL_BUFFSIZE,
    NCCL_LL128_BUFFSIZE) and NCCL_CUMEM_ENABLE."""
    log = ProcessLog(path=path)
    log.env.update({k: str(v) for k, v in (env or {}).items() if k.startswith("NCCL_")})
    parsed = [ll for ll in (parse_line(text, i) for i, text in enumerate(lines, 1)) if ll is not None]
    log.n_lines = len(parsed)
    if parsed:
        log.host, log.pid = parsed[0].host, parsed[0].pid
    _read_version_and_env(log, parsed)
    log.cumem = cumem if cumem is not None else _detect_cumem(log, parsed)
    parser = _Attributor(log)
    for ll in parsed:
        parser.feed(ll)
    parser.finish()
    return log


def _read_version_and_env(log: ProcessLog, parsed: list[LogLine]) -> None:
    for ll in parsed:
        m = _BUFFSIZE_ENV.match(ll.msg)
        if m:
            log.env.setdefault("NCCL_" + m.group("name"), m.group("value"))
        if log.version is None:
            mv = _VERSION.search(ll.msg)
            if mv:
                log.version = mv.group("v")


def _detect_cumem(log: ProcessLog, parsed: list[LogLine]) -> bool | None:
    """Whether NCCL used cuMem: ``P2P/CUMEM`` connections, ``NCCL_CUMEM_ENABLE`` (run.json or the ENV subsystem),
    a shareable buffer without a ``Cuda Alloc`` line of the same pointer, or small allocations on 2 MiB
    boundaries (cudaMalloc packs small allocations at 512 B steps; cuMem maps each at a 2 MiB boundary)."""
    cuda_ptrs: set[str] = set()
    shareable_without_cuda = small_device = small_aligned = 0
    for ll in parsed:
        if " via P2P/CUMEM" in ll.msg:
            return True
        m = _ALLOC_MESSAGES[0][0].match(ll.msg)
        if m:
            cuda_ptrs.add(m.group("ptr"))
            if int(m.group("size")) < 65536:
                small_device += 1
                small_aligned += _address(m.group("ptr")) % CUMEM_GRANULARITY == 0
        m = _SHAREABLE.match(ll.msg)
        if m and m.group("ptr") not in cuda_ptrs:
            shareable_without_cuda += 1
    if "NCCL_CUMEM_ENABLE" in log.env:
        return log.env["NCCL_CUMEM_ENABLE"].strip(".") != "0"
    if shareable_without_cuda or (small_device >= 4 and small_aligned >= 0.9 * small_device):
        return True
    return False if cuda_ptrs else None


def _address(pointer: str) -> int:
    try:
        return int(pointer, 16)
    except ValueError:
        return -1


class _Attributor:
    """Second pass over one process's lines: communicators, their topology and the owner of every allocation
    (rules in the module docstring)."""

    def __init__(self, log: ProcessLog) -> None:
        self.log = log
        self.open_comm: Communicator | None = None        # comm whose Init START has no COMPLETE yet
        self.last_complete: Communicator | None = None
        self.last_coll: Communicator | None = None
        self.main_tids: set[int] = set()
        self.tid_owner: dict[int, Communicator] = {}      # helper (proxy) threads -> their comm
        self.seen_tids: set[int] = set()
        self.pointer_uses: dict[str, int] = {}
        self.by_pointer: dict[str, Communicator] = {}
        self.live_device: dict[int, Allocation] = {}      # start address -> device allocation not known to be freed
        self.seen_ptrs: dict[str, Allocation] = {}
        self.pending: list[Allocation] = []               # pre-init host allocs waiting for the next Init START

    def owner(self, ll: LogLine) -> tuple[Communicator, str, str]:
        if self.open_comm is not None:
            return self.open_comm, "init", "window"
        c = self.tid_owner.get(ll.tid)
        if c is not None:
            return c, "connect", "tid"
        if self.last_coll is not None:
            return self.last_coll, "connect", "collective"
        if self.last_complete is not None:
            return self.last_complete, "connect", "last_complete"
        return self.log.process, "process", "none"

    def feed(self, ll: LogLine) -> None:
        if self.log.cuda_dev is None and ll.dev is not None and ll.dev >= 0 and ll.tid == ll.pid:
            self.log.cuda_dev = ll.dev
        self._note_thread(ll)
        if self._comm_line(ll):
            return
        c, phase, how = self.owner(ll)
        if _topology_line(c, ll, phase):
            return
        self._allocation_line(ll, c, phase, how)

    def _note_thread(self, ll: LogLine) -> None:
        """A thread first seen inside an init window (other than a main thread) is that comm's helper thread."""
        if ll.tid in self.seen_tids:
            return
        self.seen_tids.add(ll.tid)
        if self.open_comm is not None and ll.tid not in self.main_tids:
            self.tid_owner[ll.tid] = self.open_comm
            self.open_comm.proxy_tids.append(ll.tid)

    def _comm_line(self, ll: LogLine) -> bool:
        """Lines that name a comm pointer (init, timings, topology summary, destroy, collectives)."""
        msg = ll.msg
        m = _INIT.search(msg)
        if m:
            self._init_line(ll, m)
            return True
        m = _INIT_TIMINGS.match(msg)
        if m:
            target = self.last_complete or self.open_comm
            if target is not None:
                target.init_seconds = float(m.group("total"))
            return True
        m = _TOPO_COMM.search(msg)
        if m:
            c = self.by_pointer.get(m.group("comm"))
            if c is not None:
                c.n_nodes, c.local_ranks, c.local_rank = int(m.group("nNodes")), int(m.group("localRanks")), int(m.group("localRank"))
            return True
        m = _DESTROY.search(msg)
        if m:
            c = self.by_pointer.get(m.group("comm"))
            if c is not None:
                c.destroyed_line = ll.lineno
            return True
        m = _COLL.match(msg)
        if m:
            c = self.by_pointer.get(m.group("comm"))
            if c is not None:
                self.last_coll = c
                if len(c.collectives) < 20:
                    c.collectives.append(f"{m.group('op')} opCount {m.group('opCount')}")
            return True
        return False

    def _init_line(self, ll: LogLine, m: re.Match) -> None:
        ptr = m.group("comm")
        c = self.by_pointer.get(ptr)
        if m.group("what") == "START" or c is None:
            c = self._start(ll, ptr)
        c.api = m.group("api")
        c.comm_id = m.group("commId") or m.group("commId2") or c.comm_id
        c.rank, c.nranks = int(m.group("rank")), int(m.group("nranks"))
        c.cuda_dev, c.nvml_dev, c.bus_id = int(m.group("cudaDev")), int(m.group("nvmlDev")), m.group("busId")
        if m.group("parent"):
            c.parent, c.color, c.split_key = m.group("parent"), int(m.group("color")), int(m.group("key"))
        if m.group("what") == "COMPLETE":
            c.init_complete_line = ll.lineno
            if self.open_comm is c:
                self.open_comm = None
            self.last_complete = c
            self.last_coll = None

    def _start(self, ll: LogLine, ptr: str) -> Communicator:
        n = self.pointer_uses.get(ptr, 0)
        self.pointer_uses[ptr] = n + 1
        key = ptr if n == 0 else f"{ptr}#{n}"
        c = Communicator(key=key, pointer=ptr, index=len(self.log.communicators), init_start_line=ll.lineno)
        self.log.communicators.append(c)
        self.by_pointer[ptr] = c
        if self.open_comm is not None:
            self.log.warnings.append(f"line {ll.lineno}: Init START of {key} while {self.open_comm.key} is still initialising")
        self.open_comm = c
        c.main_tid = ll.tid
        self.main_tids.add(ll.tid)
        for a in self.pending:   # pre-init allocations logged just before this START
            a.comm, a.phase, a.how = c.key, "init", "next_start"
            c.allocations.append(a)
        self.pending = []
        return c

    def _allocation_line(self, ll: LogLine, c: Communicator, phase: str, how: str) -> None:
        alloc = _parse_alloc(ll, self.log.cumem)
        if alloc is None:
            msg = ll.msg
            if ("Alloc" in msg or "alloc" in msg) and ("Size" in msg or "size" in msg) and "Failed" not in msg:
                if len(self.log.unparsed_alloc_lines) < 50:
                    self.log.unparsed_alloc_lines.append(f"{ll.lineno}: {msg}")
            return
        if alloc.api == "shareable":
            prev = self.seen_ptrs.get(alloc.pointer)
            if prev is not None and prev.memory == "device" and prev.freed_line is None:
                return  # same buffer as its "Cuda Alloc Size" line (cudaMalloc path): count once
            alloc.api = "cuda"
        alloc.comm, alloc.phase, alloc.how = c.key, phase, how
        if alloc.memory == "device":
            _note_reuse(self.live_device, alloc, c.key)
            self.seen_ptrs[alloc.pointer] = alloc
        if self.open_comm is None and alloc.memory == "host" and alloc.file and (_base(alloc.file), alloc.line) in _PRE_INIT_SITES:
            self.pending.append(alloc)
            return
        c.allocations.append(alloc)

    def finish(self) -> None:
        for a in self.pending:   # no Init START followed (log cut, or the init failed before START)
            a.comm, a.phase, a.how = "process", "process", "pending"
            self.log.process.allocations.append(a)
        if self.open_comm is not None:
            self.log.warnings.append(f"{self.open_comm.key}: Init START without Init COMPLETE")
        for comm in self.log.communicators:
            _split_p2p(comm, self.log.env)


def _topology_line(c: Communicator, ll: LogLine, phase: str) -> bool:
    """Channel counts, P2P chunk size, ring order, trees and connections of the comm that owns the line."""
    msg = ll.msg
    m = _CHANNEL_COUNTS.search(msg)
    if m:
        c.channel_counts = {k: int(v) for k, v in m.groupdict().items()}
        return True
    m = _P2P_CHUNK.match(msg)
    if m:
        c.p2p_chunk_size = int(m.group("n"))
        return True
    m = _RING_ORDER.match(msg)
    if m:
        c.rings[int(m.group("c"))] = [int(x) for x in m.group("ranks").split()]
        c.n_channels_logged = int(m.group("n"))
        return True
    m = _RING.match(msg)
    if m:
        c.ring_neighbours[int(m.group("c"))] = (int(m.group("prev")), int(m.group("next")))
        return True
    if _tree_line(c, msg):
        return True
    m = _CONN.match(msg) or _CONN_SHM.match(msg)
    if m:
        gd = m.groupdict()
        c.connections.append(Connection(ll.lineno, int(gd["c"]), int(gd.get("conn") or 0), int(gd["src"]), int(gd["dst"]),
                                        gd["via"], gd.get("dir") or "send", phase, msg))
        return True
    if _CONNECTED.match(msg):
        c.markers.append(f"{ll.lineno}: {msg}")
        return True
    return False


def _tree_line(c: Communicator, msg: str) -> bool:
    m = _TREES.match(msg)
    if m:   # INIT: "Trees [0] 1/-1/-1->0->-1 [1] ..." (children->me->parent)
        for t in _TREE_ITEM.finditer(m.group("rest")):
            down = [int(t.group(k)) for k in ("d0", "d1", "d2") if int(t.group(k)) >= 0]
            c.trees[int(t.group("c"))] = {"down": down, "up": int(t.group("up"))}
        return True
    m = _TREE_GRAPH.match(msg)
    if m:   # GRAPH subsystem: "Tree 0 : 2 -> 3 -> -1/-1/-1" (parent -> me -> children)
        down = [int(x) for x in m.group("down").split("/") if int(x) >= 0]
        c.trees.setdefault(int(m.group("c")), {"down": down, "up": int(m.group("up"))})
        return True
    return False


def _note_reuse(live: dict[int, Allocation], alloc: Allocation, comm_key: str) -> None:
    """A device allocation starting inside a live one means the older one was freed (NCCL logs no frees at INFO)."""
    try:
        start = int(alloc.pointer, 16)
    except ValueError:
        return
    for s0, old in list(live.items()):
        if s0 <= start < s0 + max(old.bytes, 1):
            old.freed_line, old.freed_in = alloc.lineno, comm_key
            del live[s0]
    live[start] = alloc


def _parse_alloc(ll: LogLine, cumem: bool | None) -> Allocation | None:
    msg = ll.msg

    def make(api, memory, size, ptr, file=None, line=None, func=None, memtype=None) -> Allocation:
        if memory == "host":
            allocator = "host"
        elif api == "cudaMallocAsync":
            allocator = "cudaMallocAsync"
        else:
            allocator = "cuMem" if cumem else "cudaMalloc"
        rounded = size
        if allocator == "cuMem" and size > 0:
            rounded = -(-size // CUMEM_GRANULARITY) * CUMEM_GRANULARITY
        kind = classify(file, line, api, memory, size)
        return Allocation(ll.lineno, ll.tid, size, ptr, file, line, func, api, memory, kind, allocator, rounded,
                          memtype=memtype, message=msg)

    for rx, api, memory in _ALLOC_MESSAGES:
        m = rx.match(msg)
        if m:
            gd = m.groupdict()
            line = int(gd["line"]) if gd.get("line") else None
            mt = int(gd["memtype"]) if gd.get("memtype") else None
            size = int(gd["size"]) - (int(gd["old"]) if gd.get("old") else 0)   # realloc: count the growth only
            return make(api, memory, size, gd.get("ptr") or "", gd.get("file"), line, gd.get("func"), mt)
    m = _SHAREABLE.match(msg)
    if m:
        gd = m.groupdict()
        line = int(gd["line"]) if gd.get("line") else None
        # cuMem path: no call site in 2.28 (the cuMemCreate is TRACE-only); p2p connection buffer or NET shared pool
        return make("shareable", "device", int(gd["size"]), gd["ptr"], gd.get("file") or "transport/p2p.cc", line, gd.get("func"))
    m = _CUMEM_SHAREABLE.search(msg)
    if m:
        return make("shareable", "device", int(m.group("size")), m.group("ptr"), "transport/p2p.cc", None)
    m = _NVLS_ALLOC.search(msg)
    if m:
        return make("cuda", "device", int(m.group("size")) + int(m.group("mcsize")), m.group("ptr"), "transport/nvls.cc", None)
    return None


# ----------------------------------------------------------------------------------- P2P buffers by protocol

LL_BUFFSIZE_DEFAULT = 8 * 512 * 8 * 16          # NCCL_LL_LINES_PER_THREAD * LL_MAX_NTHREADS * NCCL_STEPS * 16 B = 512 KiB
LL128_BUFFSIZE_DEFAULT = 120 * 640 * 8 * 8      # LL128_ELEMS_PER_THREAD * LL128_MAX_NTHREADS * NCCL_STEPS * 8 B = 4.69 MiB
SIMPLE_BUFFSIZE_DEFAULT = 1 << 22               # NCCL_BUFFSIZE = 4 MiB
CUDA_IPC_MIN = 2 * MIB                          # p2p.cc rounds every P2P buffer up to this
NCCL_SHARED_STEPS = 16                          # net.cc: shared NET buffer = nChannels * 16 * p2pChunkSize


def buff_sizes(env: dict[str, str] | None = None) -> dict[str, int]:
    env = env or {}

    def get(name: str, default: int) -> int:
        v = env.get(name)
        try:
            return int(str(v).strip(".")) if v not in (None, "", "-2") else default
        except ValueError:
            return default
    return {"LL": get("NCCL_LL_BUFFSIZE", LL_BUFFSIZE_DEFAULT), "LL128": get("NCCL_LL128_BUFFSIZE", LL128_BUFFSIZE_DEFAULT),
            "Simple": get("NCCL_BUFFSIZE", SIMPLE_BUFFSIZE_DEFAULT)}


def _split_p2p(comm: Communicator, env: dict[str, str]) -> None:
    """Name P2P buffers receive (LL + LL128 + Simple + ncclRecvMem header, rounded to 2 MiB) or send (ncclSendMem,
    2 MiB), and recognise the NET shared pool when it came through the cuMem path (no call site)."""
    sizes = buff_sizes(env)
    recv_min = sizes["LL"] + sizes["LL128"]          # even with P2P read (Simple on the sender) a receive buffer holds LL + LL128
    pool = None
    if comm.p2p_chunk_size and comm.channel_counts.get("p2p"):
        pool = comm.channel_counts["p2p"] * NCCL_SHARED_STEPS * comm.p2p_chunk_size
    for a in comm.allocations:
        if a.kind != "p2p_buffers" or a.memory != "device":
            continue
        if a.line is None and pool is not None and a.bytes == pool:
            a.kind = "net_shared_buffers"
        elif a.bytes > CUDA_IPC_MIN or a.bytes >= recv_min:
            a.kind = "p2p_recv_buffers"
        else:
            a.kind = "p2p_send_buffers"


def p2p_protocol_split(comm: Communicator, env: dict[str, str] | None = None, p2p_read: bool = False) -> dict[str, int]:
    """Split a comm's P2P receive/send buffer bytes into LL / LL128 / Simple / control+padding (inferred from the
    buffer sizes NCCL uses, not logged): receive = LL + LL128 + Simple (+ 4 KiB header) rounded up to 2 MiB; send =
    ncclSendMem rounded to 2 MiB (Simple moves to the sender with P2P read, off by default on Hopper)."""
    sizes = buff_sizes(env)
    out = {"LL": 0, "LL128": 0, "Simple": 0, "control_and_padding": 0, "n_recv": 0, "n_send": 0}
    for a in comm.live(None, "device"):
        if a.kind == "p2p_recv_buffers":
            out["n_recv"] += 1
            payload = sizes["LL"] + sizes["LL128"] + (0 if p2p_read else sizes["Simple"])
            out["LL"] += sizes["LL"]
            out["LL128"] += sizes["LL128"]
            out["Simple"] += 0 if p2p_read else sizes["Simple"]
            out["control_and_padding"] += a.rounded_bytes - payload
        elif a.kind == "p2p_send_buffers":
            out["n_send"] += 1
            simple = sizes["Simple"] if p2p_read else 0
            out["Simple"] += simple
            out["control_and_padding"] += a.rounded_bytes - simple
    return out


# ------------------------------------------------------------------------------------------------ run mapping

_FILE_PID = re.compile(r"(?:^|[.\-_])(?P<pid>\d+)(?:\.[^.]*)?\.log$")


def log_pid(path: str | os.PathLike) -> int | None:
    """PID of the process that wrote a log: from the file name (``%h.%p.log``), else from its first line."""
    name = os.path.basename(str(path)).removesuffix(".gz")
    m = re.search(r"\.(\d+)\.log$", name) or _FILE_PID.search(name)
    if m:
        return int(m.group(1))
    try:
        with open_log(path) as f:
            for text in f:
                ll = parse_line(text)
                if ll is not None:
                    return ll.pid
    except OSError:
        return None
    return None


def map_logs(pids: dict[int, int], log_dir: str | os.PathLike) -> dict[int, Path]:
    """rank -> NCCL log file of that rank's process, matching the ranks' pids (run.json) with the logs' pids.
    Files whose pid belongs to no rank (torchrun agent, helpers) are left out."""
    by_pid: dict[int, Path] = {}
    for p in sorted(Path(log_dir).iterdir()):
        if p.is_file():
            pid = log_pid(p)
            if pid is not None:
                by_pid.setdefault(pid, p)
    return {rank: by_pid[pid] for rank, pid in sorted(pids.items()) if pid in by_pid}


def parse_logs(pids: dict[int, int], env: dict[str, str], log_dir: str | os.PathLike) -> dict[int, ProcessLog]:
    """rank -> parsed log; ``env``: the NCCL_* variables the workers ran with (run.json)."""
    logs = {rank: parse_file(path, env=env) for rank, path in map_logs(pids, log_dir).items()}
    share_rings(logs)
    return logs


def share_rings(logs: dict[int, ProcessLog]) -> None:
    """Copy the ring order ("Channel xx/yy : r0 r1 ..."), which NCCL logs on a comm's rank 0 only, to the same
    comm (same commId) in the other ranks' logs."""
    by_id: dict[str, dict[int, list[int]]] = {}
    for log in logs.values():
        for c in log.communicators:
            if c.rings and c.comm_id:
                by_id.setdefault(c.comm_id, c.rings)
    for log in logs.values():
        for c in log.communicators:
            if not c.rings and c.comm_id in by_id:
                c.rings = {ch: list(order) for ch, order in by_id[c.comm_id].items()}


def label_communicators(log: ProcessLog, expected: list[tuple[str, int]]) -> dict[str, str]:
    """Name the comms of one process in init order: ``expected`` = [(label, nranks), ...] in the order the
    program creates them (e.g. pynccl tp, moe_ep, moe_tp, then torch world, tp, moe_ep, moe_tp at first use).
    Returns comm key -> label; comms whose nranks do not match the next label are left unnamed."""
    out: dict[str, str] = {}
    i = 0
    for c in log.communicators:
        if i < len(expected) and expected[i][1] == c.nranks:
            out[c.key] = expected[i][0]
            i += 1
    return out
