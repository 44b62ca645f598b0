"""How `.ci/run` spreads the suite over two processes (``pytest -n 2 --dist loadgroup``, pytest-xdist).

Two rules, so that both processes end together and no shared launch is made twice:

* the tests that read one shared launch (a session or module fixture that starts torchrun, :data:`SHARED_LAUNCHES`)
  are one unit of work, given to one process: that process makes the launch once (with plain ``-n 2`` each process
  that gets one of its readers makes it again);
* the units start slowest first (:data:`SECONDS`, measured), then every other unit that launches (``e2e``), then the
  rest, so that the last minute is many short tests that even the two processes out, never one long launch alone.

pytest-xdist's own ``loadgroup`` would keep ``xdist_group`` marks together, but on pytest 9.2 it groups nothing (it
renames ``item._nodeid``, which pytest 9 no longer reads: pytest-xdist issue #1386), so this module replaces it: each
worker writes, per test, its unit and whether it is e2e into a folder the controller named
(``MEMPROBE_TEST_XDIST_UNITS``), and the controller's scheduler reads it once every worker has collected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

FOLDER = "MEMPROBE_TEST_XDIST_UNITS"

#: fixtures that start torchrun once for all their readers (tests/conftest.py, test_one_launch_cpu.py,
#: test_engine_plugin.py, test_vllm_installed.py)
SHARED_LAUNCHES = ("cpu_compare", "cpu_run", "side_by_side", "toy", "captured")

#: seconds a unit took on the 2-core machine, both processes busy (pytest --durations): only the order of the units
#: reads them, so a stale figure costs balance, never a result. A unit is a shared launch's name or a test (its
#: node id without parameters: every parameter set counts this much).
SECONDS = {
    "tests/test_vllm_cpu_ci.py::test_the_gate_on_stock_vllm_fails_naming_every_rank_s_ep_pynccl": 50,
    "cpu_compare": 40,
    "tests/test_vllm_cpu_ci.py::test_the_pytest_example_asserts_on_vllm_s_own_code_and_fails_on_stock": 27,
    "tests/test_sglang_engine.py::test_real_sglang_groups_line_up_with_the_reference_engine_on_cpu": 25,
    "toy": 25,
    "tests/test_sglang_engine.py::test_real_releases_before_and_after_the_pr_in_one_comparison_on_cpu": 24,
    "tests/test_sglang_cpu_ci.py::test_the_gate_on_the_revert_of_pr_22515_fails_naming_every_rank_s_moe_communicators": 23,
    "captured": 18,
    "side_by_side": 14,
    "tests/test_workflows.py::test_the_cpu_workflow_gates_sglang_s_own_code_as_written": 14,
    "tests/test_multinode_cpu.py::test_compare_on_two_nodes_with_a_dynamic_rendezvous_completes_on_both": 13,
    "cpu_run": 13,
    "tests/test_sglang_cpu_ci.py::test_the_pytest_example_asserts_on_the_engine_s_code_and_fails_on_the_revert": 13,
    "tests/test_workflows.py::test_the_cpu_workflow_gates_vllm_s_own_code_as_written": 12,
    "tests/test_vllm_installed.py::test_a_real_cpu_run_of_the_installed_vllm_and_its_estimate": 12,
    "tests/test_one_launch_cpu.py::test_a_failed_scenario_does_not_get_the_next_one_killed_by_torchrun": 12,
    "tests/test_multinode_cpu.py::test_run_on_two_nodes_completes_on_both": 10,
    "tests/test_api.py::test_the_example_passes_with_the_lean_stack_on_cpu": 10,
}
E2E_SECONDS = 3  # an e2e test not in SECONDS: a launch
UNIT_SECONDS = 0.01  # any other test


def unit_of(fixturenames) -> str | None:
    """The shared launches a test reads, as one unit name (None: it reads none)."""
    shared = sorted(set(SHARED_LAUNCHES) & set(fixturenames))
    return "+".join(shared) or None


def start_controller(config) -> None:
    """In the controller of ``-n N --dist loadgroup``: the folder the workers write their units to (they inherit it)."""
    if config.getoption("dist", None) == "loadgroup" and config.getoption("numprocesses", None) \
            and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ[FOLDER] = tempfile.mkdtemp(prefix="memprobe-xdist-units-")


def stop_controller() -> None:
    folder = os.environ.get(FOLDER)
    if folder and not os.environ.get("PYTEST_XDIST_WORKER"):
        for path in Path(folder).iterdir():
            path.unlink()
        Path(folder).rmdir()


def write_units(items) -> None:
    """In a worker: every collected test's unit and whether it launches, for the controller's scheduler."""
    folder, worker = os.environ.get(FOLDER), os.environ.get("PYTEST_XDIST_WORKER")
    if not folder or not worker:
        return
    units = {item.nodeid: [unit_of(getattr(item, "fixturenames", ())), item.get_closest_marker("e2e") is not None]
             for item in items}
    partial = Path(folder) / f".{worker}.json"
    partial.write_text(json.dumps(units))
    partial.replace(Path(folder) / f"{worker}.json")


def unit_costs(units: dict[str, list]) -> dict[str, float]:
    """Seconds per unit, from what the workers wrote (node id -> [unit or None, e2e]): a shared launch's unit costs
    its SECONDS figure once; a test alone its own figure (per parameter set), else E2E_SECONDS or UNIT_SECONDS."""
    cost: dict[str, float] = {}
    for nodeid, (unit, e2e) in units.items():
        if unit is not None and unit in SECONDS:
            cost[unit] = SECONDS[unit]
        else:
            scope = unit or nodeid
            alone = SECONDS.get(nodeid.split("[", 1)[0], E2E_SECONDS if e2e else UNIT_SECONDS)
            cost[scope] = cost.get(scope, 0) + alone
    return cost


def make_scheduler(config, log):
    """The scheduler of ``--dist loadgroup``: xdist's scope scheduling over this module's units, slowest first."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedLaunchScheduling(LoadScopeScheduling):
        units: dict[str, list] | None = None
        ordered = False

        def _read_units(self) -> dict[str, list]:
            if self.units is None:
                written = sorted(Path(os.environ.get(FOLDER, "")).glob("gw*.json")) if os.environ.get(FOLDER) else []
                self.units = json.loads(written[0].read_text()) if written else {}
            return self.units

        def _split_scope(self, nodeid: str) -> str:
            unit, _ = self._read_units().get(nodeid, (None, False))
            return unit or nodeid

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the first assignment: the queue is complete, in collection order
                cost = unit_costs(self._read_units())
                self.workqueue = OrderedDict(sorted(self.workqueue.items(), key=lambda item: -cost.get(item[0], 0)))
                self.ordered = True
            super()._assign_work_unit(node)

    return SharedLaunchScheduling(config, log)
