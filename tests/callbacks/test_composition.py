"""Several callbacks in one Trainer: InfoBatch, a DRO weighting and a loss term from a later
callback. Sample weights multiply in the callbacks' order, the loss is the mean of the product
times the per-sample total, and InfoBatch scores the total before any weight."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks import DROWeighting, GroupDRO, InfoBatch
from lightning_losses.mixins import LossTerm
from lightning_losses.weighting import kl_weights

N, D, K = 48, 4, 3


class Model(LossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")
        self.checked = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = self.compute_loss(logits, y, batch=batch)
        # Recompute by hand: total = CE + 0.5 * |logits|^2 mean, weights = InfoBatch x KL-DRO.
        ib = self.trainer.callbacks[0]
        with torch.no_grad():
            ce = nn.functional.cross_entropy(logits, y, reduction="none")
            total = ce + 0.5 * logits.pow(2).mean(1)
            w = ib.weights[ib.batch_indices] * (total.numel() * kl_weights(total, 2.0))
            torch.testing.assert_close(loss.detach(), (w * total).mean())
            recorded = self.trainer.callbacks[3].last
            torch.testing.assert_close(recorded["sample_weight"], w)
            score_before = ib.store.last_loss[ib.batch_indices]
        self.checked += 1
        self._scores = (ib.batch_indices.clone(), total, score_before)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        indices, total, _ = self._scores
        # InfoBatch stored the unweighted per-sample total as the score
        torch.testing.assert_close(self.trainer.callbacks[0].store.last_loss[indices], total)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LogitPenalty(L.Callback):
    def loss_terms(self, pl_module, outputs, target, batch):
        return {"logit_penalty": LossTerm(outputs.pow(2).mean(1), 0.5)}


class Record(L.Callback):
    last: dict

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        self.last = {"losses": losses, "sample_weight": sample_weight}


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g))
    return DataLoader(data, batch_size=8, shuffle=True)


def test_infobatch_dro_and_a_loss_term_compose_in_the_documented_order():
    callbacks = [
        InfoBatch(seed=0),
        DROWeighting("kl", temperature=2.0),
        LogitPenalty(),
        Record(),
    ]
    model = Model()
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _data())
    assert model.checked == trainer.global_step > 0
    assert callbacks[0].history[1]["pruned"] > 0
    assert set(callbacks[3].last["losses"]) == {"cross_entropy", "logit_penalty"}


def test_group_dro_weights_multiply_with_infobatch_ones():
    class Grouped(LossMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(D, K)
            self.criterion = build_loss("cross_entropy")

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return self.compute_loss(self.net(x), y, batch=batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)
    data = DataLoader(TensorDataset(x, y, y % 2), batch_size=8, shuffle=True)
    seen = []

    class Check(L.Callback):
        def observe_losses(self, pl_module, batch, losses, sample_weight):
            ib, dro = pl_module.trainer.callbacks[0], pl_module.trainer.callbacks[1]
            groups = batch[2]
            counts = torch.bincount(groups, minlength=2).double()
            expected = ib.weights[ib.batch_indices].double() * (
                dro.q[groups] * groups.numel() / counts[groups]
            )
            seen.append(torch.allclose(sample_weight.double(), expected))

    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[InfoBatch(seed=1), GroupDRO(num_groups=2, group_key=2), Check()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Grouped(), data)
    assert seen and all(seen)


class Plain(LossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")

    def training_step(self, batch, batch_idx):
        return self.compute_loss(self.net(batch[0]), batch[1], batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_product_does_not_depend_on_which_weighting_comes_first():
    weights = []
    for first_infobatch in (True, False):
        ib, dro = InfoBatch(seed=0), DROWeighting("kl", temperature=2.0)
        trainer = L.Trainer(
            max_epochs=2,
            callbacks=[ib, dro] if first_infobatch else [dro, ib],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        model = Plain()
        trainer.fit(model, _data())
        weights.append(model.net.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1])
