"""Every benchmark script keeps running: its ``--smoke`` mode (the full run's code path at tiny
sizes) writes its tables, with the expected rows and columns and finite numbers in them.

``loss_speed.py`` and ``landscape_vs_pyhessian.py`` have their own smoke tests
(``tests/test_benchmark_loss_speed.py``, ``tests/diagnostics/test_benchmark_pyhessian.py``).
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^-?\d+(\.\d+)?( ± \d+(\.\d+)?)?$")  # "12.3" or "12.3 ± 0.4"


def _main(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(autouse=True)
def _keep_threads():
    """The scripts set torch's intra-op threads for their runs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table(text: str, first_column: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the Markdown table whose first column is ``first_column``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_column} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert all(len(r) == len(header) for r in rows), (header, rows)
    return header, rows


def assert_numbers(rows: list[list[str]], columns: range | list[int]) -> None:
    for row in rows:
        for j in columns:
            assert NUMBER.match(row[j]), (row[0], j, row[j])
            assert all(math.isfinite(float(v)) for v in row[j].split(" ± ")), row


def _run(name: str, tmp_path: Path, monkeypatch, capsys) -> str:
    """``--smoke`` without ``--out``: the table goes to a fresh temporary folder (here under
    ``tmp_path``), ``benchmarks/results/`` is left as it was, and a progress bar over the runs
    reaches its end."""
    made: list[Path] = []

    def mkdtemp(suffix=None, prefix=None, dir=None):
        made.append(tmp_path / f"{prefix or 'tmp'}{len(made)}")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    results = ROOT / "benchmarks" / "results" / f"{name}.md"
    committed = results.read_bytes()
    _main(name, monkeypatch)(["--smoke"])
    assert results.read_bytes() == committed
    printed = capsys.readouterr().out
    # tqdm: "100%|██████████| 2/2 runs [00:05<00:00]"; rich: "━━━━ 100% 2/2 runs 0:00:05 < 0:00:00"
    assert re.search(r"100%[^\r\n]*? (\d+)/\1 (runs|trainings)", printed), printed[-2000:]
    (out,) = [p for d in made for p in d.glob(f"{name}.md")]
    text = out.read_text()
    assert "smoke run" in text.lower()  # never mistaken for a result
    return text


@pytest.mark.slow
def test_classification_losses(tmp_path, monkeypatch, capsys):
    text = _run("classification_losses", tmp_path, monkeypatch, capsys)
    header, rows = table(text, "overlay")
    assert header[3:] == [
        "accuracy",
        "macro-F1",
        "ECE",
        "ECE after T-scaling",
        "seconds per run",
    ]
    assert [r[:3] for r in rows] == [["focal", "focal", "balanced"]]
    assert_numbers(rows, range(3, 8))


@pytest.mark.slow
def test_data_diet(tmp_path, monkeypatch, capsys):
    header, rows = table(_run("data_diet", tmp_path, monkeypatch, capsys), "training data")
    assert header == ["training data", "test accuracy", "SGD steps of the final run"]
    assert [r[0] for r in rows] == ["all data", "EL2N, keep 50%", "random, keep 50%"]
    assert_numbers(rows, [1, 2])


@pytest.mark.slow
def test_distillation(tmp_path, monkeypatch, capsys):
    text = _run("distillation", tmp_path, monkeypatch, capsys)
    header, rows = table(text, "setting")
    assert len(header) == 4
    assert [r[0] for r in rows] == ["student alone", "with teacher", "with teacher, cached"]
    assert_numbers(rows, [1, 2])
    header, rows = table(text, "model")
    assert header[1:3] == ["test accuracy", "minus student alone"]
    names = ["resnet10t (teacher)", "test_vit, student alone", "test_vit, KD"]
    assert [r[0] for r in rows] == [*names, "test_vit, DKD", "test_vit, DIST"]
    assert_numbers(rows, [1, 4])
    assert_numbers(rows[2:], [2])


@pytest.mark.slow
def test_group_dro(tmp_path, monkeypatch, capsys):
    header, rows = table(_run("group_dro", tmp_path, monkeypatch, capsys), "method")
    assert len(header) == 8 and header[2].startswith("worst-group test")
    assert [r[0] for r in rows] == ["ERM", "GroupDRO"]
    assert_numbers(rows, range(2, 8))


@pytest.mark.slow
def test_infobatch(tmp_path, monkeypatch, capsys):
    header, rows = table(_run("infobatch", tmp_path, monkeypatch, capsys), "method")
    assert header[1:] == [
        "test accuracy (%)",
        "forward/backward passes (% of full)",
        "fit time (s)",
    ]
    assert [r[0] for r in rows] == ["full data", "InfoBatch"]
    assert_numbers(rows, range(1, 4))
    assert float(rows[1][2]) < 100.0  # an epoch was pruned


@pytest.mark.slow
def test_pld_recommendation(tmp_path, monkeypatch, capsys):
    header, rows = table(_run("pld_recommendation", tmp_path, monkeypatch, capsys), "method")
    assert len(header) == 8 and header[3:5] == ["test Recall@10", "test NDCG@10"]
    assert [r[0] for r in rows] == [
        "BPR (one uniform positive per user row)",
        "PLD, τ = 0.1",
        "BPR, all k candidates (5x the gradient rows)",
        "ranking by the true affinity (ceiling)",
    ]
    assert_numbers(rows[:3], range(1, 8))
    assert_numbers(rows[3:], range(2, 5))
