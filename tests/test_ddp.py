"""LossMixin under DDP: 2 processes on CPU (gloo) train to the same weights as 1 process.

A ``DistributedSampler`` with ``shuffle=False`` deals samples round-robin, so the union of the two
ranks' batch k is exactly the single process's batch k of twice the size; the mean reduction
plus DDP's gradient averaging must then give the same update, also with per-sample weights from
a callback. (Lightning's own sampler injection always shuffles training data, so the data module
builds the sampler itself.)
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_losses import LossMixin, build_loss

pytestmark = pytest.mark.ddp

N, D, K, B = 32, 5, 3, 4


class Linear(LossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("focal", gamma=1.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.compute_loss(self.net(x), y, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class UpWeightClassZero(L.Callback):
    """Sample weights 3 for class 0, 1 otherwise (a stand-in for a reweighting callback)."""

    def sample_weights(self, pl_module, batch, losses):
        return torch.where(batch[1] == 0, 3.0, 1.0)


class RoundRobinData(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)
        data = TensorDataset(x, y)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


def _train(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    model = Linear()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[UpWeightClassZero()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=RoundRobinData(batch_size))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch():
    single = _train(devices=1, batch_size=2 * B)
    ddp = _train(devices=2, batch_size=B)
    initial = Linear().state_dict()
    assert not torch.allclose(single["net.weight"], initial["net.weight"])  # it did train
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
