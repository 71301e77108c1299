"""Resume: the state of the stateful metric losses continues exactly after a checkpoint.

A small embedding model trains through :class:`~lightning_losses.LossMixin` for 4 epochs of 3
batches. The interrupted run stops after epoch 2, its Lightning checkpoint is saved, and a new
model and trainer resume from it to epoch 4. Its weights, optimiser-driven parameters and loss
state (center loss's centres in both update modes, AdaFace's norm statistics, iSogCLR's
per-sample tables) must equal those of the uninterrupted run, and must have moved after the
checkpoint (so the comparison is not of untouched state). SGD with momentum: the optimiser
state resumes too.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses import LossMixin, build_loss

N, D_IN, D, K, B = 24, 6, 4, 3, 8  # 3 batches per epoch

CASES = {
    "center_moving_average": ("center", {"update": "moving_average", "alpha": 0.5}),
    "center_parameter": ("center", {}),
    "adaface": ("adaface", {}),
    "isogclr": ("isogclr", {"num_samples": N, "eta": 0.5}),
}
STATE_KEYS = {
    "center_moving_average": ("centers",),
    "center_parameter": ("centers",),
    "adaface": ("norm_mean", "norm_std"),
    "isogclr": ("log_u", "tau_grad", "tau"),
}


class Views(Dataset):
    """Fixed rows, a second view (the row plus fixed noise), a class label and the index."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, D_IN, generator=g) * 3.0
        self.x2 = self.x + 0.5 * torch.randn(N, D_IN, generator=g)
        self.y = torch.randint(0, K, (N,), generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "x2": self.x2[i], "y": self.y[i], "index": torch.tensor(i)}


class Embedder(LossMixin, L.LightningModule):
    def __init__(self, case: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.case = case
        self.net = nn.Linear(D_IN, D)
        name, kwargs = CASES[case]
        sizes = {} if name == "isogclr" else {"num_classes": K, "embedding_dim": D}
        self.criterion = build_loss(name, **sizes, **kwargs)
        self.two_views = name == "isogclr"

    def training_step(self, batch, batch_idx):
        z = self.net(batch["x"])
        target = self.net(batch["x2"]) if self.two_views else batch["y"]
        return self.compute_loss(z, target, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _fit(case, epochs, ckpt=None, model_class=Embedder):
    model = model_class(case)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(Views(), batch_size=B, shuffle=False), ckpt_path=ckpt)
    return trainer, model


@pytest.mark.parametrize("case", list(CASES))
def test_loss_state_continues_exactly_after_a_checkpoint(tmp_path, case):
    _, full = _fit(case, epochs=4)

    first, halfway = _fit(case, epochs=2)
    path = tmp_path / "epoch2.ckpt"
    first.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    for key in STATE_KEYS[case]:
        assert f"criterion.{key}" in saved, "the loss state is in the checkpoint"

    _, resumed = _fit(case, epochs=4, ckpt=path)
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=0, msg=key)
    for key in STATE_KEYS[case]:
        moved = halfway.state_dict()[f"criterion.{key}"]
        assert not torch.equal(moved, full_state[f"criterion.{key}"]), f"{key} moved after epoch 2"


class ForgetsLossState(Embedder):
    """Resumes everything but the loss state, which restarts from its initial value."""

    def on_load_checkpoint(self, checkpoint):
        fresh = Embedder(self.case).criterion.state_dict()
        for key in STATE_KEYS[self.case]:
            checkpoint["state_dict"][f"criterion.{key}"] = fresh[key]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_resume_without_the_loss_state_would_differ(tmp_path, case):
    """The control: the comparison above detects a loss whose state is not restored."""
    _, full = _fit(case, epochs=4)
    first, _ = _fit(case, epochs=2)
    path = tmp_path / "epoch2.ckpt"
    first.save_checkpoint(path)
    _, forgetful = _fit(case, epochs=4, ckpt=path, model_class=ForgetsLossState)
    key = f"criterion.{STATE_KEYS[case][0]}"
    assert not torch.equal(forgetful.state_dict()[key], full.state_dict()[key])
