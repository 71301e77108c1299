"""ASAM and AWP under DDP: 2 processes on CPU (gloo) train to the weights of 1 process.

The same check as SAM's (``test_sam.py``): a round-robin ``DistributedSampler(shuffle=False)``
makes the two ranks' micro-batches of 2, accumulated twice, exactly the single process's batch
of 8. The perturbation is computed from the all-reduced first gradient, so it is the same on
both ranks (ASAM's element-wise scaling and AWP's per-layer norms included), and the second
pass runs one micro-batch under ``no_sync`` and all-reduces in the other.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_losses.callbacks import ASAM, AWP

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

D, H, K, N = 4, 6, 3, 32


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, K)).double()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class RoundRobin(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(
            torch.randn(N, D, generator=g, dtype=torch.float64),
            torch.randint(0, K, (N,), generator=g),
        )
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


def _train(callback: L.Callback | None, devices: int, batch_size: int, accumulate: int = 1) -> dict:
    model = Net()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[] if callback is None else [callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model, datamodule=RoundRobin(batch_size))
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "make",
    [lambda: ASAM(rho=0.5), lambda: AWP(gamma=0.05)],
    ids=["asam", "awp"],
)
def test_two_processes_match_one_process_with_the_same_global_batch(make):
    single = _train(make(), devices=1, batch_size=8)
    ddp = _train(make(), devices=2, batch_size=2, accumulate=2)
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-10, atol=1e-12)
    plain = _train(None, devices=1, batch_size=8)  # the perturbation changed the training
    assert not torch.allclose(plain["net.0.weight"], single["net.0.weight"], rtol=0, atol=1e-6)
