"""``benchmarks/loss_speed.py`` keeps running (its smoke mode), its pairs agree, its memory
probe measures what it says, and the page shows its last run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
def test_smoke_mode_runs_every_table(tmp_path):
    out = tmp_path / "loss_speed.md"
    _script().main(["--quick", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    lines = text.splitlines()
    summary = next(line for line in lines if line.startswith("- all pairs: "))
    n = int(summary.removeprefix("- all pairs: ").split(" rows;")[0])
    assert f"agree in {n} of {n}" in summary, summary
    for family in ("classification", "metric", "segmentation"):
        assert any(line.startswith(f"- {family}: ") for line in lines), family
    for reference in ("PML BatchHardMiner", "MONAI DiceCELoss", "smp LovaszLoss"):
        assert f"| {reference}" in text, reference
    assert "Peak memory added by one forward + backward" in text
    assert "| `compute_loss` |" in text and "LossLandscape" in text and "InfoBatch" in text


@pytest.mark.parametrize("family", ["metric", "segmentation"])
def test_new_pairs_agree_at_the_quick_shapes(family):
    """Values and input gradients of ours and the reference agree (float32) for every metric
    and segmentation pair, at the smoke-run shapes."""
    script = _script()
    for pair in script._pairs([family]):
        for key in pair.shapes:
            shape = script.QUICK_SHAPES[key]
            ours, ref = pair.make(shape)
            x, t = script._inputs(pair.target, shape, "cpu", torch.float32, seed=0)
            assert script._check(ours, ref, x, t, amp=False) == "yes", (pair.name, shape)


def test_identity_batches_have_four_instances_per_identity():
    script = _script()
    _, labels = script._inputs("identity", (32, 8), "cpu", torch.float32, seed=0)
    counts = torch.bincount(labels)
    assert sorted(counts[counts > 0].tolist()) == [script.PER_IDENTITY] * 8
    assert int(labels.max()) < script.IDENTITIES


PROBE = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("loss_speed", sys.argv[1])
script = importlib.util.module_from_spec(spec)
sys.modules["loss_speed"] = script
spec.loader.exec_module(script)
call = lambda: torch.empty(16 * 2**20 // 4).fill_(1.0)
call()
print(script.peak_added_mib(call, repeats=3))
"""


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs"
)
def test_peak_memory_probe_reads_a_known_allocation():
    """Under the probe's allocator settings, a call that fills and frees a 16 MiB tensor adds
    16 MiB at its peak, give or take what the process itself releases or touches meanwhile
    (readings of 15.9 to 16.4 MiB). Without them, glibc keeps the freed block resident after
    the first call and the reading is meaningless (0)."""
    script = _script()
    env = {**os.environ, **script.MALLOC_ENV}
    command = [sys.executable, "-c", PROBE, str(ROOT / "benchmarks" / "loss_speed.py")]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    added = float(out.stdout.strip().splitlines()[-1])
    assert 15.5 <= added < 17.0, added


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
