"""GroupDRO callback: the update and weights, training, exact resume, DDP, and the errors.

Reference for the order of operations: kohpangwei/group_DRO, ``loss.py``,
``LossComputer.compute_robust_loss``: ``adv_probs`` is multiplied by
``exp(step_size * adjusted_loss)`` and renormalised, then the robust loss is
``group_loss @ adv_probs`` with the updated weights.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_losses import LossMixin, build_loss, reduce_loss
from lightning_losses.callbacks import GroupDRO

D, K = 4, 2


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


class DictData(Dataset):
    """Group 0: y = [x_0 > 0] (learnable); group 1: random labels (stays hard)."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, D, generator=g)
        self.group = torch.arange(n) % 2
        clean = (self.x[:, 0] > 0).long()
        noisy = torch.randint(0, K, (n,), generator=g)
        self.y = torch.where(self.group == 0, clean, noisy)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "group": self.group[i]}


class GroupModel(LossMixin, L.LightningModule):
    """Linear classifier; batches are dicts {"x", "y", "group"} or tuples (x, y, group)."""

    def __init__(self, lr: float = 0.5, momentum: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(D, K)
        self.criterion = build_loss("cross_entropy")
        self.lr, self.momentum = lr, momentum

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])
        return self.compute_loss(self.net(x), y, batch=batch)

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


# ----------------------------------------------------------------------------- 1. unit


def test_weights_give_the_robust_loss_with_the_updated_q_and_absent_groups_keep_q():
    eta = 0.5
    cb = GroupDRO(num_groups=3, step_size=eta)
    q0 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    cb.load_state_dict({**cb.state_dict(), "q": q0})
    groups = torch.tensor([0, 0, 2, 2, 2, 0])  # group 1 absent
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.5])

    w = cb.sample_weights(None, {"group": groups}, losses)

    l0, l2 = (1.0 + 2.0 + 0.5) / 3, (3.0 + 4.0 + 5.0) / 3
    a0, a2 = 0.2 * math.exp(eta * l0), 0.5 * math.exp(eta * l2)
    mass = 0.2 + 0.5  # the present groups share their old mass
    q_new = [mass * a0 / (a0 + a2), 0.3, mass * a2 / (a0 + a2)]
    torch.testing.assert_close(cb.q, torch.tensor(q_new, dtype=torch.float64), rtol=1e-12, atol=0)
    assert cb.q[1] == 0.3  # absent: kept exactly

    robust = torch.tensor(q_new[0] * l0 + q_new[2] * l2)  # sum_g q_g L_g with the updated q
    torch.testing.assert_close((w * losses).mean(), robust)
    torch.testing.assert_close(reduce_loss(losses, "mean", w), robust)
    w0, w2 = q_new[0] * 6 / 3, q_new[2] * 6 / 3  # q_g N / n_g
    torch.testing.assert_close(w, torch.tensor([w0, w0, w2, w2, w2, w0]))

    # statistics: the EMA starts at the first observation, then blends with weight `ema`
    torch.testing.assert_close(cb.ema_loss, torch.tensor([l0, 0.0, l2], dtype=torch.float64))
    cb.sample_weights(None, {"group": torch.tensor([1, 2])}, torch.tensor([7.0, 1.0]))
    torch.testing.assert_close(
        cb.ema_loss, torch.tensor([l0, 7.0, 0.9 * l2 + 0.1 * 1.0], dtype=torch.float64)
    )
    assert cb.batches_seen.tolist() == [1, 1, 2]
    assert cb.samples_seen.tolist() == [3, 1, 4]


def test_adjustment_enters_the_update_only_and_divides_by_sqrt_group_sizes():
    cb = GroupDRO(2, step_size=0.1, adjustment=2.0, group_key=2, group_sizes=[100, 4])
    losses = torch.tensor([1.0, 1.0, 3.0])
    w = cb.sample_weights(None, (None, None, torch.tensor([0, 0, 1])), losses)
    a = torch.tensor([math.exp(0.1 * (1.0 + 2.0 / 10)), math.exp(0.1 * (3.0 + 2.0 / 2))])
    expected_q = a / a.sum()
    torch.testing.assert_close(cb.q.float(), expected_q)
    torch.testing.assert_close((w * losses).mean(), expected_q @ torch.tensor([1.0, 3.0]))


def test_tuple_batch_and_state_round_trip():
    cb = GroupDRO(num_groups=2, step_size=1.0, group_key=2)
    cb.sample_weights(None, [0, 0, [0, 1, 1]], torch.tensor([0.1, 2.0, 3.0]))
    clone = GroupDRO(num_groups=2, step_size=1.0, group_key=2)
    clone.load_state_dict(cb.state_dict())
    for key in ("q", "ema_loss", "batches_seen", "samples_seen"):
        assert torch.equal(getattr(clone, key), getattr(cb, key))
    assert cb.q[1] > cb.q[0]


# ----------------------------------------------------------------------------- 2. training


@pytest.mark.parametrize("layout", ["dict", "tuple"])
def test_training_moves_q_towards_the_group_with_the_higher_loss(layout):
    data = DictData()
    if layout == "dict":
        loader, cb = DataLoader(data, batch_size=8), GroupDRO(num_groups=2, step_size=0.5)
    else:
        tensors = TensorDataset(data.x, data.y, data.group)
        loader, cb = DataLoader(tensors, batch_size=8), GroupDRO(2, step_size=0.5, group_key=2)
    trainer = _trainer(max_epochs=3, callbacks=[cb])
    trainer.fit(GroupModel(), loader)
    assert cb.batches_seen.tolist() == [12, 12]
    assert cb.ema_loss[1] > cb.ema_loss[0]  # random labels stay hard
    assert cb.q[1] > 0.7 > cb.q[0]
    assert cb.q.sum().item() == pytest.approx(1.0)
    metrics = trainer.callback_metrics
    assert {"train/group_dro/q_0", "train/group_dro/q_1", "train/group_dro/loss_1"} <= set(metrics)
    assert metrics["train/group_dro/q_1"] > metrics["train/group_dro/q_0"]


def test_logged_means_weigh_steps_by_batch_size_and_wait_for_each_group():
    """Batches of 8, 8 and 4; group 2 appears in the last batch only, group 3 never."""
    data = DictData(n=20)
    groups = torch.tensor([0, 1] * 8 + [2, 2, 0, 1])
    loader = DataLoader(TensorDataset(data.x, data.y, groups), batch_size=8)
    steps = []

    class Record(L.Callback):
        def observe_losses(self, pl_module, batch, losses, sample_weight):
            steps.append((len(batch[0]), cb.q.clone(), cb.ema_loss.clone(), cb.batches_seen > 0))

    cb = GroupDRO(num_groups=4, step_size=0.5, group_key=2)
    trainer = _trainer(max_epochs=1, callbacks=[cb, Record()])
    trainer.fit(GroupModel(), loader)
    n = torch.tensor([s[0] for s in steps], dtype=torch.float64)
    q = torch.stack([s[1] for s in steps])
    ema, seen = torch.stack([s[2] for s in steps]), torch.stack([s[3] for s in steps])
    metrics = trainer.callback_metrics
    assert n.tolist() == [8, 8, 4]
    for g in range(4):
        expected_q = (n[:, None] * q).sum(0)[g] / n.sum()
        assert float(metrics[f"train/group_dro/q_{g}"]) == pytest.approx(float(expected_q))
    for g in range(3):
        w = n * seen[:, g]
        expected = (w * ema[:, g]).sum() / w.sum()
        assert float(metrics[f"train/group_dro/loss_{g}"]) == pytest.approx(float(expected))
    assert float(metrics["train/group_dro/loss_2"]) == pytest.approx(float(ema[2, 2]))
    assert "train/group_dro/loss_3" not in metrics


# ----------------------------------------------------------------------------- 3. resume


def _resume_run(tmp_path, ckpt=None, epochs=2):
    cb = GroupDRO(num_groups=2, step_size=0.3)
    model = GroupModel(lr=0.2, momentum=0.9)  # momentum: the optimizer state must resume too
    trainer = _trainer(max_epochs=epochs, callbacks=[cb])
    trainer.fit(model, DataLoader(DictData(), batch_size=8, shuffle=False), ckpt_path=ckpt)
    return trainer, cb, model


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    _, full_cb, full_model = _resume_run(tmp_path, epochs=2)

    first, first_cb, _ = _resume_run(tmp_path, epochs=1)
    path = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(path)
    q_after_one = first_cb.q.clone()

    _, resumed_cb, resumed_model = _resume_run(tmp_path, ckpt=path, epochs=2)

    assert not torch.equal(full_cb.q, q_after_one)  # epoch 2 moved q
    for key in ("q", "ema_loss", "batches_seen", "samples_seen"):
        torch.testing.assert_close(getattr(resumed_cb, key), getattr(full_cb, key), rtol=0, atol=0)
    for key, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=0, atol=0)


# ----------------------------------------------------------------------------- 4. DDP

N_DDP, B = 32, 4


class RoundRobinGroups(L.LightningDataModule):
    """Round-robin DistributedSampler(shuffle=False): the union of the ranks' k-th batches is the
    single process's k-th batch of twice the size (Lightning's own sampler would shuffle)."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(N_DDP, D, generator=gen)
        y = torch.randint(0, K, (N_DDP,), generator=gen)
        group = torch.randint(0, 3, (N_DDP,), generator=gen)  # uneven group counts per rank
        data = TensorDataset(x, y, group)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class SaveAtEnd(L.Callback):
    """Writes a checkpoint when training ends (every rank calls it; rank 0 writes)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


def _ddp_run(tmp_path, devices: int, batch_size: int) -> tuple[torch.Tensor, dict]:
    # With ddp_spawn the fit runs in child processes; the GroupDRO object in this process never
    # sees their q. So each run writes a checkpoint at the end of training, and the test reads
    # the callback's state (under its state_key) and the weights from that file.
    path = str(tmp_path / f"final_{devices}.ckpt")
    cb = GroupDRO(num_groups=3, step_size=0.5, group_key=2)
    trainer = _trainer(
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[cb, SaveAtEnd(path)],
        use_distributed_sampler=False,
    )
    trainer.fit(GroupModel(lr=0.5), datamodule=RoundRobinGroups(batch_size))
    ckpt = torch.load(path, weights_only=False)
    return ckpt["callbacks"][cb.state_key], ckpt["state_dict"]


@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single_state, single_weights = _ddp_run(tmp_path, devices=1, batch_size=2 * B)
    ddp_state, ddp_weights = _ddp_run(tmp_path, devices=2, batch_size=B)

    assert single_state["batches_seen"].sum() > 0
    assert not torch.allclose(single_state["q"], torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(ddp_state["q"], single_state["q"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ddp_state["ema_loss"], single_state["ema_loss"])
    assert torch.equal(ddp_state["samples_seen"], single_state["samples_seen"])
    initial = GroupModel().state_dict()
    assert not torch.allclose(single_weights["net.weight"], initial["net.weight"])
    for key, value in single_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 5. errors


@pytest.mark.parametrize(
    ("key", "batch", "match"),
    [
        ("group", {"x": 0, "y": 0}, r"batch\['group'\].*no such key.*\['x', 'y'\]"),
        ("g", (0, 0, torch.tensor([0, 1])), r"`group_key`='g'.*not a mapping"),
        (3, (0, 0, torch.tensor([0, 1])), r"position 3.*only 3 entries"),
        (2, {"group": torch.tensor([0, 1])}, r"`group_key`=2.*is a dict"),
        ("group", {"group": torch.tensor([0, 3])}, r"`group_key`='group'.*\[0, 3\).*got \[3\]"),
        ("group", {"group": torch.tensor([-1, 0])}, r"\[0, 3\).*got \[-1\]"),
        ("group", {"group": torch.tensor([[0], [1]])}, r"shape \(2,\).*got \(2, 1\)"),
        ("group", {"group": torch.tensor([0, 1, 2])}, r"shape \(2,\).*got \(3,\)"),
        ("group", {"group": torch.tensor([0.0, 1.0])}, r"must be integers"),
        ("group", None, r"NoneType.*batch=batch"),
    ],
)
def test_bad_group_ids_name_group_key_and_what_came(key, batch, match):
    cb = GroupDRO(num_groups=3, group_key=key)
    with pytest.raises(ValueError, match=match):
        cb.sample_weights(None, batch, torch.ones(2))


def test_module_without_loss_mixin_fails_at_fit_start():
    trainer = _trainer(max_steps=1, callbacks=[GroupDRO(num_groups=2)])
    with pytest.raises(TypeError, match=r"GroupDRO needs LossMixin.*PlainModel"):
        trainer.fit(PlainModel(), DataLoader(DictData(), batch_size=8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_groups": 0}, ValueError, "`num_groups` must be >= 1; got 0"),
        ({"num_groups": 2.5}, TypeError, "`num_groups` must be an integer"),
        ({"num_groups": True}, TypeError, "`num_groups` must be an integer"),
        ({"num_groups": 2, "step_size": -0.1}, ValueError, "`step_size` must be >= 0"),
        ({"num_groups": 2, "step_size": float("nan")}, ValueError, "`step_size` must be finite"),
        ({"num_groups": 2, "step_size": "big"}, TypeError, "`step_size` must be a real number"),
        ({"num_groups": 2, "adjustment": -1.0}, ValueError, "`adjustment` must be >= 0"),
        ({"num_groups": 2, "adjustment": 1.0}, ValueError, "`group_sizes`.*required"),
        ({"num_groups": 2, "group_sizes": [3]}, ValueError, "`group_sizes`.*shape \\(2,\\)"),
        ({"num_groups": 2, "group_sizes": [3, 0]}, ValueError, "`group_sizes`.*positive"),
        ({"num_groups": 2, "ema": 0.0}, ValueError, "`ema` must lie in"),
        ({"num_groups": 2, "group_key": 1.5}, TypeError, "`group_key` must be a str"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GroupDRO(**kwargs)


def test_loading_state_of_another_group_count_fails():
    with pytest.raises(ValueError, match=r"num_groups=3.*num_groups=2"):
        GroupDRO(num_groups=2).load_state_dict(GroupDRO(num_groups=3).state_dict())
