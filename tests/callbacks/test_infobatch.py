"""The InfoBatch callback inside a real Trainer: epoch plans, the index channel, weights, epoch
length, resume, dataloader reloads, DDP and errors. (The rule itself, including its
unbiasedness, is tested in tests/weighting/test_infobatch_policy.py.)"""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks.infobatch import InfoBatch, estimated_stepping_batches
from lightning_losses.callbacks.sampler_owner import TrainSamplerOwner
from lightning_losses.weighting import epoch_generator, infobatch_active, infobatch_plan

N, D, K = 64, 5, 3


def _data(n: int = N) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    return TensorDataset(x, y, torch.arange(n))  # the index is only there to check the channel


class Model(LossMixin, L.LightningModule):
    """Records, per step, the dataset's own indices and the weights InfoBatch gave."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")
        self.lr = lr
        self.steps: list[tuple[int, list[int], list[int]]] = []

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        owners = [cb for cb in self.trainer.callbacks if isinstance(cb, TrainSamplerOwner)]
        channel = owners[0].batch_indices.tolist() if owners else None
        self.steps.append((self.trainer.current_epoch, index.tolist(), channel))
        return self.compute_loss(self.net(x), y, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Plain(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(D, K)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _loader(batch_size: int = 8, **kwargs) -> DataLoader:
    return DataLoader(_data(), batch_size=batch_size, shuffle=True, **kwargs)


def _fit(callback: InfoBatch, loader: DataLoader | None = None, **trainer_kwargs):
    model = Model()
    trainer = _trainer(callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, loader if loader is not None else _loader())
    return model, trainer


def test_epochs_follow_the_plan_and_the_index_channel_matches_the_data():
    cb = InfoBatch(prune_ratio=0.5, delta=0.875, seed=3)
    model, _ = _fit(cb)
    stop = 5  # floor(0.875 * 6)
    assert [h["epoch"] for h in cb.history] == list(range(6))
    for h in cb.history:
        trained = [i for e, batch, _ in model.steps if e == h["epoch"] for i in batch]
        assert len(trained) == h["trained"] == N - h["pruned"]
        assert len(set(trained)) == len(trained)  # no sample twice in an epoch
        if infobatch_active(h["epoch"], 6, 0.875):
            assert h["pruned"] > 0 and h["candidates"] > 0
        else:
            assert h["pruned"] == 0 and sorted(trained) == list(range(N))
    assert cb.history[stop]["pruned"] == 0 and cb.history[0]["pruned"] == 0
    # The channel's indices are the ones the dataset put in the batch, step by step.
    for _, from_data, from_channel in model.steps:
        assert from_data == from_channel


def test_the_plan_is_the_pure_rule_on_the_scores_with_the_epoch_generator():
    cb = InfoBatch(prune_ratio=0.3, seed=5)
    scores = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            scores[trainer.current_epoch] = cb.store.last_loss.clone()

    model = Model()
    _trainer(callbacks=[cb, Snapshot()], max_epochs=4).fit(model, _loader())
    for epoch in (1, 2):
        gen = epoch_generator(5, epoch)
        plan = infobatch_plan(scores[epoch - 1], 0.3, generator=gen, prune=True)
        order = plan.kept_indices[torch.randperm(plan.kept_indices.numel(), generator=gen)]
        trained = [i for e, batch, _ in model.steps if e == epoch for i in batch]
        assert trained == order.tolist()
        assert cb.history[epoch]["pruned"] == plan.num_pruned > 0


def test_the_loss_is_the_mean_of_the_planned_weights_times_the_losses():
    cb = InfoBatch(prune_ratio=0.5, seed=0)
    seen = []

    class Record(L.Callback):
        def observe_losses(self, pl_module, batch, losses, sample_weight):
            seen.append((cb.weights[cb.batch_indices].clone(), sample_weight.clone()))

    class Returns(Model):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            loss = super().training_step(batch, batch_idx)
            per_sample = nn.functional.cross_entropy(self.net(x), y, reduction="none")
            torch.testing.assert_close(loss, (seen[-1][1] * per_sample).mean())
            return loss

    _trainer(callbacks=[cb, Record()], max_epochs=3).fit(Returns(), _loader())
    planned = torch.cat([p for p, _ in seen])
    given = torch.cat([w for _, w in seen])
    torch.testing.assert_close(given, planned, rtol=0, atol=0)
    assert (given > 0).all()  # pruned samples never reach a batch
    assert (given > 1).any()  # kept candidates are scaled up


def test_epoch_length_progress_and_validation_follow_the_pruned_epoch():
    lengths = []

    class Lengths(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lengths.append(trainer.num_training_batches)

        def on_train_epoch_end(self, trainer, pl_module):
            lengths[-1] = (lengths[-1], trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    cb = InfoBatch(seed=1)
    model = Model()
    trainer = _trainer(callbacks=[cb, Lengths()], max_epochs=5)
    trainer.fit(model, _loader(batch_size=8))
    for h, (planned, ran) in zip(cb.history, lengths, strict=True):
        assert planned == ran == -(-h["trained"] // 8)
    assert lengths[1][0] < lengths[0][0]


def test_estimated_stepping_batches_counts_the_pruned_epochs():
    class Sched(Model):
        def configure_optimizers(self):
            self.total = estimated_stepping_batches(self.trainer)
            return super().configure_optimizers()

    cb = InfoBatch(prune_ratio=0.5, delta=0.875)
    model = Sched()
    trainer = _trainer(callbacks=[cb], max_epochs=8, accumulate_grad_batches=2)
    trainer.fit(model, _loader(batch_size=4))
    # epochs 0 and 7 full (16 batches -> 8 steps); 6 pruning epochs at |E| = 32, m = 16:
    # 48 samples -> 12 batches -> 6 steps
    assert model.total == 2 * 8 + 6 * 6
    actual = trainer.global_step
    assert abs(actual - model.total) <= 6  # the real |E| differs from the assumed half
    plain = Sched()
    t2 = _trainer(callbacks=[], max_epochs=8, accumulate_grad_batches=2)
    t2.fit(plain, DataLoader(_data(), batch_size=4))
    assert plain.total == t2.global_step == 8 * 8


def _run(tmp_path, epochs, ckpt=None, every_n_steps=None, reload=0, workers=0, seed=0):
    cb = InfoBatch(seed=seed, num_epochs=6)
    model = Model()
    callbacks = [cb]
    if every_n_steps:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every_n_steps, save_top_k=-1)
        )
    trainer = _trainer(
        callbacks=callbacks,
        max_epochs=epochs,
        enable_checkpointing=bool(every_n_steps),
        reload_dataloaders_every_n_epochs=reload,
    )

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return _loader(num_workers=workers, persistent_workers=workers > 0)

    trainer.fit(model, datamodule=Data(), ckpt_path=ckpt)
    return cb, model, trainer


def _assert_same_run(a, b):
    (cb_a, model_a, _), (cb_b, model_b, _) = a, b
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_b.state_dict()[key], value, rtol=0, atol=0)
    for key, value in cb_a.store.state_dict().items():
        torch.testing.assert_close(cb_b.store.state_dict()[key], value, rtol=0, atol=0)
    assert cb_a.history == cb_b.history
    torch.testing.assert_close(cb_a.weights, cb_b.weights, rtol=0, atol=0)


def test_resume_at_an_epoch_boundary_continues_exactly(tmp_path):
    full = _run(tmp_path / "full", epochs=6)
    # 8 batches in epoch 0, then pruned epochs: save at the end of epoch 0 (step 8).
    first = _run(tmp_path / "a", epochs=6, every_n_steps=8)
    ckpt = tmp_path / "a" / "epoch=0-step=8.ckpt"
    assert ckpt.exists()
    resumed = _run(tmp_path / "b", epochs=6, ckpt=str(ckpt))
    _assert_same_run(full, first)
    _assert_same_run(full, resumed)
    assert [s for s in resumed[1].steps] == [s for s in full[1].steps if s[0] >= 1]


def test_resume_in_the_middle_of_a_pruned_epoch_continues_exactly(tmp_path):
    full = _run(tmp_path / "full", epochs=6)
    _run(tmp_path / "a", epochs=6, every_n_steps=11)  # step 11: inside epoch 1
    ckpt = tmp_path / "a" / "epoch=1-step=11.ckpt"
    assert ckpt.exists()
    resumed = _run(tmp_path / "b", epochs=6, ckpt=str(ckpt))
    _assert_same_run(full, resumed)
    assert resumed[1].steps == full[1].steps[11:]


def test_reloading_dataloaders_every_epoch_changes_nothing(tmp_path):
    _assert_same_run(_run(tmp_path, epochs=6), _run(tmp_path, epochs=6, reload=1))


def test_workers_and_prefetching_keep_the_index_channel_in_step(tmp_path):
    plain = _run(tmp_path, epochs=3)
    with_workers = _run(tmp_path, epochs=3, workers=2)
    for _, from_data, from_channel in with_workers[1].steps:
        assert from_data == from_channel
    _assert_same_run(plain, with_workers)


def test_seed_changes_the_draw_and_global_rng_is_left_alone(tmp_path):
    a = _run(tmp_path, epochs=3, seed=0)
    b = _run(tmp_path, epochs=3, seed=1)
    assert a[1].steps[8:] != b[1].steps[8:]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cb = InfoBatch()
    cb.on_dataset_size(N)
    cb.store.update(torch.arange(N), torch.rand(N, generator=torch.Generator().manual_seed(0)), 0)
    trainer = _trainer(max_epochs=6)
    cb.epoch_order(trainer, 1)
    torch.testing.assert_close(torch.rand(3), expected)


# -- DDP -------------------------------------------------------------------------------------


class _SaveState(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            ib = next(cb for cb in trainer.callbacks if isinstance(cb, InfoBatch))
            torch.save(
                {
                    "model": pl_module.state_dict(),
                    "store": ib.store.state_dict(),
                    "history": ib.history,
                    "weights": ib.weights,
                },
                self.path,
            )


def _ddp_fit(tmp_path, devices: int, batch_size: int) -> dict:
    path = str(tmp_path / f"state_{devices}.pt")
    model = Model(lr=0.2)
    trainer = _trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=4,
        callbacks=[InfoBatch(prune_ratio=0.5, seed=0), _SaveState(path)],
    )
    # Lightning's own DistributedSampler would shuffle: InfoBatch replaces it either way.
    trainer.fit(model, DataLoader(_data(), batch_size=batch_size, shuffle=True))
    return torch.load(path, weights_only=False)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = _ddp_fit(tmp_path, devices=1, batch_size=8)
    two = _ddp_fit(tmp_path, devices=2, batch_size=4)
    # Exact equivalence needs equal shares per rank: every epoch keeps an even count here.
    assert all(h["trained"] % 2 == 0 for h in one["history"])
    assert one["history"] == two["history"]
    assert any(h["pruned"] > 0 for h in two["history"])
    torch.testing.assert_close(two["store"]["visits"], one["store"]["visits"], rtol=0, atol=0)
    for key in ("last_loss", "ema"):
        torch.testing.assert_close(two["store"][key], one["store"][key], rtol=1e-5, atol=1e-6)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-5, atol=1e-6)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prune_ratio": 1.0}, r"`prune_ratio` must lie in \[0, 1\)"),
        ({"prune_ratio": -0.1}, r"`prune_ratio` must lie in \[0, 1\)"),
        ({"delta": 0.0}, r"`delta` must lie in \(0, 1\]"),
        ({"delta": 1.5}, r"`delta` must lie in \(0, 1\]"),
        ({"num_epochs": 0}, "num_epochs"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InfoBatch(**kwargs)


def test_module_without_loss_mixin_is_refused():
    trainer = _trainer(callbacks=[InfoBatch()], max_epochs=1)
    with pytest.raises(TypeError, match="InfoBatch needs LossMixin"):
        trainer.fit(Plain(), _loader())


def test_dataset_of_unknown_length_is_refused():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from _data()

    trainer = _trainer(callbacks=[InfoBatch()], max_epochs=1)
    with pytest.raises(ValueError, match="map-style dataset with a length"):
        trainer.fit(Model(), DataLoader(Stream(), batch_size=8))


def test_two_sampler_owners_are_a_conflict():
    trainer = _trainer(callbacks=[InfoBatch(), InfoBatch(seed=1)], max_epochs=1)
    with pytest.raises(ValueError, match="only one callback can own the training sampler"):
        trainer.fit(Model(), _loader())


def test_a_custom_sampler_of_the_user_is_not_silently_replaced():
    sampler = WeightedRandomSampler(torch.ones(N), num_samples=N)
    trainer = _trainer(callbacks=[InfoBatch()], max_epochs=1)
    with pytest.raises(ValueError, match="already uses a custom one"):
        trainer.fit(Model(), DataLoader(_data(), batch_size=8, sampler=sampler))


def test_unbounded_training_needs_the_number_of_epochs():
    trainer = _trainer(callbacks=[InfoBatch()], max_epochs=-1, max_steps=3)
    with pytest.raises(ValueError, match=r"set `Trainer\(max_epochs=\.\.\.\)`"):
        trainer.fit(Model(), _loader())
    # with num_epochs given it runs
    _trainer(callbacks=[InfoBatch(num_epochs=4)], max_epochs=-1, max_steps=3).fit(
        Model(), _loader()
    )


def test_loss_of_the_wrong_length_is_reported():
    class Wrong(Model):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return self.compute_loss(self.net(x[:-1]), y[:-1], batch=batch)

    trainer = _trainer(callbacks=[InfoBatch()], max_epochs=1)
    with pytest.raises(ValueError, match="one value per sample"):
        trainer.fit(Wrong(), _loader())


def test_the_recipe_config_trains_the_classification_recipe_with_infobatch(tmp_path):
    from pathlib import Path

    from lightning_losses.tasks.classification import cli_main

    configs = Path(__file__).parents[2] / "recipes" / "configs"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(configs / "classification.yaml"),
            "--config",
            str(configs / "infobatch.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "3",
            "--model.backbone",
            "resnet10t",
            "--data.image_size",
            "16",
            "--trainer.limit_train_batches",
            "4",
            "--trainer.limit_val_batches",
            "2",
            "--trainer.limit_test_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, InfoBatch))
    assert [h["epoch"] for h in cb.history] == [0, 1, 2]
    assert cb.history[1]["pruned"] > 0 and cb.history[2]["pruned"] == 0  # floor(0.875 * 3) = 2
    n = len(cli.datamodule.train_dataset)
    assert cb.history[1]["trained"] + cb.history[1]["pruned"] == n
    # the cosine schedule was given InfoBatch's shorter run (capped by limit_train_batches)
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert sched.T_max == cb.estimated_stepping_batches(cli.trainer) < 3 * -(-n // 64)


def test_the_saving_is_logged_each_epoch():
    cb = InfoBatch(delta=1.0, seed=0)
    _, trainer = _fit(cb, max_epochs=3)
    last = cb.history[-1]
    assert last["pruned"] > 0
    metrics = trainer.callback_metrics
    assert float(metrics["train/infobatch/saving"]) == pytest.approx(last["pruned"] / N)
    assert float(metrics["train/infobatch/pruned"]) == last["pruned"]
    assert float(metrics["train/infobatch/trained"]) == last["trained"]


def test_the_usage_example_of_the_docs_runs():
    import re
    from pathlib import Path

    page = Path(__file__).parents[2] / "docs" / "callbacks" / "infobatch.md"
    block = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(block, namespace)
    assert isinstance(namespace["trainer"].callbacks[0], InfoBatch)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(96, 16, generator=g), torch.randint(0, 10, (96,), generator=g))
    cb = InfoBatch()
    trainer = _trainer(callbacks=[cb], max_epochs=4)
    model = namespace["Model"]()
    trainer.fit(model, DataLoader(data, batch_size=16, shuffle=True))
    assert sum(h["pruned"] for h in cb.history) > 0
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == cb.estimated_stepping_batches(trainer)


# -- what it tells the user: a line per epoch and a summary at the end of fit ---------------

LOGGER = "lightning.pytorch.utilities.rank_zero"


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("InfoBatch")]


def test_each_epoch_and_the_run_report_their_saving(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cb = InfoBatch(prune_ratio=0.5, delta=0.875, seed=3)
    _fit(cb)  # 6 epochs: 0 has no scores, 1-4 prune, 5 anneals
    lines = _lines(caplog)
    assert len(lines) == 7, lines
    assert lines[0] == f"InfoBatch epoch 0: trained all {N} samples (epoch 0 has no scores yet)"
    for h, line in zip(cb.history[1:5], lines[1:5], strict=True):
        assert line == (
            f"InfoBatch epoch {h['epoch']}: trained {h['trained']} of {N} samples "
            f"({h['pruned']} pruned, saving {h['saving']:.1%})"
        )
    assert "annealing: epochs from floor(delta * T) = 5 on use all data" in lines[5]
    pruned = sum(h["pruned"] for h in cb.history)
    assert lines[6] == (
        f"InfoBatch: 4 of 6 epochs pruned; {pruned} of {6 * N} sample passes saved "
        f"({pruned / (6 * N):.1%})"
    )


def test_a_run_too_short_to_prune_says_so(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    _fit(InfoBatch(), max_epochs=1)
    lines = _lines(caplog)
    assert lines[-1] == (
        "InfoBatch pruned no epoch in 1: with T = 1 and delta = 0.875 no epoch is in its "
        "pruning window (epochs 1 to floor(delta * T) - 1 = -1)"
    )


def test_verbose_false_prints_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cb = InfoBatch(verbose=False)
    _fit(cb, max_epochs=3)
    assert len(cb.history) == 3 and _lines(caplog) == []
