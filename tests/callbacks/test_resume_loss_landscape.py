"""LossLandscape resumed from a checkpoint continues its λ_max history: the resumed run ends with
the history (and the weights) of the run that was never interrupted, bit for bit.

The history and the step of the last analysis are the callback's ``state_dict``; the probe set is
drawn again from ``seed``, so the analyses after the resume see the same data and, with the same
weights, give the same numbers. The model has no dropout and the loader does not shuffle, so the
training itself resumes exactly (Lightning does not checkpoint the global RNG states).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses.callbacks import LossLandscape

D, H, K, N = 4, 8, 3, 64  # 4 steps per epoch


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, K)).double()
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    return DataLoader(TensorDataset(x, torch.randint(0, K, (N,), generator=g)), batch_size=16)


def _landscape() -> LossLandscape:
    # λ_max and the trace only, on a probe set of 32 samples: a fraction of a second per epoch
    return LossLandscape(
        every_n_epochs=1,
        num_probe_samples=32,
        probe_batch_size=16,
        top_k=2,
        max_iter=20,
        trace_matvecs=12,
        density_steps=None,
        line_points=None,
        plane_points=None,
        epsilon=None,
        verbose=False,
    )


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fit(root: Path, epochs: int, ckpt: Path | None = None):
    cb, model = _landscape(), Net()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=[cb],
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _loader(), ckpt_path=ckpt)
    return cb, model, trainer


def test_a_resumed_run_continues_the_history(tmp_path):
    full, full_model, _ = _fit(tmp_path / "full", epochs=4)
    first, _, trainer = _fit(tmp_path / "run", epochs=2)
    trainer.save_checkpoint(tmp_path / "run" / "epoch2.ckpt")
    assert [h["step"] for h in first.history] == [4.0, 8.0]

    resumed, resumed_model, _ = _fit(tmp_path / "run", epochs=4, ckpt=tmp_path / "run/epoch2.ckpt")

    assert [h["step"] for h in full.history] == [4.0, 8.0, 12.0, 16.0]
    assert resumed.history == full.history  # the restored entries and the new ones, exactly
    assert resumed.last_step == full.last_step == 16
    assert len({h["lambda_max"] for h in full.history}) == 4  # λ_max moved as the model trained
    for key, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key
    # the arrays of the last analysis carry the whole history, and the trace is the same
    a = np.load(tmp_path / "full" / "landscape" / "landscape_epoch3_step16.npz")
    b = np.load(tmp_path / "run" / "landscape" / "landscape_epoch3_step16.npz")
    for key in ("history_step", "history_lambda_max", "scalar_trace", "eigenvalues"):
        assert np.array_equal(a[key], b[key]), key
    assert a["history_step"].tolist() == [4.0, 8.0, 12.0, 16.0]


def test_resuming_a_finished_run_does_not_analyse_it_again(tmp_path):
    first, _, trainer = _fit(tmp_path, epochs=2)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    again, _, _ = _fit(tmp_path, epochs=2, ckpt=tmp_path / "end.ckpt")
    assert again.history == first.history and again.last_step == 8  # no run at the end
    assert sorted(p.name for p in (tmp_path / "landscape").glob("*.npz")) == [
        "landscape_epoch0_step4.npz",
        "landscape_epoch1_step8.npz",
    ]
