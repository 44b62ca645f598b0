"""A stand-in never answers for a name that a really installed package lacks: regex's own import asks for
``regex.DEFAULT_VERSION`` as a submodule while its module is half made (a circular ``from regex import ...``), and a
hollow module there broke regex on a machine where it was installed (vLLM 0.33.0's import chain imports regex)."""

from __future__ import annotations

import importlib
import sys

import pytest

from memprobe.engines import standins


@pytest.fixture
def packages(tmp_path, monkeypatch):
    real = tmp_path / "memprobe_real_pkg"
    real.mkdir()
    # the real package's own import asks for a name it does not define through the import system, as a circular
    # ``from package import NAME`` does: Python then tries ``package.NAME`` as a submodule
    (real / "__init__.py").write_text("try:\n    from memprobe_real_pkg import NOT_DEFINED\nexcept ImportError:\n"
                                      "    NOT_DEFINED = 'the package default'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in ("memprobe_real_pkg", "memprobe_absent_pkg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delitem(sys.modules, "memprobe_absent_pkg.sub", raising=False)
    standins.install(["memprobe_real_pkg", "memprobe_absent_pkg"])
    yield
    for name in ("memprobe_real_pkg", "memprobe_absent_pkg", "memprobe_absent_pkg.sub"):
        sys.modules.pop(name, None)


def test_a_real_package_keeps_its_own_import_error(packages):
    module = importlib.import_module("memprobe_real_pkg")
    assert not getattr(module, standins.STOOD_IN_ATTRIBUTE, False)
    assert module.NOT_DEFINED == "the package default"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("memprobe_real_pkg.missing")


def test_an_absent_package_and_its_submodules_are_stood_in(packages):
    sub = importlib.import_module("memprobe_absent_pkg.sub")
    assert getattr(sub, standins.STOOD_IN_ATTRIBUTE)
    assert "memprobe_absent_pkg" in standins.stood_in()
