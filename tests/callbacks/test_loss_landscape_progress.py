"""LossLandscape says what its analysis will cost, then shows a progress bar with the time left
(drawn like the trainer's bar, on rank zero, only when the trainer shows one); the bar's work
units add up to its total whatever part stops early."""

from __future__ import annotations

import importlib.util
import io
import re
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses._progress import ProgressBar, trainer_progress_bar
from lightning_losses.callbacks import loss_landscape
from lightning_losses.callbacks.loss_landscape import _PASS_COST, LossLandscape
from lightning_losses.diagnostics import class_batches

SMALL = dict(num_probe_samples=32, probe_batch_size=16, max_iter=20, trace_matvecs=12)
SMALL.update(density_steps=10, line_points=5, plane_points=3, epsilon_steps=2)
ESTIMATE = re.compile(r"at most ([\d,]+) HVPs and ([\d,]+) forward passes")
TIME_LEFT = re.compile(r"\[\d\d:\d\d<\d\d:\d\d\]")  # tqdm's [elapsed<remaining]


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.criterion(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit(tmp_path, callback: LossLandscape, progress_bar: bool) -> L.Trainer:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g))
    torch.manual_seed(0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        # tqdm whether or not rich is installed (Lightning's default bar is rich's when it is)
        callbacks=[callback, TQDMProgressBar()] if progress_bar else [callback],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.fit(Net(), DataLoader(data, batch_size=16))
    return trainer


def test_the_analysis_states_its_cost_then_shows_progress_with_the_time_left(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # draw every update, not one per 0.1 s
    _fit(tmp_path, LossLandscape(**SMALL), progress_bar=True)
    out = capsys.readouterr().out
    estimate = ESTIMATE.search(out)
    assert estimate, out
    frames = re.findall(r"LossLandscape: [^\r\n]*%\|[^\r\n]*", out)
    assert frames, out
    assert estimate.start() < out.index(frames[0])  # the cost comes before the work
    labels = list(dict.fromkeys(re.findall(r"LossLandscape: ([^\r\n%]*?):\s+\d+%\|", out)))
    assert labels == [
        "probe loss",
        "top-3 eigenvalues (Lanczos)",
        "trace (Hutch++)",
        "spectral density (SLQ)",
        "1-D slice",
        "2-D slice",
        "ε-sharpness",
    ], labels
    percents = [int(m) for m in re.findall(r"LossLandscape: [^\r\n%]*?(\d+)%\|", out)]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert any(TIME_LEFT.search(f) for f in frames), frames[:5]
    assert "LossLandscape: done in" in out


def test_disabled_progress_bar_draws_nothing(tmp_path, capsys):
    _fit(tmp_path, LossLandscape(**SMALL), progress_bar=False)
    captured = capsys.readouterr()
    assert ESTIMATE.search(captured.out)  # the cost line follows `verbose`, not the bar
    assert "LossLandscape:" not in captured.out.replace("LossLandscape: done", "")
    assert "%|" not in captured.out + captured.err


def test_the_bar_is_off_on_other_ranks_and_when_the_trainer_bar_is_disabled():
    bar = TQDMProgressBar()
    on_zero = SimpleNamespace(progress_bar_callback=bar, is_global_zero=True)
    other_rank = SimpleNamespace(progress_bar_callback=bar, is_global_zero=False)
    no_bar = SimpleNamespace(progress_bar_callback=None, is_global_zero=True)
    assert trainer_progress_bar(on_zero, 10, "x", file=io.StringIO()).enabled
    assert not trainer_progress_bar(other_rank, 10, "x").enabled
    assert not trainer_progress_bar(no_bar, 10, "x").enabled
    bar.disable()
    assert not trainer_progress_bar(on_zero, 10, "x").enabled


class Recorder(ProgressBar):
    """A silent bar that records what the analysis tells it."""

    def __init__(self, total, description="", **kwargs) -> None:
        super().__init__(total, description, enabled=False)
        self.first_total = total
        self.descriptions: list[str] = []

    def set_description(self, description: str) -> None:
        self.descriptions.append(description)


def test_work_units_add_up_to_the_total_when_lanczos_stops_early(tmp_path, monkeypatch):
    made: list[Recorder] = []

    def recording_bar(trainer, total, description):
        made.append(Recorder(total))
        return made[-1]

    monkeypatch.setattr(loss_landscape, "trainer_progress_bar", recording_bar)
    # tol 1e-1 stops Lanczos well before max_iter: the plan shrinks by the unused budget
    cb = LossLandscape(**{**SMALL, "max_iter": 40}, tol=1e-1, per_class=[1], verbose=False)
    trainer = _fit(tmp_path, cb, progress_bar=False)
    (bar,) = made
    assert bar.completed == pytest.approx(bar.total)
    assert bar.total < bar.first_total  # Lanczos stopped early
    assert bar.descriptions == [
        "LossLandscape: probe loss",
        "LossLandscape: top-3 eigenvalues (Lanczos)",
        "LossLandscape: trace (Hutch++)",
        "LossLandscape: spectral density (SLQ)",
        "LossLandscape: 1-D slice",
        "LossLandscape: 2-D slice",
        "LossLandscape: ε-sharpness",
        "LossLandscape: class 1, λ_max (Lanczos)",
        "LossLandscape: class 1, trace (Hutch++)",
    ]
    probe = cb.probe_batches
    assert probe is not None
    loss_passes = (1 + SMALL["line_points"] + SMALL["plane_points"] ** 2) * len(probe)
    gradient_passes = (SMALL["epsilon_steps"] + 1) * len(probe)

    def weighted(forwards: float) -> float:
        hvp_passes = forwards - loss_passes - gradient_passes
        return (
            _PASS_COST["loss"] * loss_passes
            + _PASS_COST["gradient"] * gradient_passes
            + _PASS_COST["hvp"] * hvp_passes
        )

    # the plan is the cost estimate, weighted; what is done, the passes made, weighted
    numel = sum(p.numel() for p in trainer.lightning_module.parameters())
    _, planned = cb.estimate_cost(numel, len(probe), [len(class_batches(probe, 1))])
    assert bar.first_total == weighted(planned)
    (npz,) = (tmp_path / "landscape").glob("*.npz")
    done = float(np.load(npz)["scalar_forward_passes"])
    assert done < planned
    assert bar.completed == weighted(done)


def test_progress_bar_counts_and_corrects_its_total():
    stream = io.StringIO()
    with ProgressBar(4, "runs", backend="tqdm", unit="runs", file=stream) as bar:
        bar.advance()
        bar.total = 2
        bar.advance()
        bar.write("a line above the bar")
    text = stream.getvalue()
    assert "runs: 100%" in text and "2/2 runs" in text and "a line above the bar" in text
    assert bar.completed == bar.total == 2
    with pytest.raises(ValueError, match="total"):
        ProgressBar(0)
    with pytest.raises(ValueError, match="backend"):
        ProgressBar(1, backend="curses")


@pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="rich is optional: Lightning uses tqdm then"
)
def test_rich_trainer_bar_gives_a_rich_bar():
    from lightning.pytorch.callbacks import RichProgressBar

    trainer = SimpleNamespace(progress_bar_callback=RichProgressBar(), is_global_zero=True)
    stream = io.StringIO()
    with trainer_progress_bar(trainer, 3, "analysis", file=stream) as bar:
        assert bar.backend == "rich"
        bar.advance(3)
    assert "analysis" in stream.getvalue()
