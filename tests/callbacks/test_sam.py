"""SAM, ASAM and AWP as callbacks: one step equals the hand-written two-pass update.

The reference updates below are written from the papers' formulas with ``torch.func`` (a
functional loss of the parameters), not with the library's perturbation functions.
"""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

import lightning_losses.mixins.loss_mixin as loss_mixin_module
from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks import PLD, GroupDRO, InfoBatch
from lightning_losses.callbacks.sam import ASAM, AWP, SAM, _unscale_second_pass
from lightning_losses.flatness import awp_perturbation, global_norm, sam_perturbation
from lightning_losses.mixins.protocols import LossTerm

D, H, K, N = 4, 6, 3, 16
LR = 0.2


class Net(L.LightningModule):
    def __init__(
        self, *, bn: bool = False, momentum: float = 0.0, dtype=torch.float64, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        layers = [nn.Linear(D, H)] + ([nn.BatchNorm1d(H)] if bn else []) + [nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(H, K)).to(dtype)
        self.momentum = momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(
            self.parameters(), lr=LR, momentum=self.momentum, weight_decay=1e-3 * self.momentum
        )


def data(dtype=torch.float64, n: int = N) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, D, generator=g).to(dtype), torch.randint(0, K, (n,), generator=g)
    )


def fit(
    model,
    callbacks=(),
    *,
    steps=1,
    batch_size=8,
    ckpt_path=None,
    dtype=torch.float64,
    dataset=None,
    **kw,
):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        callbacks=list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    dataset = data(dtype) if dataset is None else dataset
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def grad_at(model, weights, x, y) -> dict[str, torch.Tensor]:
    """Gradient of the batch's cross-entropy at ``weights`` (BN in train mode, stats untouched)."""
    probe = copy.deepcopy(model)
    w = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
    buffers = {k: v.clone() for k, v in probe.named_buffers()}
    loss = F.cross_entropy(functional_call(probe, {**w, **buffers}, (x,)), y)
    return dict(zip(w, torch.autograd.grad(loss, list(w.values())), strict=True))


def reference_step(model, perturb, clip: float = math.inf) -> dict[str, torch.Tensor]:
    """``w - lr * clip(grad L(w + e))`` on the first batch, ``e = perturb(w, g)``."""
    x, y = data()[:8]
    w = params(model)
    g = grad_at(model, w, x, y)
    e = perturb(w, g)
    g2 = grad_at(model, {k: w[k] + e[k] for k in w}, x, y)
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g2.values()))
    factor = min(1.0, clip / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
    return {k: w[k] - LR * factor * g2[k] for k in w}


# -- one step equals the formula ---------------------------------------------------------------


def test_sam_step_equals_two_pass_formula():
    rho = 0.3

    def sam(w, g):
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
        return {k: rho * g[k] / norm for k in g}

    model = Net()
    expected = reference_step(model, sam)
    fit(model, [SAM(rho=rho)])
    plain = Net()
    fit(plain)
    for k, v in params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(params(plain)["net.0.weight"], expected["net.0.weight"])


def test_gradient_clipping_clips_the_second_gradient():
    def sam(w, g):
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
        return {k: 0.3 * g[k] / norm for k in g}

    model = Net()
    expected = reference_step(model, sam, clip=0.05)
    fit(model, [SAM(rho=0.3)], gradient_clip_val=0.05)
    for k, v in params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)


def test_asam_step_equals_its_formula_weights_adapted_biases_not():
    rho, eta = 0.5, 0.01

    def asam(w, g):
        t = {k: (w[k].abs() + eta) if "weight" in k else torch.ones_like(w[k]) for k in w}
        norm = math.sqrt(sum(float((t[k] * g[k]).pow(2).sum()) for k in g))
        return {k: rho * t[k] ** 2 * g[k] / norm for k in g}

    model = Net()
    expected = reference_step(model, asam)
    fit(model, [ASAM(rho=rho, eta=eta)])
    for k, v in params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)
    same = Net()
    fit(same, [SAM(rho=rho, adaptive=True, eta=eta)])
    for k, v in params(same).items():
        assert torch.equal(v, params(model)[k])


def test_awp_step_equals_its_formula_per_weight_matrix():
    gamma = 0.05

    def awp(w, g):
        return {
            k: gamma * w[k].norm() * g[k] / g[k].norm() if w[k].ndim > 1 else torch.zeros_like(w[k])
            for k in w
        }

    model = Net()
    expected = reference_step(model, awp)
    fit(model, [AWP(gamma=gamma)])
    for k, v in params(model).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("callback", [SAM(rho=0.0), ASAM(rho=0.0), AWP(gamma=0.0)])
def test_zero_radius_is_exactly_the_base_optimiser(callback):
    plain, flat = Net(bn=True, momentum=0.9), Net(bn=True, momentum=0.9)
    fit(plain, steps=4)
    fit(flat, [callback], steps=4)
    for k, v in plain.state_dict().items():
        assert torch.equal(flat.state_dict()[k], v), k


def test_batch_norm_running_stats_move_once_per_batch():
    plain, flat = Net(bn=True), Net(bn=True)
    fit(plain)
    fit(flat, [SAM(rho=0.5)])
    bn_plain, bn_flat = plain.net[1], flat.net[1]
    assert int(bn_flat.num_batches_tracked) == 1
    torch.testing.assert_close(bn_flat.running_mean, bn_plain.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn_flat.running_var, bn_plain.running_var, rtol=0, atol=0)
    # and the update is still the two-pass formula (BN normalising with batch statistics)
    model = Net(bn=True)

    def sam(w, g):
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
        return {k: 0.5 * g[k] / norm for k in g}

    expected = reference_step(model, sam)
    for k, v in params(flat).items():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12)


def test_logged_loss_is_the_first_pass_loss():
    plain, flat = Net(), Net()
    a = fit(plain)
    b = fit(flat, [SAM(rho=0.5)])
    assert float(b.callback_metrics["loss"]) == float(a.callback_metrics["loss"])


# -- accumulation, interval, resume ------------------------------------------------------------


def test_gradient_accumulation_equals_the_large_batch():
    big, small = Net(), Net()
    fit(big, [SAM(rho=0.2)], steps=4, batch_size=8)
    fit(small, [SAM(rho=0.2)], steps=4, batch_size=4, accumulate_grad_batches=2)
    for k, v in params(big).items():
        torch.testing.assert_close(params(small)[k], v, rtol=1e-10, atol=1e-12)


def test_interval_alternates_sam_and_plain_steps():
    every_other = Net()
    fit(every_other, [SAM(rho=0.3, interval=2)], steps=2)
    after_sam = Net()
    fit(after_sam, [SAM(rho=0.3)], steps=1)
    # the second step used batch 1 with no perturbation
    x, y = data()[8:16]
    w = params(after_sam)
    g = grad_at(after_sam, w, x, y)
    for k, v in params(every_other).items():
        torch.testing.assert_close(v, w[k] - LR * g[k], rtol=1e-12, atol=1e-12)


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    # Stop on an epoch boundary: Lightning itself does not resume a `max_steps` stop exactly.
    # interval=3 with 2 steps per epoch: the SAM steps (0, 3, ...) straddle the resume.
    def train(model, epochs, ckpt_path=None):
        return fit(
            model, [SAM(rho=0.2, interval=3)], steps=-1, max_epochs=epochs, ckpt_path=ckpt_path
        )

    whole = Net(bn=True, momentum=0.9)
    train(whole, 3)
    first = Net(bn=True, momentum=0.9)
    train(first, 1).save_checkpoint(tmp_path / "mid.ckpt")
    resumed = Net(bn=True, momentum=0.9, seed=5)
    assert train(resumed, 3, tmp_path / "mid.ckpt").global_step == 6
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


# -- precisions --------------------------------------------------------------------------------


def test_bf16_mixed_is_finite_and_close_to_fp32():
    ref, bf16 = Net(dtype=torch.float32), Net(dtype=torch.float32)
    fit(ref, [SAM(rho=0.1)], steps=4, dtype=torch.float32, precision="32-true")
    fit(bf16, [SAM(rho=0.1)], steps=4, dtype=torch.float32, precision="bf16-mixed")
    for k, v in params(ref).items():
        assert torch.isfinite(params(bf16)[k]).all()
        torch.testing.assert_close(params(bf16)[k], v, rtol=0, atol=3e-2)


def fp16_plugin(init_scale: float = 2.0**8) -> MixedPrecision:
    """``16-mixed`` with a real GradScaler on the CPU (``"16-mixed"`` alone becomes bf16 there)."""
    return MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale)
    )


def test_fp16_grad_scaler_path_is_close_to_fp32():
    ref, fp16 = Net(dtype=torch.float32), Net(dtype=torch.float32)
    fit(ref, [SAM(rho=0.1)], steps=4, dtype=torch.float32)
    plugin = fp16_plugin()
    fit(fp16, [SAM(rho=0.1)], steps=4, dtype=torch.float32, plugins=[plugin])
    assert plugin.scaler.get_scale() == 2.0**8  # no overflow, so no step was skipped
    for k, v in params(ref).items():
        torch.testing.assert_close(params(fp16)[k], v, rtol=0, atol=1e-2)
    # and the gradients were unscaled: a scaled gradient would have moved the weights ~256x more
    moved = params(fp16)["net.0.weight"] - params(Net(dtype=torch.float32))["net.0.weight"]
    assert float(moved.abs().max()) < 1.0


def test_fp16_overflow_in_first_pass_skips_the_step():
    model = Net(dtype=torch.float32)
    before = params(model)
    plugin = fp16_plugin(init_scale=2.0**100)  # inf in the first backward
    fit(model, [SAM(rho=0.1)], steps=1, dtype=torch.float32, plugins=[plugin])
    for k, v in params(model).items():
        assert torch.equal(v, before[k])
    assert plugin.scaler.get_scale() < 2.0**100


def test_overflow_in_second_pass_makes_the_scaler_skip():
    lin = nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(lin(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(opt)  # what Lightning does before on_before_optimizer_step
    before = [p.detach().clone() for p in lin.parameters()]
    for p in lin.parameters():  # a second pass whose scaled gradients overflowed
        p.grad = torch.full_like(p, float("inf"))
    _unscale_second_pass(scaler, opt, [p.grad for p in lin.parameters()])
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before, strict=True))
    assert scaler.get_scale() == 2.0
    # finite second gradients are divided by the scale
    grads = [torch.full((3,), 8.0)]
    _unscale_second_pass(scaler, opt, grads)
    assert torch.equal(grads[0], torch.full((3,), 4.0))


# -- pure functions ----------------------------------------------------------------------------


def test_pure_perturbations_match_their_formulas():
    g = torch.Generator().manual_seed(3)
    w = [
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    ]
    gr = [
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    ]
    e = sam_perturbation(w, gr, 0.7)
    torch.testing.assert_close(global_norm(e), torch.tensor(0.7, dtype=torch.float64))
    ratios = torch.cat([(e[0] / gr[0]).flatten(), e[1] / gr[1]])  # one common factor
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios))
    ea = sam_perturbation(w, gr, 0.7, adaptive=[True, False], eta=0.1)
    t = w[0].abs() + 0.1
    torch.testing.assert_close(
        global_norm([ea[0] / t, ea[1]]), torch.tensor(0.7, dtype=torch.float64)
    )
    v = awp_perturbation(w, gr, 0.01)
    for vi, wi in zip(v, w, strict=True):
        torch.testing.assert_close(vi.norm(), 0.01 * wi.norm())
    assert all(
        float(z.abs().max()) == 0
        for z in sam_perturbation(w, [torch.zeros_like(x) for x in w], 1.0)
    )
    half = sam_perturbation([w[0].half()], [gr[0].half()], 0.1)
    assert half[0].dtype == torch.float16


# -- DDP ---------------------------------------------------------------------------------------


class RoundRobin(L.LightningDataModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        ds = data(n=32)
        sampler = DistributedSampler(
            ds, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
        )
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler)


def _train_ddp(devices: int, batch_size: int, accumulate: int = 1) -> dict[str, torch.Tensor]:
    model = Net()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[SAM(rho=0.3)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit(model, datamodule=RoundRobin(batch_size))
    return params(model)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_match_one_process_with_the_same_global_batch():
    # Round-robin: the two ranks' two micro-batches of 2 are exactly the single batch of 8, and
    # the second pass then runs one micro-batch under no_sync and all-reduces in the other.
    single = _train_ddp(devices=1, batch_size=8)
    ddp = _train_ddp(devices=2, batch_size=2, accumulate=2)
    assert not torch.allclose(single["net.0.weight"], params(Net())["net.0.weight"])
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-10, atol=1e-12)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: SAM(rho=-0.1), "rho"),
        (lambda: SAM(eta=-0.1), "eta"),
        (lambda: ASAM(rho=-1.0), "rho"),
        (lambda: AWP(gamma=-1e-3), "gamma"),
        (lambda: SAM(interval=0), "interval"),
        (lambda: sam_perturbation([torch.ones(2)], [torch.ones(2)], -1.0), "rho"),
        (lambda: sam_perturbation([torch.ones(2)], [torch.ones(3)], 1.0), "grads"),
        (
            lambda: sam_perturbation([torch.ones(2)], [torch.ones(2)], 1.0, adaptive=[True, False]),
            "adaptive",
        ),
        (lambda: awp_perturbation([torch.ones(2)], [], 1.0), "grads"),
    ],
)
def test_bad_input_names_the_argument(make, arg):
    with pytest.raises(ValueError, match=f"`{arg}"):
        make()


def test_manual_optimisation_is_refused():
    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="automatic optimisation"):
        fit(Manual(), [SAM()])


# -- composition with the LossMixin pipeline ---------------------------------------------------


class PipelineNet(LossMixin, Net):
    """``Net`` whose loss runs through the LossMixin pipeline; tuple or dict batches."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.criterion = build_loss("cross_entropy")

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch[0], batch[1])
        return self.compute_loss(self(x), y, batch=batch)


class DictData(Dataset):
    """``data()`` as dict rows with a group (``i % 2``) and a pool (``i // 2``) per row."""

    def __init__(self) -> None:
        self.x, self.y = data().tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[i],
            "y": self.y[i],
            "group": torch.tensor(i % 2),
            "pool": torch.tensor(i // 2),
        }


class Counter(L.Callback):
    """A loss-term provider, a weighter (all ones) and an observer that count their calls."""

    def __init__(self) -> None:
        self.terms = self.weights = self.observed = 0

    def loss_terms(self, pl_module, outputs, target, batch):
        self.terms += 1
        return {"zero": LossTerm(torch.zeros(outputs.shape[0], dtype=outputs.dtype))}

    def sample_weights(self, pl_module, batch, losses):
        self.weights += 1
        return torch.ones_like(losses)

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        self.observed += 1


@pytest.fixture
def reduced_weights(monkeypatch):
    """The sample weights of every ``compute_loss`` reduction, in call order."""
    seen: list[torch.Tensor | None] = []
    reduce = loss_mixin_module.reduce_loss

    def spy(values, reduction, *weight):
        if weight:  # compute_loss's reduction; the logged means pass no weight
            seen.append(None if weight[0] is None else weight[0].clone())
        return reduce(values, reduction, *weight)

    monkeypatch.setattr(loss_mixin_module, "reduce_loss", spy)
    return seen


def test_group_dro_q_steps_once_per_micro_batch_as_without_sam():
    for kw in ({}, {"batch_size": 4, "accumulate_grad_batches": 2}):
        with_sam, without = GroupDRO(num_groups=2, step_size=2.0), GroupDRO(2, step_size=2.0)
        fit(PipelineNet(), [SAM(rho=0.3), with_sam], dataset=DictData(), **kw)
        fit(PipelineNet(), [without], dataset=DictData(), **kw)
        assert torch.equal(with_sam.q, without.q)
        assert torch.equal(with_sam.batches_seen, without.batches_seen)
        assert with_sam.samples_seen.tolist() == [4, 4]
        assert not torch.equal(with_sam.q, torch.full((2,), 0.5, dtype=torch.float64))


def test_sam_with_group_dro_equals_the_two_pass_update_with_one_set_of_weights():
    rho, eta = 0.3, 2.0
    model = PipelineNet()
    rows = DictData()
    x, y = rows.x[:8], rows.y[:8]
    groups = torch.arange(8) % 2
    probe = copy.deepcopy(model)
    w = params(model)

    def per_sample(weights):
        return F.cross_entropy(functional_call(probe, weights, (x,)), y, reduction="none")

    def grad(weights, v):
        leaves = {k: t.detach().clone().requires_grad_(True) for k, t in weights.items()}
        loss = (v * per_sample(leaves)).mean()
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))

    dro = GroupDRO(num_groups=2, step_size=eta)
    v = dro.sample_weights(None, {"group": groups}, per_sample(w).detach())  # q steps once
    g = grad(w, v)
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g.values()))
    shifted = {k: w[k] + rho * g[k] / norm for k in w}
    g2 = grad(shifted, v)  # the second pass: same GroupDRO weights v
    expected = {k: w[k] - LR * g2[k] for k in w}
    # weights from a second q step (what a naive re-run would use) give another update
    v_twice = dro.sample_weights(None, {"group": groups}, per_sample(shifted).detach())
    assert not torch.allclose(v_twice, v)
    naive = grad(shifted, v_twice)

    callback = GroupDRO(num_groups=2, step_size=eta)
    fit(model, [SAM(rho=rho), callback], dataset=rows)
    for k, t in params(model).items():
        torch.testing.assert_close(t, expected[k], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(
        params(model)["net.0.weight"], w["net.0.weight"] - LR * naive["net.0.weight"]
    )
    q_once = GroupDRO(num_groups=2, step_size=eta)
    q_once.sample_weights(None, {"group": groups}, per_sample(w).detach())
    assert torch.equal(callback.q, q_once.q)


def test_infobatch_scores_each_trained_sample_once_per_epoch():
    callback = InfoBatch(prune_ratio=0.5, seed=1)
    fit(
        PipelineNet(),
        [SAM(rho=0.1), callback],
        steps=-1,
        max_epochs=4,
        batch_size=4,
        accumulate_grad_batches=2,
    )
    store = callback.store
    assert store is not None
    assert callback.history[0]["trained"] == N
    assert any(h["pruned"] > 0 for h in callback.history)  # a pruned epoch happened
    assert int(store.visits.sum()) == sum(h["trained"] for h in callback.history)
    assert int(store.visits.max()) <= 4 and int(store.visits.min()) >= 1


def test_pld_draw_is_the_same_in_both_passes(reduced_weights):
    class CountingPLD(PLD):
        calls = 0

        def sample_weights(self, pl_module, batch, losses):
            CountingPLD.calls += 1
            return super().sample_weights(pl_module, batch, losses)

    callback = CountingPLD(temperature=10.0, warmup_epochs=0, seed=3)
    fit(PipelineNet(), [SAM(rho=0.3), callback], steps=2, dataset=DictData())
    assert CountingPLD.calls == 2  # one draw per batch
    assert len(reduced_weights) == 4  # two passes per batch
    for first, second in (reduced_weights[0:2], reduced_weights[2:4]):
        assert torch.equal(first, second)
        assert set(first.tolist()) == {0.0, 2.0}  # one of each pool of 2, weight |P|/s
    # the first draw is the one a run without SAM makes (call 0 of batch 0)
    sam_first = reduced_weights[0]
    reduced_weights.clear()
    fit(PipelineNet(), [PLD(temperature=10.0, warmup_epochs=0, seed=3)], dataset=DictData())
    assert torch.equal(reduced_weights[0], sam_first)


@pytest.mark.parametrize(("interval", "perturbed"), [(1, 3), (2, 2)])
def test_observers_and_weighters_see_each_batch_once_terms_every_pass(interval, perturbed):
    counter = Counter()
    model = PipelineNet()
    fit(
        model,
        [SAM(rho=0.3, interval=interval), counter],
        steps=3,
        batch_size=4,
        accumulate_grad_batches=2,
    )
    assert counter.observed == counter.weights == 6  # 3 steps x 2 micro-batches
    assert counter.terms == 6 + 2 * perturbed  # re-run at w + e for every perturbed window
    assert model.take_loss_record() is None  # every window's record was consumed


def test_replay_checks_the_calls_against_the_record():
    model = PipelineNet()
    x, y = data()[:8]
    model.record_loss_pipeline()
    first = model.compute_loss(model(x), y)
    record = model.take_loss_record()
    assert record is not None and len(record) == 1 and model.take_loss_record() is None
    with model.replaying_loss_pipeline(record):
        assert torch.equal(model.compute_loss(model(x), y), first)
        with pytest.raises(RuntimeError, match="recorded pass made only 1"):
            model.compute_loss(model(x), y)
    with (
        pytest.raises(RuntimeError, match="has 4 samples"),
        model.replaying_loss_pipeline(record),
    ):
        model.compute_loss(model(x[:4]), y[:4])
    with (
        pytest.raises(RuntimeError, match="the replay only 0"),
        model.replaying_loss_pipeline(record),
    ):
        pass
    with model.replaying_loss_pipeline(record):  # other stages are neither replayed nor counted
        model.compute_loss(model(x), y, stage="val")
        model.compute_loss(model(x), y)


def test_distillation_under_accumulation_is_refused():
    from lightning_losses.callbacks import Distillation

    teacher = nn.Linear(D, K).double()
    with pytest.raises(
        ValueError, match=r"SAM with Distillation needs `accumulate_grad_batches=1`"
    ):
        fit(PipelineNet(), [SAM(), Distillation(teacher=teacher)], accumulate_grad_batches=2)
