"""``benchmarks/topology.py``: its smoke mode runs every method on both label variants, its
summaries compute what the table says, and the docs page shows the committed results."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "topology_benchmark", ROOT / "benchmarks" / "topology.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["topology_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _split(dice: float, cldice: float, bm0: float, bm1: float, b0: float, b1: float) -> dict:
    return {
        "dice": dice,
        "cldice": cldice,
        "betti_matching_0": bm0,
        "betti_matching_1": bm1,
        "betti_0": b0,
        "betti_1": b1,
    }


@pytest.mark.slow
def test_smoke_mode_trains_every_method_on_both_label_variants(tmp_path, monkeypatch, capsys):
    script = _script()
    made: list[Path] = []

    def mkdtemp(suffix=None, prefix=None, dir=None):
        made.append(tmp_path / f"{prefix or 'tmp'}{len(made)}")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    results = ROOT / "benchmarks" / "results" / "topology.md"
    committed = results.read_bytes()
    text = script.main(["--smoke"])
    assert results.read_bytes() == committed  # a smoke run never overwrites the results
    (out,) = [p for d in made for p in d.glob("topology.md")]
    assert out.read_text() == text and text.startswith("Smoke run:")
    printed = capsys.readouterr().out
    assert re.search(r"100%[^\r\n]*? 8/8 runs", printed), printed[-2000:]
    rows = [line for line in text.splitlines() if re.match(r"\| (accurate|noisy) \| ", line)]
    main_rows = [r for r in rows if r.count("|") == 12]  # 11 cells: 3 + 2 groups x 4 metrics
    assert len(main_rows) == 8  # 4 methods x 2 label variants, one seed each
    for labels in script.LABELS:
        for label in script.METHOD_LABELS.values():
            assert any(r.startswith(f"| {labels} | {label}") for r in main_rows), (labels, label)
    for row in main_rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        values = [float(c) for c in cells[3:]]
        dice_and_cldice = values[0:2] + values[4:6]
        assert all(0.0 <= v <= 1.0 for v in dice_and_cldice), row
        assert all(v >= 0.0 and math.isfinite(v) for v in values), row
    assert "ID Dice" in text and "OOD Dice" in text and "ood_blur" in text


def test_groups_sum_the_betti_dimensions_and_average_the_ood_splits():
    script = _script()
    splits = {
        "test": _split(0.9, 0.8, 1.0, 2.0, 1.0, 1.0),
        "ood_a": _split(0.5, 0.4, 4.0, 1.0, 3.0, 1.0),
        "ood_b": _split(0.7, 0.6, 2.0, 1.0, 1.0, 0.0),
    }
    groups = script.group_values(splits)
    assert groups["ID"]["betti_matching"] == 3.0 and groups["ID"]["betti"] == 2.0
    assert groups["OOD"]["dice"] == pytest.approx(0.6)
    assert groups["OOD"]["cldice"] == pytest.approx(0.5)
    assert groups["OOD"]["betti_matching"] == pytest.approx(4.0)
    assert groups["OOD"]["betti"] == pytest.approx(2.5)


def test_tuning_keeps_the_best_id_cldice_and_breaks_ties_by_betti_matching():
    script = _script()

    def run(knob, cldice, bm):
        return {
            "run": {"phase": "tune", "method": "cldice", "knob": knob},
            "splits": {"test": _split(0.8, cldice, bm, 0.0, 0, 0), "ood": _split(0, 0, 0, 0, 0, 0)},
        }

    results = [run(0.3, 0.70, 5.0), run(0.5, 0.75, 6.0), run(0.7, 0.75, 4.0)]
    assert script.choose(results, "cldice") == 0.7
    with pytest.raises(ValueError, match="no tuning run"):
        script.choose(results, "skeleton_recall")


def test_mean_and_standard_deviation_cells():
    script = _script()
    assert script._mean_std([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"
    assert script._mean_std([0.5], 3) == "0.500"


def test_generated_section_round_trips():
    script = _script()
    page = f"intro\n{script.BEGIN}\nold\n{script.END}\noutro\n"
    new = script.with_generated_section(page, "| table |\n")
    assert script.generated_section(new) == "| table |\n"
    assert new.startswith("intro\n") and new.endswith("\noutro\n")
    with pytest.raises(ValueError, match="generated section"):
        script.with_generated_section("no markers", "x")


def test_the_page_shows_the_committed_results():
    script = _script()
    page = (ROOT / "docs" / "benchmark_topology.md").read_text()
    committed = (ROOT / "benchmarks" / "results" / "topology.md").read_text()
    assert script.generated_section(page) == committed, (
        "docs/benchmark_topology.md's tables differ from benchmarks/results/topology.md: run "
        "`python benchmarks/topology.py` (it updates both)"
    )
