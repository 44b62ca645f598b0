"""Before any process starts: checks (exit 2), run folders, the run record and what each worker measures."""

from __future__ import annotations

import datetime
import errno
import os
import socket
import sys
import tempfile
from pathlib import Path

from memprobe import __version__, engines
from memprobe.errors import UsageError
from memprobe.launch.options import CPU_RANKS_PER_NODE, LaunchOptions, worker_environment
from memprobe.measure import nvml
from memprobe.model.launch_files import WorkerConfig
from memprobe.model.records import WORKER_CONFIG, PlannedGroup, RunRecord, atomic_write_text
from memprobe.model.scenario import DEFAULT_ENGINE, Scenario
from memprobe.model.steps import sequence

# Collectives inside the workers time out this much later than --timeout, so that the parent, which
# sees every rank, names the silent one; the workers' own timeout only matters if the parent is gone.
WORKER_TIMEOUT_MARGIN_S = 60.0


def expected_readings(scenario: Scenario) -> int:
    """Readings each rank takes (the progress total)."""
    engine = scenario.engine_ref.engine
    plan = engine.plan_for(scenario.layout, scenario.resolved_stack)
    return len(sequence((group.name for group in plan.built_groups()), engine.kind_names))


def visible_gpu_count(environment: dict[str, str]) -> tuple[int, str]:
    gpus = nvml.visible_gpus(environment)
    if not nvml.is_available(gpus):
        return 0, gpus.reason
    return len(gpus), ""


def check_out_dir(out_dir: Path, option: str = "--out-dir") -> None:
    """A folder can be made under ``out_dir``: its nearest existing folder is reachable and takes a new folder
    (tried with one that is removed at once: /proc and /sys refuse it although root may write there)."""
    existing = out_dir
    while True:
        try:
            os.stat(existing)
            break
        except FileNotFoundError:
            if existing.parent == existing:
                break
            existing = existing.parent
        except OSError as error:  # a symlink loop, a name too long, no permission on the way
            raise UsageError(f"{option} {out_dir}: {error.strerror or error}") from None
    if not existing.is_dir():
        raise UsageError(f"{option} {out_dir}: {existing} is not a writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".memprobe-probe-", dir=existing))
    except OSError as error:
        raise UsageError(f"{option} {out_dir}: cannot create a folder in {existing} ({error.strerror or error})") from None


def check_rendezvous_port(options: LaunchOptions) -> None:
    """A --master-port that this node (which hosts torchrun's store) cannot bind fails inside torchrun ~5 s
    later, as a rank that never started; say which port, now."""
    if options.master_port is None or options.rdzv_endpoint is not None or options.node_rank != 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's TCPStore binds
        try:
            probe.bind((options.master_addr, options.master_port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UsageError(f"--master-port {options.master_port} is already in use on {options.master_addr}; "
                                 "choose another, or leave it out for a free one") from None
            raise UsageError(f"--master-addr {options.master_addr} --master-port {options.master_port}: cannot bind the "
                             f"rendezvous there ({error.strerror or error})") from None


def check_world_fits(scenarios: list[Scenario], options: LaunchOptions) -> None:
    if options.device != "cpu":
        return
    for scenario in scenarios:
        needed = scenario.layout.world_size // options.nnodes
        if needed > CPU_RANKS_PER_NODE:
            raise UsageError(f"scenario {scenario.name} needs {needed} CPU ranks per node; --device cpu runs at most "
                             f"{CPU_RANKS_PER_NODE} per node (each imports torch)")


def preflight(scenarios: list[Scenario], options: LaunchOptions) -> None:
    """Everything that can be checked before a process starts (exit 2 on any problem)."""
    check_world_fits(scenarios, options)
    check_out_dir(Path(options.out_dir))
    check_rendezvous_port(options)
    for scenario in scenarios:
        ref = scenario.engine_ref
        if ref.installed:  # each scenario may bring its own installation of the engine
            if scenario.sglang:
                ref.engine.check_site(scenario.sglang, f"scenario {scenario.name}: sglang {scenario.sglang}")
            environ = worker_environment(scenario, options)
            installation = ref.engine.installation(environ, scenario.sglang)
            problem = ref.engine.cpu_requirements_problem(environ, installation) if options.device == "cpu" else None
            if problem:
                raise UsageError(problem)
    for scenario in scenarios:
        if scenario.layout.world_size % options.nnodes:
            raise UsageError(f"scenario {scenario.name}: world size {scenario.layout.world_size} does not split over "
                             f"--nnodes {options.nnodes}")
    environment = worker_environment(scenarios[0], options)
    if environment.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1":
        raise UsageError("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 keeps torchrun's store from its workers, where each "
                         "scenario rendezvouses; unset it")
    if options.device == "cpu":
        return
    count, reason = visible_gpu_count(environment)
    from memprobe.launch.no_gpu import no_gpu_hint  # only on this path
    if count == 0:
        raise UsageError(f"no NVIDIA GPU visible ({reason or 'NVML found none'}); {no_gpu_hint()}")
    for scenario in scenarios:
        needed = scenario.layout.world_size // options.nnodes
        if needed > count:
            tp = count
            suggestion = f"memprobe compare --tp {tp} --ep {max(1, tp // 2)}" if tp > 1 else "memprobe run --tp 1"
            raise UsageError(f"scenario {scenario.name} needs {needed} GPUs per node but this node has {count}; try: "
                             f"{suggestion}, or estimate it without GPUs: {estimate_command(scenarios)}")


def estimate_command(scenarios: list[Scenario]) -> str:
    """The ``memprobe estimate`` command for the widest of ``scenarios`` (its MoE layout where there is one)."""
    widest = max(scenarios, key=lambda s: (s.layout.world_size, *tuple(s.layout.as_dict().values())[1:]))
    stacks = list(dict.fromkeys(s.stack for s in scenarios if s.layout == widest.layout))
    default = engines.get(DEFAULT_ENGINE).engine
    engine = "" if widest.engine_ref.engine is default else f" --engine {widest.engine}"
    return f"memprobe estimate {widest.layout.flags()}{engine} --stacks {','.join(stacks)}"


def new_run_dir(root: Path, name: str) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate = root / f"{stamp}-{name}"
    suffix = 2
    while candidate.exists():
        candidate = root / f"{stamp}-{name}-{suffix}"
        suffix += 1
    return candidate



def new_record(scenario: Scenario, options: LaunchOptions, run_dir: Path, command: list[str] | None) -> RunRecord:
    stack = scenario.resolved_stack
    assert stack is not None  # Scenario.__post_init__ resolves it
    plan = scenario.engine_ref.engine.plan_for(scenario.layout, stack)
    return RunRecord(
        run_id=run_dir.name,
        layout=scenario.layout.as_dict(),
        world_size=scenario.layout.world_size,
        stack=stack.as_dict(),
        device=options.device,
        warmup=scenario.warmup,
        env_preset=scenario.env_preset,
        env=dict(scenario.env),
        plan=[PlannedGroup(name=g.name, ranks=[list(r) for r in g.rank_lists], alias_of=g.alias_of,
                           communicators=stack.communicators_for(g)) for g in plan.groups],
        scenario=scenario.name,
        engine=scenario.engine,
        definition=scenario.definition(),
        memprobe_version=__version__,
        created_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=list(command or sys.argv),
    )


def write_worker_config(scenario: Scenario, options: LaunchOptions, run_dir: Path) -> None:
    assert scenario.resolved_stack is not None  # Scenario.__post_init__ resolves it
    config = WorkerConfig(layout=scenario.layout, stack=scenario.resolved_stack, device=options.device,
                          warmup=scenario.warmup, timeout_s=options.timeout_s + WORKER_TIMEOUT_MARGIN_S,
                          allow_busy_gpu=options.allow_busy_gpu, engine=scenario.engine)
    atomic_write_text(run_dir / WORKER_CONFIG, config.to_json())


def local_ranks(scenario: Scenario, options: LaunchOptions) -> range:
    per_node = scenario.layout.world_size // options.nnodes
    return range(options.node_rank * per_node, (options.node_rank + 1) * per_node)


