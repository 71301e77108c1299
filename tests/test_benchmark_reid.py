"""``benchmarks/reid_losses.py`` keeps running (its smoke mode) and writes its table."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "reid_losses", ROOT / "benchmarks" / "reid_losses.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["reid_losses"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_mode_runs_and_writes_the_table(tmp_path):
    script = _script()
    out = tmp_path / "reid_losses.md"
    # two rows keep it short: the plain recipe and a margin head with its own parameter group
    picked = ["ce", "arcface_triplet"]
    text = script.main(["--smoke", "--rows", *picked, "--seeds", "0", "--out", str(out)])
    assert out.read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows[1:]] == [script.ROWS[r][0] for r in picked]
    for row in rows[1:]:
        cells = [c.strip() for c in row.split("|")[2:-2]]
        assert len(cells) == 6 and all(re.fullmatch(r"\d+\.\d", c) for c in cells), row
    assert "Smoke run" in text


def test_rows_name_existing_overlays():
    script = _script()
    for _, extra in script.ROWS.values():
        for arg in extra:
            if arg.endswith(".yaml"):
                assert Path(arg).is_file(), arg
