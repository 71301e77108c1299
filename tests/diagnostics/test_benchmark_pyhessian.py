"""The PyHessian / loss-landscapes benchmark runs end to end in its smoke mode (tiny sizes):
values checked against the references, equal HVP counts, forward passes as expected in both of
PyHessian's modes. PyHessian and loss-landscapes are in the dev group (under CI, a missing one
fails the test instead of skipping it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyhessian")
pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "landscape_vs_pyhessian.py"


def test_smoke_mode_passes_its_checks(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("landscape_vs_pyhessian", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    assert module.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for mode in ("single batch (data=)", "dataloader (dataloader=)"):
        assert f"| CNN width 8 | {mode} | lambda_max |" in out
        assert f"| MLP 64-16-16-10 | {mode} | trace |" in out
    assert "power iteration, retain_graph=False" in out
