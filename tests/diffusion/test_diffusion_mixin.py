"""DiffusionLoss through LossMixin: ``timesteps`` filled from a mapping batch, per-bucket
losses logged as ``train/loss_t{b}``."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from lightning_losses import LossMixin
from lightning_losses.diffusion import TimestepBucketLoss, sample_timesteps
from lightning_losses.losses.diffusion import DiffusionLoss


class TinyDenoiser(LossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 4)
        self.criterion = DiffusionLoss(prediction_type="v_prediction", weighting="min_snr")
        self.loss_by_t = TimestepBucketLoss(num_timesteps=1000, num_buckets=10)
        self.checked: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x0 = batch["x"]
        noise = torch.randn_like(x0)
        t = sample_timesteps(x0.shape[0], 1000, device=x0.device)
        batch = {**batch, "timesteps": t}
        target = self.criterion.training_target(x0, noise, t)
        pred = self.net(self.criterion.add_noise(x0, noise, t))
        loss = self.compute_loss(pred, target, batch=batch)
        per_sample = self.criterion.sample_losses(pred.detach(), target, timesteps=t).values
        self.loss_by_t.update(per_sample, t)
        self.checked.append((loss.detach(), per_sample.mean()))
        return loss

    def on_train_epoch_end(self):
        self.log_dict(self.loss_by_t.as_dict("train/loss_t"))
        self.loss_by_t.reset()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return {"x": torch.full((4,), float(i % 5) - 2.0)}


def test_loss_mixin_fills_timesteps_and_buckets_are_logged():
    model = TinyDenoiser()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, torch.utils.data.DataLoader(Batches(), batch_size=16))
    assert len(model.checked) == 4
    for loss, mean in model.checked:
        torch.testing.assert_close(loss, mean)
    logged = {k for k in trainer.callback_metrics if k.startswith("train/loss_t")}
    assert logged and logged <= {f"train/loss_t{b}" for b in range(10)}
