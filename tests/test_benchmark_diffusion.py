"""``benchmarks/diffusion_objectives.py`` keeps running (its smoke mode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diffusion_objectives.py"


@pytest.mark.slow
def test_smoke_mode_scores_every_setting_at_every_budget(tmp_path):
    spec = importlib.util.spec_from_file_location("diffusion_objectives", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.md"
    text = module.main(["--smoke", "--out", str(out)])
    assert out.read_text() == text
    for name in module.SETTINGS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        cells = row.strip("|").split("|")[1:]
        assert len(cells) == 2  # one per smoke budget
        for cell in cells:
            fid, conf = cell.split("(")
            assert float(fid) >= 0 and 0 <= float(conf.rstrip(") ")) <= 1
    assert "## ε constant vs v Min-SNR-5" in text and "## L2 vs scheduled pseudo-Huber" in text
