"""DROWeighting callback: weights against the pure oracles, training, DDP, and the errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_losses import LossMixin, build_loss, reduce_loss
from lightning_losses.callbacks import DROWeighting
from lightning_losses.callbacks.dro_weighting import check_equal_sizes
from lightning_losses.weighting import (
    chi_square_penalized_weights,
    chi_square_weights,
    cvar_kl_weights,
    cvar_weights,
    kl_weights,
    spectral_risk_weights,
    spectrum_esrm,
    spectrum_extremile,
    spectrum_superquantile,
)

D, K = 4, 3


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


class Linear(LossMixin, L.LightningModule):
    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.compute_loss(self.net(x), y, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class PlainModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(D, K)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, D, generator=g), torch.randint(0, K, (n,), generator=g))


# ----------------------------------------------------------------------------- 1. unit

M = 10
CASES = [
    ("cvar", {"alpha": 0.35}, lambda v: cvar_weights(v, 0.35)),
    ("cvar_kl", {"alpha": 0.3, "reg": 0.5}, lambda v: cvar_kl_weights(v, 0.3, 0.5)),
    ("chi_square", {"rho": 1.0}, lambda v: chi_square_weights(v, 1.0)),
    ("chi_square_penalized", {"reg": 0.3}, lambda v: chi_square_penalized_weights(v, 0.3)),
    ("kl", {"temperature": 0.7}, lambda v: kl_weights(v, 0.7)),
    (
        "superquantile",
        {"alpha": 0.35},
        lambda v: spectral_risk_weights(v, spectrum_superquantile(M, 0.35)),
    ),
    (
        "superquantile",
        {"alpha": 0.35, "shift_cost": 0.5, "penalty": "kl"},
        lambda v: spectral_risk_weights(v, spectrum_superquantile(M, 0.35), 0.5, "kl"),
    ),
    ("extremile", {"r": 2.5}, lambda v: spectral_risk_weights(v, spectrum_extremile(M, 2.5))),
    (
        "esrm",
        {"rho": 3.0, "shift_cost": 1.0},
        lambda v: spectral_risk_weights(v, spectrum_esrm(M, 3.0), 1.0),
    ),
]


@pytest.mark.parametrize(("oracle", "kwargs", "reference"), CASES)
def test_weighted_mean_is_the_robust_loss_of_the_pure_oracle(oracle, kwargs, reference):
    losses = torch.rand(M, generator=torch.Generator().manual_seed(4)) * 3
    cb = DROWeighting(oracle, **kwargs)
    w = cb.sample_weights(None, None, losses)
    p = reference(losses)
    assert w.shape == losses.shape and w.dtype == losses.dtype
    torch.testing.assert_close(w, M * p)
    torch.testing.assert_close((w * losses).mean(), (p * losses).sum())
    torch.testing.assert_close(reduce_loss(losses, "mean", w), (p * losses).sum())
    assert not torch.allclose(p, torch.full_like(p, 1 / M))  # a real reweighting


def test_cvar_weights_are_uniform_on_the_worst_fraction_and_state_is_empty():
    cb = DROWeighting("cvar", alpha=0.5)
    w = cb.sample_weights(None, None, torch.tensor([0.1, 3.0, 0.2, 2.0]))
    assert w.tolist() == [0.0, 2.0, 0.0, 2.0]
    assert cb.state_dict() == {}


# ----------------------------------------------------------------------------- 2. training


class Record(L.Callback):
    """Keeps each step's per-sample losses and the weights the mixin applied."""

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        self.steps.append((sum(losses.values()), sample_weight.clone()))


def test_training_concentrates_cvar_weights_on_the_high_losses():
    alpha, batch = 0.25, 8
    record = Record()
    trainer = _trainer(max_epochs=2, callbacks=[DROWeighting("cvar", alpha=alpha), record])
    trainer.fit(Linear(), DataLoader(_data(), batch_size=batch))
    assert len(record.steps) == 8
    for losses, w in record.steps:
        top = w > 0
        assert int(top.sum()) == alpha * batch
        assert losses[top].min() >= losses[~top].max()  # the worst samples carry all the weight
        torch.testing.assert_close(w[top], torch.full_like(w[top], 1 / alpha))
    metrics = trainer.callback_metrics
    assert float(metrics["train/dro/max_weight"]) == pytest.approx(1 / alpha)
    assert float(metrics["train/dro/effective_sample_size"]) == pytest.approx(alpha * batch)


# ----------------------------------------------------------------------------- 3. DDP

N_DDP, B = 32, 4


class RoundRobinData(L.LightningDataModule):
    """Round-robin DistributedSampler(shuffle=False): the union of the ranks' k-th batches is the
    single process's k-th batch of twice the size (Lightning's own sampler would shuffle)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        data = _data(N_DDP, seed=1)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class SaveAtEnd(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


def _ddp_run(tmp_path, devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    # ddp_spawn trains in child processes, so the final weights come back through a checkpoint.
    path = str(tmp_path / f"final_{devices}.ckpt")
    trainer = _trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[DROWeighting("cvar", alpha=0.5), SaveAtEnd(path)],
        use_distributed_sampler=False,
    )
    trainer.fit(Linear(), datamodule=RoundRobinData(batch_size))
    return torch.load(path, weights_only=False)["state_dict"]


def _uniform_run(batch_size: int) -> dict[str, torch.Tensor]:
    model = Linear()
    _trainer(max_epochs=2).fit(model, datamodule=RoundRobinData(batch_size))
    return model.state_dict()


@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single = _ddp_run(tmp_path, devices=1, batch_size=2 * B)
    ddp = _ddp_run(tmp_path, devices=2, batch_size=B)
    initial = Linear().state_dict()
    assert not torch.allclose(single["net.weight"], initial["net.weight"])  # it did train
    # CVaR changed the trajectory (so a per-rank CVaR, or none, would not match)
    assert not torch.allclose(single["net.weight"], _uniform_run(2 * B)["net.weight"])
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)


def test_unequal_per_rank_batch_sizes_are_refused():
    assert check_equal_sizes([4, 4]) == 4
    with pytest.raises(ValueError, match=r"same batch size on every rank.*\[4, 3\].*drop_last"):
        check_equal_sizes([4, 3])


# ----------------------------------------------------------------------------- 4. errors


def test_unknown_oracle_lists_the_choices_and_the_closest():
    with pytest.raises(ValueError, match=r"`oracle` must be one of 'cvar'.*'esrm'.*mean 'cvar'"):
        DROWeighting("cvr", alpha=0.2)


@pytest.mark.parametrize(
    ("oracle", "kwargs", "error", "match"),
    [
        ("cvar", {"alpha": 0.0}, ValueError, r"`alpha` must lie in \(0.0, 1.0\]; got 0.0"),
        ("cvar", {"alpha": 1.5}, ValueError, r"`alpha` must lie in"),
        ("cvar", {"alpha": "high"}, TypeError, r"`alpha` must be a real number"),
        ("cvar", {}, ValueError, r"oracle='cvar'.*needs.*`alpha`"),
        ("cvar_kl", {"alpha": 0.2}, ValueError, r"needs.*`reg`"),
        ("cvar_kl", {"alpha": 0.2, "reg": 0.0}, ValueError, r"`reg` must be > 0"),
        ("chi_square", {"rho": -1.0}, ValueError, r"`rho` must be >= 0"),
        ("kl", {"temperature": 0.0}, ValueError, r"`temperature` must be > 0"),
        ("kl", {"temperature": 1.0, "alpha": 0.2}, ValueError, r"unknown.*`alpha`.*temperature"),
        ("extremile", {"r": 0.5}, ValueError, r"`r` must lie in"),
        ("esrm", {"rho": 1.0, "shift_cost": -1.0}, ValueError, r"`shift_cost` must be >= 0"),
        ("esrm", {"rho": 1.0, "penalty": "l2"}, ValueError, r"`penalty` must be one of"),
    ],
)
def test_bad_oracle_arguments_are_named(oracle, kwargs, error, match):
    with pytest.raises(error, match=match):
        DROWeighting(oracle, **kwargs)


def test_module_without_loss_mixin_fails_at_fit_start():
    trainer = _trainer(max_steps=1, callbacks=[DROWeighting("cvar", alpha=0.2)])
    with pytest.raises(TypeError, match=r"DROWeighting needs LossMixin.*PlainModel"):
        trainer.fit(PlainModel(), DataLoader(_data(), batch_size=8))


def test_the_oracle_has_no_default():
    """A constructor that looks complete would only fail on the missing strength parameter."""
    with pytest.raises(TypeError, match="oracle"):
        DROWeighting()
