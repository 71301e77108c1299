"""PLD callback: keyed draws and warm-up, logging, training, exact resume, DDP, and the errors."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks.pld import PLD
from lightning_losses.weighting.pld import pld_draws, pld_probabilities, pld_select

D, K, POOL = 4, 2, 5


# ----------------------------------------------------------------------------- helpers


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


class PoolData(Dataset):
    """Each item is one pool of POOL candidates; a fifth of the labels are flipped (noise)."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, POOL, D, generator=g)
        clean = (self.x[..., 0] > 0).long()
        flip = torch.rand(n, POOL, generator=g) < 0.2
        self.y = torch.where(flip, 1 - clean, clean)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "pool": torch.full((POOL,), i)}


def flatten_pools(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Collate whole pools into one flat batch of rows."""
    return {key: torch.cat([item[key] for item in items]) for key in items[0]}


def _loader(batch_size: int = 4) -> DataLoader:
    return DataLoader(PoolData(), batch_size=batch_size, collate_fn=flatten_pools)


class PoolModel(LossMixin, L.LightningModule):
    def __init__(self, lr: float = 0.5, momentum: float = 0.9) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")
        self.lr, self.momentum = lr, momentum

    def training_step(self, batch, batch_idx):
        return self.compute_loss(self.net(batch["x"]), batch["y"], batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class PlainModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(D, K)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    """Keeps (epoch, losses, weights, pools) of every training step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        (values,) = losses.values()
        self.steps.append((pl_module.current_epoch, values, sample_weight, batch["pool"]))


class _Trainer:
    def __init__(self, epoch: int, rank: int = 0) -> None:
        self.current_epoch, self.global_rank = epoch, rank


class StubModule:
    """What sample_weights reads from a module: the trainer's epoch and rank, and ``log``."""

    def __init__(self, epoch: int, rank: int = 0) -> None:
        self._trainer = _Trainer(epoch, rank)
        self.logged: dict[str, float] = {}

    def log(self, name, value, **kwargs):
        assert kwargs["on_epoch"] and not kwargs["on_step"] and kwargs["sync_dist"]
        self.logged[name] = float(value)


def _batch(seed: int = 0, pools: int = 6):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(pools * POOL, generator=g) * 2
    ids = torch.arange(pools).repeat_interleave(POOL) * 7 + 3  # arbitrary ids
    return {"pool": ids}, losses


# ----------------------------------------------------------------------------- 1. unit


def test_weights_are_the_keyed_draw_and_the_logs_describe_it():
    cb = PLD(temperature=0.3, warmup_epochs=2, seed=5)
    batch, losses = _batch()
    module = StubModule(epoch=6, rank=1)
    cb.on_train_batch_start(None, module, batch, 4)

    first = cb.sample_weights(module, batch, losses)
    second = cb.sample_weights(module, batch, losses)  # a second loss call in the same batch

    pools = batch["pool"]
    for call, w in enumerate((first, second)):
        expected = pld_select(losses, pools, 0.3, 1, draws=pld_draws(pools, 5, 6, 4, call))
        assert torch.equal(w, expected)
    assert not torch.equal(first, second)
    drawn = first > 0
    assert drawn.sum() == 6 and bool((first[drawn] == POOL).all())

    # logs of the second call: drawn loss, all losses, and 1 / sum p^2 per pool
    drawn = second > 0
    p = pld_probabilities(losses, pools, 0.3).view(-1, POOL)
    assert module.logged["train/pld/selected_loss"] == pytest.approx(losses[drawn].mean().item())
    assert module.logged["train/pld/mean_pool_loss"] == pytest.approx(losses.mean().item())
    effective = sum(1 / float((row**2).sum()) for row in p) / p.shape[0]
    assert module.logged["train/pld/effective_candidates"] == pytest.approx(effective, rel=1e-6)
    assert 1 < effective < POOL


def test_warmup_draws_uniformly_until_the_warmup_epoch():
    cb = PLD(temperature=0.1, warmup_epochs=2, seed=0)
    batch, losses = _batch(1)
    pools = batch["pool"]
    for epoch, uniform in [(0, True), (1, True), (2, False), (3, False)]:
        cb.on_train_batch_start(None, None, batch, 0)
        w = cb.sample_weights(StubModule(epoch), batch, losses)
        draws = pld_draws(pools, 0, epoch, 0, 0)
        assert torch.equal(w, pld_select(losses, pools, 0.1, 1, draws=draws, uniform=uniform))
        assert cb.in_warmup(epoch) is uniform
    assert not PLD(warmup_epochs=0).in_warmup(0)


def test_tuple_batch_num_selected_and_no_trainer():
    cb = PLD(temperature=1e-4, warmup_epochs=0, num_selected=2, pool_key=1)
    losses = torch.tensor([0.3, 0.1, 0.2, 5.0, 4.0, 0.5, 9.0])
    w = cb.sample_weights(None, (None, [0, 0, 0, 1, 1, 1, 1]), losses)  # a list of ids is fine
    assert w.tolist() == [0.0, 1.5, 1.5, 0.0, 2.0, 2.0, 0.0]  # the two lowest, |P| / 2


def test_state_is_empty_and_loading_it_changes_nothing():
    cb = PLD(seed=3)
    assert cb.state_dict() == {}
    cb.load_state_dict({})
    assert (cb.seed, cb.temperature, cb.warmup_epochs, cb.num_selected) == (3, 0.1, 5, 1)


# ----------------------------------------------------------------------------- 2. training


def test_training_trains_on_one_low_loss_candidate_per_pool():
    recorder, cb = Recorder(), PLD(temperature=0.1, warmup_epochs=1)
    trainer = _trainer(max_epochs=3, callbacks=[cb, recorder])
    trainer.fit(PoolModel(), _loader())
    assert len(recorder.steps) == 12
    gaps = []
    for epoch, losses, w, pools in recorder.steps:
        for pool in pools.unique():
            members = pools == pool
            assert sorted(w[members].tolist()) == [0.0] * (POOL - 1) + [float(POOL)]
        if epoch >= 1:
            gaps.append(losses.mean() - losses[w > 0].mean())
    assert torch.stack(gaps).mean() > 0.1  # after warm-up the drawn losses are the low ones
    metrics = trainer.callback_metrics
    assert {"train/pld/selected_loss", "train/pld/mean_pool_loss"} <= set(metrics)
    assert metrics["train/pld/selected_loss"] < metrics["train/pld/mean_pool_loss"]
    assert 1.0 <= metrics["train/pld/effective_candidates"] <= POOL


# ----------------------------------------------------------------------------- 3. resume


def _resume_run(epochs: int, ckpt=None, seed: int = 0):
    recorder, cb = Recorder(), PLD(temperature=0.2, warmup_epochs=1, seed=seed)
    model = PoolModel()  # momentum: the optimizer state must resume too
    trainer = _trainer(max_epochs=epochs, callbacks=[cb, recorder])
    trainer.fit(model, _loader(), ckpt_path=ckpt)
    return trainer, model, recorder


def test_resume_from_a_checkpoint_draws_what_the_uninterrupted_run_draws(tmp_path):
    _, full_model, full = _resume_run(epochs=3)

    first, _, _ = _resume_run(epochs=2)
    path = tmp_path / "epoch2.ckpt"
    first.save_checkpoint(path)
    _, resumed_model, resumed = _resume_run(epochs=3, ckpt=path)

    last_full = [(w, pools) for epoch, _, w, pools in full.steps if epoch == 2]
    assert len(resumed.steps) == len(last_full) == 4
    for (_, _, w, pools), (w_full, pools_full) in zip(resumed.steps, last_full, strict=True):
        assert torch.equal(pools, pools_full) and torch.equal(w, w_full)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=0, atol=0)

    _, other_model, _ = _resume_run(epochs=3, seed=1)  # the draws matter for the result
    assert not torch.equal(other_model.net.weight, full_model.net.weight)


# ----------------------------------------------------------------------------- 4. DDP


class RoundRobinPools(L.LightningDataModule):
    """Whole pools dealt round-robin: the two ranks' batch b together hold the single process's
    batch b of twice the size (Lightning's own sampler injection would shuffle)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        data = PoolData()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            data, batch_size=self.batch_size, sampler=sampler, collate_fn=flatten_pools
        )


def _ddp_run(devices: int, batch_size: int, callbacks: list) -> dict[str, torch.Tensor]:
    model = PoolModel()
    trainer = _trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=3,
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=RoundRobinPools(batch_size))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_train_to_the_weights_of_one_process_with_the_joint_batch():
    # A pool's draw depends on (seed, epoch, batch index, pool id, position), not on the rank
    # or the other pools, so the selection, and with it every update, is the same.
    def pld():
        return [PLD(temperature=0.2, warmup_epochs=1, seed=3)]

    single = _ddp_run(devices=1, batch_size=4, callbacks=pld())
    ddp = _ddp_run(devices=2, batch_size=2, callbacks=pld())
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6)
    plain = _ddp_run(devices=1, batch_size=4, callbacks=[])
    assert not torch.allclose(plain["net.weight"], single["net.weight"])  # the draws mattered


# ----------------------------------------------------------------------------- 4. errors


@pytest.mark.parametrize(
    ("key", "batch", "match"),
    [
        ("pool", {"x": 0, "user": 0}, r"batch\['pool'\].*no such key; it has \['user', 'x'\]"),
        ("pool", (0, torch.zeros(10)), r"`pool_key`='pool'.*not a mapping"),
        (3, (0, 0, torch.zeros(10)), r"position 3.*only 3 entries"),
        (2, {"pool": torch.zeros(10)}, r"`pool_key`=2.*is a dict"),
        ("pool", {"pool": torch.zeros(10, 1, dtype=torch.long)}, r"shape \(10,\).*\(10, 1\)"),
        ("pool", {"pool": torch.zeros(9, dtype=torch.long)}, r"shape \(10,\).*got \(9,\)"),
        ("pool", {"pool": torch.zeros(10)}, r"must be integers; got dtype torch.float32"),
        ("pool", {"pool": "abc"}, r"integer tensor of shape \(10,\); got str"),
        ("pool", None, r"NoneType.*batch=batch"),
    ],
)
def test_bad_pool_ids_name_pool_key_and_what_came(key, batch, match):
    cb = PLD(pool_key=key)
    with pytest.raises(ValueError, match=match):
        cb.sample_weights(None, batch, torch.ones(10))


def test_a_pool_smaller_than_num_selected_fails():
    cb = PLD(num_selected=2)
    with pytest.raises(ValueError, match=r"`num_selected`=2.*pools \[4\] have sizes \[1\]"):
        cb.sample_weights(None, {"pool": torch.tensor([1, 1, 4])}, torch.ones(3))


def test_module_without_loss_mixin_fails_at_fit_start():
    trainer = _trainer(max_steps=1, callbacks=[PLD()])
    with pytest.raises(TypeError, match=r"PLD needs LossMixin.*PlainModel"):
        trainer.fit(PlainModel(), _loader())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "`temperature` must be > 0; got 0.0"),
        ({"temperature": -0.1}, ValueError, "`temperature` must be > 0"),
        ({"temperature": math.inf}, ValueError, "`temperature` must be finite"),
        ({"temperature": "hot"}, TypeError, "`temperature` must be a real number"),
        ({"warmup_epochs": -1}, ValueError, "`warmup_epochs` must be an integer >= 0; got -1"),
        ({"warmup_epochs": 1.5}, ValueError, "`warmup_epochs` must be an integer"),
        ({"num_selected": 0}, ValueError, "`num_selected` must be an integer >= 1; got 0"),
        ({"pool_key": 1.5}, TypeError, "`pool_key` must be a str"),
        ({"pool_key": True}, TypeError, "`pool_key` must be a str"),
        ({"seed": "0"}, ValueError, "`seed` must be an integer"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PLD(**kwargs)
