"""The smallest torchrun script that builds what one memprobe scenario builds, with no sampling.

Run with ``python -m torch.distributed.run --nproc-per-node N bench/reference.py --tp 4 --ep 2 --stack full OUT.jsonl``.
It builds SGLang 0.5.23's groups (world + every group, NCCL and gloo per rank list), the
stack's pynccl and custom all-reduce, then one 1-element all-reduce per group of width > 1
(memprobe's ``--warmup tiny``), tears down as memprobe does, and appends one line per rank to OUT.jsonl with its
per-process GPU memory at the end (a single NVML read) and its wall time.
"""

import argparse
import json
import os
import time

started = time.monotonic()
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from memprobe.measure import nvml  # noqa: E402
from memprobe.measure.communicators import PyNccl, allocate_custom_allreduce, custom_allreduce_eligibility  # noqa: E402
from memprobe.model.layout import Layout, plan_groups  # noqa: E402
from memprobe.model.stacks import resolve_stack  # noqa: E402

parser = argparse.ArgumentParser()
for name in ("tp", "ep", "pp"):
    parser.add_argument(f"--{name}", type=int, default=1)
parser.add_argument("--stack", default="lean")
parser.add_argument("out")
args = parser.parse_args()
rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local_rank)
device = torch.device("cuda", local_rank)
dist.init_process_group("nccl")
plan, stack = plan_groups(Layout(tp=args.tp, ep=args.ep, pp=args.pp)), resolve_stack(args.stack)
uuid = "GPU-" + str(torch.cuda.get_device_properties(device).uuid)
kept, extra = {}, []
for group in plan.built_groups():
    for ranks in group.rank_lists:
        pair = (dist.new_group(list(ranks), backend="nccl"), dist.new_group(list(ranks), backend="gloo"))
        if rank in ranks:
            kept[group.name] = (pair, ranks)
    (device_group, cpu_group), ranks = kept[group.name]
    wanted = stack.communicators_for(group)
    if len(ranks) > 1 and wanted["pynccl"]:
        extra.append(PyNccl(cpu_group, ranks, device))
    if len(ranks) > 1 and wanted["custom_allreduce"]:
        implementation, _ = custom_allreduce_eligibility(cpu_group, ranks, uuid, stack.custom_allreduce_impl)
        if implementation:
            extra.append(allocate_custom_allreduce(cpu_group, ranks, device, implementation))
for name, ((device_group, _), ranks) in kept.items():
    if len(ranks) > 1:
        dist.all_reduce(torch.ones(1, device=device), group=device_group)
torch.cuda.synchronize()
torch.cuda.empty_cache()
dist.barrier(group=kept["world"][0][1])
used = nvml.process_memory(nvml.handle_by_uuid(uuid)).get(os.getpid())
with open(args.out, "a") as stream:
    stream.write(json.dumps({"rank": rank, "process_bytes": used, "wall_s": time.monotonic() - started}) + "\n")
for communicator in extra:
    if isinstance(communicator, PyNccl):
        communicator.destroy()
dist.barrier(group=kept["world"][0][1])
dist.destroy_process_group()
