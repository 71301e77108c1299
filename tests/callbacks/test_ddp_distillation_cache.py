"""Distillation under DDP with the teacher-output cache and a feature adapter: 2 processes on CPU
(gloo) train the student **and the adapter** to the weights of 1 process, on every rank.

A round-robin ``DistributedSampler(shuffle=False)`` makes the union of the two ranks' batch k the
single process's batch k of twice the size. Each rank caches the teacher outputs of the samples
it sees (its shard), so the teacher runs in the first epoch only, on every rank. Under
``ddp_spawn`` the main process gets the weights back without the adapters, so every rank writes
its own state when training ends and the test reads those files.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks import Distillation

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

N, D, K, B = 32, 4, 3, 4  # per-rank batch B, single-process batch 2B: 4 steps per epoch
EPOCHS = 3


class Rows(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(N, D, generator=g)
        self.y = torch.randint(0, K, (N,), generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


class RoundRobin(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        data = Rows()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class Student(LossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, K))
        self.criterion = build_loss("cross_entropy")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.compute_loss(self(batch["x"]), batch["y"], batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)


def teacher() -> nn.Module:
    """Layer ``"1"`` gives 16 features, the student's ``net.1`` 8: a Linear(8, 16) adapter."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))


class SaveEveryRank(L.Callback):
    """Every rank writes its weights (adapters included), teacher forwards and cache."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        distill = [cb for cb in trainer.callbacks if isinstance(cb, Distillation)]
        torch.save(
            {
                "model": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "forwards": {cb.name: cb.teacher_forwards for cb in distill},
                "cache": {cb.name: cb._cache for cb in distill},
            },
            self.folder / f"rank{trainer.global_rank}.pt",
        )


def _fit(folder: Path, devices: int, batch_size: int) -> list[dict]:
    folder.mkdir()
    torch.manual_seed(123)  # the adapter's initialisation (DDP broadcasts rank 0's)
    callbacks = [
        Distillation(teacher(), input_key="x", cache=True),
        Distillation(
            teacher(),
            loss="fitnet",
            student_layers="net.1",
            teacher_layers="1",
            input_key="x",
            cache=True,
            name="feature",
        ),
        SaveEveryRank(folder),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(Student(), datamodule=RoundRobin(batch_size))
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(devices)]


def test_two_processes_match_one_process_adapters_and_cache_included(tmp_path):
    (single,) = _fit(tmp_path / "one", devices=1, batch_size=2 * B)
    ranks = _fit(tmp_path / "two", devices=2, batch_size=B)

    adapter = "distill_adapters.feature.pair0.weight"
    assert adapter in single["model"]
    assert not torch.allclose(single["model"]["net.0.weight"], Student().net[0].weight)
    for rank, state in enumerate(ranks):
        assert state["model"].keys() == single["model"].keys()
        for key, value in single["model"].items():  # the adapter's weights and bias included
            torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6)
        for name in ("distill", "feature"):
            # the teacher ran in the first epoch only: 4 batches of 2B, or of B per rank
            assert single["forwards"][name] == state["forwards"][name] == N // (2 * B)
            # each rank cached its shard (round robin: index % 2 == rank), with the values the
            # single process cached for those samples
            cache, full = state["cache"][name], single["cache"][name]
            assert sorted(cache) == list(range(rank, N, 2))
            for i, entry in cache.items():
                for key, value in entry.items():
                    torch.testing.assert_close(value, full[i][key], rtol=1e-6, atol=1e-7)
    assert sorted(single["cache"]["distill"]) == list(range(N))
