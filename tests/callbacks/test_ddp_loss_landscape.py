"""LossLandscape under DDP: with 2 processes on CPU (gloo), λ_max, the trace and the trained
weights equal those of 1 process with the joint batch, on every rank.

The analysis runs on rank zero, on a probe set drawn from the whole dataset (not from rank
zero's shard), and its scalars are broadcast, so every rank logs the numbers of the
single-process run. Rank zero keeps the λ_max history (it is the rank that writes the figures,
the arrays and the checkpoints). Every rank writes what it holds when training ends; the test
reads those files.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_losses.callbacks import LossLandscape

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

D, H, K, N, B = 4, 8, 3, 32, 4  # per-rank batch B, single-process batch 2B
KEYS = ("landscape/lambda_max", "landscape/eigenvalue_2", "landscape/trace")


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


class RoundRobin(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(2)
        x = torch.randn(N, D, generator=g, dtype=torch.float64)
        data = TensorDataset(x, torch.randint(0, K, (N,), generator=g))
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class SaveEveryRank(L.Callback):
    """Every rank keeps the landscape values it logged per epoch and writes them at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.logged: list[dict[str, float]] = []

    def _keep(self, trainer) -> None:  # the metrics of the epoch that just ended
        self.logged.append({k: float(trainer.callback_metrics[k]) for k in KEYS})

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch > 0:
            self._keep(trainer)

    def on_train_end(self, trainer, pl_module):
        self._keep(trainer)
        landscape = next(cb for cb in trainer.callbacks if isinstance(cb, LossLandscape))
        torch.save(
            {
                "model": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "logged": self.logged,
                "history": landscape.history,
                "last_step": landscape.last_step,
            },
            self.folder / f"rank{trainer.global_rank}.pt",
        )


def _fit(folder: Path, devices: int, batch_size: int) -> list[dict]:
    folder.mkdir()
    landscape = LossLandscape(
        every_n_epochs=1,
        num_probe_samples=N,
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
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[landscape, SaveEveryRank(folder)],
        default_root_dir=folder,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(Net(), datamodule=RoundRobin(batch_size))
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(devices)]


def test_two_processes_log_the_values_of_one_process_on_every_rank(tmp_path):
    (single,) = _fit(tmp_path / "one", devices=1, batch_size=2 * B)
    ranks = _fit(tmp_path / "two", devices=2, batch_size=B)

    assert len(single["logged"]) == 2 and single["last_step"] == 8
    assert (
        single["logged"][0]["landscape/lambda_max"] != single["logged"][1]["landscape/lambda_max"]
    )
    for state in ranks:
        for key, value in single["model"].items():
            torch.testing.assert_close(state["model"][key], value, rtol=1e-10, atol=1e-12)
        # logged values are float32 (Lightning's), from the float64 analysis of equal weights
        for got, want in zip(state["logged"], single["logged"], strict=True):
            for key in KEYS:
                assert got[key] == pytest.approx(want[key], rel=1e-6), key
        assert state["logged"] == ranks[0]["logged"]  # the broadcast: the same on every rank
        assert state["last_step"] == 8
    # rank zero's history (what its figures, arrays and checkpoints hold) is the single one's
    (zero_history, single_history) = ranks[0]["history"], single["history"]
    assert [h["step"] for h in zero_history] == [h["step"] for h in single_history] == [4.0, 8.0]
    for got, want in zip(zero_history, single_history, strict=True):
        assert got["lambda_max"] == pytest.approx(want["lambda_max"], rel=1e-9)
    # the figures and arrays are written once, by rank zero
    npz = sorted(p.name for p in (tmp_path / "two" / "landscape").glob("*.npz"))
    assert npz == ["landscape_epoch0_step4.npz", "landscape_epoch1_step8.npz"]
