"""LossMixin: the pipeline, the callback protocols, context filling and logging."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossMixin, LossTerm, PerSample, build_loss
from lightning_losses.losses import ClassCountsLoss
from lightning_losses.losses._inputs import prepare_categorical

N, K, D = 8, 3, 4


def _data(n=N * 2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, D, generator=g), torch.randint(0, K, (n,), generator=g))


class TinyModel(LossMixin, L.LightningModule):
    def __init__(self, criterion):
        super().__init__()
        self.net = nn.Linear(D, K)
        self.criterion = criterion
        self.step_losses: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = self.compute_loss(logits, y, batch=batch)
        self.step_losses.append((logits.detach(), y, loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: the weights stay put


class CountsDataModule(L.LightningDataModule):
    class_counts = torch.tensor([5.0, 2.0, 1.0])

    def train_dataloader(self):
        return DataLoader(_data(), batch_size=N)


def _fit(model, callbacks=(), datamodule=None, steps=2):
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    if datamodule is None:
        trainer.fit(model, DataLoader(_data(), batch_size=N))
    else:
        trainer.fit(model, datamodule=datamodule)
    return trainer


def test_registered_loss_passes_through_unchanged():
    model = TinyModel(build_loss("focal", gamma=1.5))
    trainer = _fit(model)
    for logits, y, loss in model.step_losses:
        torch.testing.assert_close(loss, build_loss("focal", gamma=1.5)(logits, y))
    # one unweighted term is the loss itself: logged once, as train/loss
    assert "train/loss_epoch" in trainer.callback_metrics
    assert "train/loss/focal" not in trainer.callback_metrics


def test_torch_loss_in_criterion_keeps_working():
    model = TinyModel(nn.CrossEntropyLoss())
    _fit(model)
    for logits, y, loss in model.step_losses:
        torch.testing.assert_close(loss, F.cross_entropy(logits, y))


def test_opaque_callable_gives_its_scalar():
    model = TinyModel(lambda logits, y: F.cross_entropy(logits, y) * 2)
    _fit(model)
    for logits, y, loss in model.step_losses:
        torch.testing.assert_close(loss, 2 * F.cross_entropy(logits, y))


class AddTerm(L.Callback):
    def loss_terms(self, pl_module, outputs, target, batch):
        return {"l2": LossTerm(outputs.pow(2).sum(1), 0.5)}


class WeightFirstHalf(L.Callback):
    def __init__(self, w):
        self.w = w

    def sample_weights(self, pl_module, batch, losses):
        assert not losses.requires_grad
        weights = torch.ones_like(losses)
        weights[: len(losses) // 2] = self.w
        return weights


class Recorder(L.Callback):
    def __init__(self):
        self.seen = []

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        self.seen.append(({k: v.clone() for k, v in losses.items()}, sample_weight.clone()))


def test_callbacks_add_terms_multiply_weights_and_observe():
    recorder = Recorder()
    model = TinyModel(build_loss("cross_entropy"))
    trainer = _fit(model, [AddTerm(), WeightFirstHalf(3.0), WeightFirstHalf(0.5), recorder])
    assert len(recorder.seen) == len(model.step_losses) == 2
    for (logits, y, loss), (terms, weight) in zip(model.step_losses, recorder.seen, strict=True):
        ce = F.cross_entropy(logits, y, reduction="none")
        total = ce + 0.5 * logits.pow(2).sum(1)
        expected_w = torch.tensor([1.5] * (N // 2) + [1.0] * (N // 2))
        torch.testing.assert_close(weight, expected_w)
        torch.testing.assert_close(loss, (expected_w * total).sum() / N)
        torch.testing.assert_close(terms["cross_entropy"], ce)
        torch.testing.assert_close(terms["l2"], logits.pow(2).sum(1))
        assert not any(t.requires_grad for t in terms.values())
    assert "train/loss/l2" in trainer.callback_metrics


def test_duplicate_term_name_is_an_error():
    class Clash(L.Callback):
        def loss_terms(self, pl_module, outputs, target, batch):
            return {"cross_entropy": outputs.sum(1)}

    with pytest.raises(ValueError, match="already uses"):
        _fit(TinyModel(build_loss("cross_entropy")), [Clash()])


def test_term_of_wrong_shape_is_an_error():
    class Scalar(L.Callback):
        def loss_terms(self, pl_module, outputs, target, batch):
            return {"bad": outputs.sum()}

    with pytest.raises(ValueError, match=r"'bad'.*shape \(8,\)"):
        _fit(TinyModel(build_loss("cross_entropy")), [Scalar()])


class EpochCountsLoss(ClassCountsLoss):
    """Test loss: CE on logits shifted by log counts, times (1 + epoch); records its context.

    .. math:: \\ell = (1 + e)\\,\\mathrm{CE}(z + \\log n, y)
    """

    context = ("counts", "epoch")

    def per_sample(self, input, target, epoch):
        c = prepare_categorical(input, target)
        self.last_epoch = epoch
        counts = self.require_counts(input.shape[1])
        return PerSample(
            F.cross_entropy(c.logits + counts.log(), c.target, reduction="none") * (1 + epoch)
        )


def test_context_is_filled_from_trainer_and_datamodule():
    loss = EpochCountsLoss()
    model = TinyModel(loss)
    _fit(model, datamodule=CountsDataModule(), steps=3)  # 2 steps per epoch: epochs 0, 0, 1
    torch.testing.assert_close(loss.class_counts, CountsDataModule.class_counts)
    assert loss.last_epoch == 1
    logits, y, last = model.step_losses[-1]
    torch.testing.assert_close(last, 2 * F.cross_entropy(logits + loss.class_counts.log(), y))
    torch.testing.assert_close(model.state_dict()["criterion.class_counts"], loss.class_counts)


def test_missing_class_counts_is_a_clear_error():
    with pytest.raises(ValueError, match="class_counts"):
        _fit(TinyModel(EpochCountsLoss()))


def test_direct_call_without_declared_context_is_a_clear_error():
    loss = EpochCountsLoss(class_counts=[1, 2, 3])
    with pytest.raises(TypeError, match="epoch"):
        loss(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="unexpected context"):
        build_loss("cross_entropy")(torch.randn(2, 3), torch.tensor([0, 1]), epoch=3)


def test_missing_criterion_is_a_clear_error():
    class NoLoss(TinyModel):
        def __init__(self):
            super().__init__(None)

    with pytest.raises(AttributeError, match=r"self\.criterion"):
        _fit(NoLoss())
