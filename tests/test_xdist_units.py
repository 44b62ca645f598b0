"""How .ci/run's two test processes share the work (tests/xdist_units.py): a shared launch's readers are one unit,
costed once, and units start slowest first."""

from __future__ import annotations

import re

from conftest import ROOT
from xdist_units import SECONDS, SHARED_LAUNCHES, UNIT_SECONDS, unit_of, unit_costs

GATE = "tests/test_vllm_cpu_ci.py::test_the_gate_on_stock_vllm_fails_naming_every_rank_s_ep_pynccl"


def test_the_readers_of_one_shared_launch_are_one_unit_costed_once_and_launches_come_before_unit_tests():
    readers = {f"tests/test_x.py::test_reads_{n}": [unit_of(["tmp_path", "cpu_compare"]), True] for n in range(5)}
    units = {**readers, GATE: [None, True], "tests/test_y.py::test_launches": [None, True],
             "tests/test_y.py::test_quick[1]": [None, False], "tests/test_y.py::test_quick[2]": [None, False],
             "tests/test_z.py::test_two_launches": [unit_of(["cpu_run", "side_by_side"]), True]}
    costs = unit_costs(units)
    assert set(costs) == {"cpu_compare", GATE, "tests/test_y.py::test_launches", "tests/test_y.py::test_quick[1]",
                          "tests/test_y.py::test_quick[2]", "cpu_run+side_by_side"}
    assert costs["cpu_compare"] == SECONDS["cpu_compare"]  # the launch, made once, not once per reader
    assert costs["tests/test_y.py::test_quick[1]"] == UNIT_SECONDS
    order = sorted(costs, key=lambda scope: -costs[scope])
    assert order[:2] == [GATE, "cpu_compare"] and order[-2:] == ["tests/test_y.py::test_quick[1]",
                                                                "tests/test_y.py::test_quick[2]"]
    assert unit_of(["tmp_path", "memprobe"]) is None  # no shared launch: a unit of its own


def test_every_shared_launch_is_a_module_or_session_fixture_of_the_suite():
    """A renamed fixture would silently split its readers over both processes again, each making the launch."""
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("*.py"))
    for name in SHARED_LAUNCHES:
        assert re.search(rf'@pytest\.fixture\(scope="(module|session)"\)\ndef {name}\(', sources), name
