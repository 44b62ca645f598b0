"""Where each NCCL source line the estimate's rules come from sits in every NCCL release read, and what it says.

Usage: python tools/nccl_rule_sites.py NCCL_GIT_DIR > memprobe/estimate/nccl_rule_sites.json
NCCL_GIT_DIR: a clone of github.com/NVIDIA/nccl (a bare one will do). A statement is compared with its
whitespace removed and read up to its end (``;``), so a line that was only re-wrapped reads the same.
"""

from __future__ import annotations

import json
import subprocess
import sys

TAGS = ("v2.27.3-1", "v2.27.5-1", "v2.27.6-1", "v2.27.7-1", "v2.28.3-1", "v2.28.7-1", "v2.28.9-1", "v2.29.2-1",
        "v2.29.3-1", "v2.29.7-1", "v2.30.3-1", "v2.30.4-1", "v2.30.7-1")

#: rule -> (file, the start of the statement, whitespace removed)
SITES = {
    "NCCL_STEPS": ("src/include/device.h", "#defineNCCL_STEPS"),
    "MAXCHANNELS": ("src/include/device.h", "#defineMAXCHANNELS"),
    "LL lines per thread": ("src/include/device.h", "#defineNCCL_LL_LINES_PER_THREAD"),
    "LL threads": ("src/include/device.h", "#defineNCCL_LL_MAX_NTHREADS"),
    "LL128 elements per thread": ("src/include/device.h", "#defineNCCL_LL128_ELEMS_PER_THREAD"),
    "LL128 threads": ("src/include/device.h", "#defineNCCL_LL128_MAX_NTHREADS"),
    "Simple buffer": ("src/init.cc", "#defineDEFAULT_BUFFSIZE"),
    "P2P NVLink chunk": ("src/init.cc", "NCCL_PARAM(P2pNvlChunkSize,"),
    "P2P NET chunk": ("src/init.cc", "NCCL_PARAM(P2pNetChunkSize,"),
    "P2P chunk for several nodes": ("src/init.cc", "comm->p2pChunkSize=ncclParamP2pNetChunkSize();"),
    "P2P chunk for several nodes, scaled": ("src/init.cc", "comm->p2pChunkSize=ratio*ncclParamP2pNetChunkSize();"),
    "P2P NET chunk doubled on Arm with sm100": ("src/init.cc", "intratio=(comm->cpuArch==NCCL_TOPO_CPU_ARCH_ARM&&comm->minCompCap>=100)"),
    "lazy connection needs cuMem": ("src/init.cc", "comm->runtimeConn=comm->cuMemSupport&&"),
    "eager NET pool at init": ("src/init.cc", "NCCLCHECKGOTO(ncclProxyCallBlocking(comm,&proxyConn,ncclProxyMsgSharedInit,&comm->p2pnChannels"),
    "CUDA_IPC_MIN": ("src/include/comm.h", "#defineCUDA_IPC_MIN"),
    "connection memory alignment": ("src/include/comm.h", "#defineMEM_ALIGN"),
    "NET pool steps": ("src/transport/net.cc", "#defineNCCL_SHARED_STEPS"),
    "NET pool size": ("src/transport/net.cc", "state->size=nChannels*NCCL_SHARED_STEPS"),
    "NET pool on the GPU": ("src/transport/net.cc", "NCCLCHECK(sharedNetBuffersInit(proxyState,1,connection->tpLocalRank"),
    "NET send buffers on the GPU with GDR": ("src/transport/net.cc", "NCCL_NET_MAP_ADD_POINTER(map,0,p!=NCCL_PROTO_LL&&resources->useGdr"),
    "NET receive buffers on the GPU with GDR": ("src/transport/net.cc", "NCCL_NET_MAP_ADD_POINTER(map,0,resources->useGdr?1:0,proxyState->buffSizes[p]"),
    "P2P send size": ("src/transport/p2p.cc", "if(info->read)sendSize+="),
    "P2P receive size": ("src/transport/p2p.cc", "if(!(info->read&&p==NCCL_PROTO_SIMPLE))recvSize+="),
    "P2P read only on sm80": ("src/graph/paths.cc", "if(read&&(gpu1->gpu.cudaCompCap==gpu2->gpu.cudaCompCap)"),
    "p2p channels a power of 2": ("src/graph/paths.cc", "comm->p2pnChannels=pow2Up(comm->p2pnChannels)"),
    "p2p channels initialised": ("src/graph/paths.cc", "for(intc=comm->nChannels;c<comm->p2pnChannels;c++)NCCLCHECK(initChannel"),
    "sm90 intra-node speeds": ("src/graph/search.cc", "floatsm90SpeedArrayIntra[]="),
    "sm90 inter-node speeds": ("src/graph/search.cc", "floatsm90SpeedArrayInter[]="),
    "no duplication below 25 GB/s": ("src/graph/search.cc", "if(graph->bwIntra<25.0)returnncclSuccess"),
    "no duplication on sm90 below 50 GB/s past 4 channels": ("src/graph/search.cc", "if(ccMin>80&&graph->bwIntra<50.0"),
    "channels doubled after connection": ("src/graph/connect.cc", "nChannels=comm->nChannels=std::min(MAXCHANNELS,nChannels*2)"),
    "sm90 several nodes doubled": ("src/graph/connect.cc", "if(comm->minCompCap>=90&&comm->nNodes>1&&graphs[NCCL_ALGO_RING]->bwIntra>45.0"),
    "channel structure: shared peers": ("src/channel.cc", "NCCLCHECK(ncclCudaCallocAsync(sharedRes->devPeers+channelId"),
    "channel structure: peers": ("src/channel.cc", "NCCLCHECK(ncclCudaCallocAsync(&channel->devPeers,"),
    "channel structure: ring ranks": ("src/channel.cc", "NCCLCHECK(ncclCudaCallocAsync(&channel->devRingUserRanks"),
    "LOC_BW": ("src/graph/topo.h", "#defineLOC_BW"),
    "SM90_NVLINK_BW": ("src/graph/topo.h", "#defineSM90_NVLINK_BW"),
    "NIC bandwidth from its speed": ("src/graph/topo.cc", "net->net.bw=mbps/8000.0"),
    "socket speed when unreadable": ("src/transport/net_socket.cc", "*speed=10000;"),
    "NCCL_HOSTID names the host": ("src/misc/utils.cc", "if((hostId=ncclGetEnv(\"NCCL_HOSTID\"))!=NULL)"),
}


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _statement(lines: list[str], start: int) -> str:
    """The statement from line ``start`` to its end: a #define is one line, else up to a ``;`` outside brackets."""
    if lines[start].lstrip().startswith("#"):
        return _squeeze(lines[start].split("//")[0].split("/*")[0])
    text = ""
    for line in lines[start:start + 6]:
        text += _squeeze(line.split("//")[0])
        if text.endswith((";", "{", ")")) and text.count("(") == text.count(")"):
            break
    return text


def sites(git_dir: str) -> dict:
    table: dict = {}
    for tag in TAGS:
        files: dict[str, list[str]] = {}
        for rule, (path, start) in SITES.items():
            if path not in files:
                files[path] = subprocess.run(["git", "-C", git_dir, "show", f"{tag}:{path}"], check=True,
                                             capture_output=True, text=True).stdout.splitlines()
            lines = files[path]
            found = [index for index, line in enumerate(lines) if start in _squeeze(line)]
            entry = None
            if found:
                statement = _statement(lines, found[0])
                entry = {"line": found[0] + 1, "statement": statement[statement.index(start):]}
            table.setdefault(rule, {"file": path, "at": {}})["at"][tag.removeprefix("v").removesuffix("-1")] = entry
    return table


if __name__ == "__main__":
    print(json.dumps({"source": "github.com/NVIDIA/nccl tags, read by tools/nccl_rule_sites.py", "rules": sites(sys.argv[1])},
                     indent=1, sort_keys=False))
