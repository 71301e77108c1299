"""``benchmarks/loss_speed.py`` keeps running (its smoke mode) and the page shows its last run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "loss_speed", ROOT / "benchmarks" / "loss_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["loss_speed"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_mode_runs_every_pair_and_the_step_table(tmp_path):
    out = tmp_path / "loss_speed.md"
    _script().main(["--quick", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " ms" not in line]
    summary = next(line for line in text.splitlines() if "values and gradients agree in" in line)
    n = int(summary.split(" rows;")[0].lstrip("- "))
    assert f"agree in {n} of {n}" in summary, summary
    assert "| `compute_loss` |" in text and "LossLandscape" in text and "InfoBatch" in text
    assert len(rows) > n


def test_the_page_shows_the_committed_results():
    script = _script()
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    committed = (ROOT / "benchmarks" / "results" / "loss_speed.md").read_text()
    assert script.generated_section(page) == committed, (
        "docs/benchmarks.md's loss-speed tables differ from benchmarks/results/loss_speed.md: "
        "run `python benchmarks/loss_speed.py --update-docs`"
    )


def test_generated_section_round_trips():
    script = _script()
    page = f"intro\n{script.BEGIN}\nold\n{script.END}\noutro\n"
    new = script.with_generated_section(page, "| table |\n")
    assert script.generated_section(new) == "| table |\n"
    assert new.startswith("intro\n") and new.endswith("\noutro\n")
    with pytest.raises(ValueError, match="generated section"):
        script.with_generated_section("no markers", "x")
