"""ALDR-KL against a naive float64 loop of its objective and update, its limits, and its state.

The reference below is written from the docstring's formulas with Python floats and :mod:`math`:
per visit, ``p = softmax(delta / lam_old)``, ``lam = lam0 (1 - KL(p || u) / (alpha log K))`` and
the value ``lam log mean exp(delta / lam) - alpha log K / (2 lam0) (lam - lam0)^2``. A batch
reads the table before it writes, and a repeated index keeps its last occurrence.
"""

from __future__ import annotations

import io
import math

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_losses import LossMixin, build_loss
from lightning_losses.losses.dro import ALDRKLLoss, LDRKLLoss, aldr_kl_lambda

TRANSFORMS = ("abs_mean", "softplus_mean", "none")


def make_batch(n=6, k=5, *, scale=3.0, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    return x.requires_grad_(grad), torch.randint(0, k, (n,), generator=g)


def naive_scores(row, transform):
    k = len(row)
    if transform == "none":
        return list(row)
    if transform == "softplus_mean":
        row = [max(v, 0.0) + math.log1p(math.exp(-abs(v))) for v in row]
    scale = sum(abs(v) for v in row) / k
    return [v / scale for v in row]


def naive_visit(row, t, lam_old, margin, lam0, alpha, transform):
    """(value, new lambda) of one sample, from the formulas."""
    s = naive_scores(row, transform)
    k = len(s)
    gaps = [s[j] - s[t] + (margin if j != t else 0.0) for j in range(k)]
    top = max(g / lam_old for g in gaps)
    e = [math.exp(g / lam_old - top) for g in gaps]
    p = [v / sum(e) for v in e]
    kl = sum(pj * math.log(pj * k) for pj in p if pj > 0)
    lam = lam0 * (1.0 - kl / (alpha * math.log(k)))
    top = max(g / lam for g in gaps)
    lme = top + math.log(sum(math.exp(g / lam - top) for g in gaps) / k)
    value = lam * lme - alpha * math.log(k) / (2 * lam0) * (lam - lam0) ** 2
    return value, lam


def naive_batch(table, x, y, index, margin, lam0, alpha, transform):
    """Values of a batch and the table after it (a dict index -> lambda; missing = lam0)."""
    values, writes = [], []
    for row, t, i in zip(x.tolist(), y.tolist(), index.tolist(), strict=True):
        value, lam = naive_visit(row, t, table.get(i, lam0), margin, lam0, alpha, transform)
        values.append(value)
        writes.append((i, lam))
    for i, lam in writes:  # in batch order: the last occurrence wins
        table[i] = lam
    return torch.tensor(values, dtype=torch.float64)


def as_table(loss, size):
    return torch.tensor([loss.lambdas[i].item() for i in range(size)], dtype=torch.float64)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(
    ("margin", "lam", "alpha"), [(0.1, 10.0, 2.0), (1.0, 1.0, 1.5), (0.0, 0.3, 4.0)]
)
def test_values_and_updates_match_naive_loop_over_several_steps(transform, margin, lam, alpha):
    loss = ALDRKLLoss(
        num_samples=9,
        margin=margin,
        lam=lam,
        alpha=alpha,
        logit_transform=transform,
        reduction="none",
    ).double()
    table: dict[int, float] = {}
    steps = [
        torch.tensor([0, 3, 5, 7, 8, 1]),
        torch.tensor([3, 2, 3, 0, 6, 4]),  # repeats 3 within the batch and 0, 3 across batches
        torch.tensor([1, 3, 8, 5, 2, 0]),
    ]
    for step, index in enumerate(steps):
        x, y = make_batch(seed=10 * step + int(lam * 7), scale=2.0 + 2 * step)
        out = loss(x, y, index=index)
        expected = naive_batch(table, x.detach(), y, index, margin, lam, alpha, transform)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        reference = torch.tensor([table.get(i, lam) for i in range(9)], dtype=torch.float64)
        torch.testing.assert_close(as_table(loss, 9), reference, rtol=1e-12, atol=0)
    assert not torch.allclose(loss.lambdas, torch.full((9,), lam, dtype=torch.float64))


def test_update_is_the_argmax_over_lambda_and_value_the_joint_objective():
    """At fixed p the new lambda maximises the objective; at that lambda the value is max over p."""
    x, y = make_batch(n=5, k=6, seed=3, grad=False)
    margin, lam0, alpha = 0.5, 2.0, 3.0
    gaps = x - x.gather(1, y[:, None]) + margin * (1 - F.one_hot(y, 6).double())
    lam_old = torch.tensor([2.0, 1.5, 1.2, 1.9, 1.0], dtype=torch.float64)
    lam_new = aldr_kl_lambda(gaps, lam_old, lam0, alpha)
    reg = alpha * math.log(6) / (2 * lam0)

    def objective(p, lam):  # p (N, K), lam (N, G) -> (N, G)
        kl = (p * torch.log(p * 6)).sum(1, keepdim=True)
        return (p * gaps).sum(1, keepdim=True) - lam * kl - reg * (lam - lam0) ** 2

    p_old = torch.softmax(gaps / lam_old[:, None], 1)
    grid = torch.linspace(1e-3, 3 * lam0, 30001, dtype=torch.float64)
    on_grid = objective(p_old, grid.expand(5, -1))
    torch.testing.assert_close(lam_new, grid[on_grid.argmax(1)], atol=2e-4, rtol=0)
    assert (lam_new >= lam0 * (1 - 1 / alpha)).all() and (lam_new <= lam0).all()

    loss = ALDRKLLoss(
        margin=margin, lam=lam0, alpha=alpha, logit_transform="none", reduction="none"
    )
    loss = loss.double()
    loss.lambdas = lam_old.clone()  # the stored temperatures of samples 0..4
    value = loss(x, y, index=torch.arange(5))
    p_new = torch.softmax(gaps / lam_new[:, None], 1)
    torch.testing.assert_close(value, objective(p_new, lam_new[:, None]).squeeze(1))


@pytest.mark.parametrize(("transform", "ldr_transform"), [("softplus_mean", True), ("none", False)])
def test_no_adaptivity_limit_is_ldr_kl(transform, ldr_transform):
    """alpha -> infinity pins every lambda_i at lam0 and removes the regulariser."""
    x, y = make_batch(n=8, seed=5)
    ldr = LDRKLLoss(margin=0.3, lam=1.5, transform_logits=ldr_transform, reduction="none")(x, y)
    gaps = []
    for alpha in (1e2, 1e4, 1e12):
        aldr = ALDRKLLoss(
            margin=0.3, lam=1.5, alpha=alpha, logit_transform=transform, reduction="none"
        ).double()
        gaps.append((aldr(x, y, index=torch.arange(8)) - ldr).abs().max().item())
        assert (aldr.lambdas <= 1.5).all() and (aldr.lambdas >= 1.5 * (1 - 1 / alpha)).all()
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-9


def test_gradient_is_ldr_kl_at_the_fixed_new_lambda():
    """lambda_i is held fixed: the gradient is that of LDR-KL at lambda = lambda_i, per sample."""
    x, y = make_batch(n=4, seed=8)
    loss = ALDRKLLoss(margin=0.2, lam=1.0, logit_transform="none", reduction="none").double()
    loss(x, y, index=torch.arange(4)).sum().backward()
    lam_i = loss.lambdas.clone()
    for i in range(4):
        xi = x.detach()[i : i + 1].clone().requires_grad_(True)
        ldr = LDRKLLoss(margin=0.2, lam=float(lam_i[i]), transform_logits=False)
        ldr(xi, y[i : i + 1]).backward()
        torch.testing.assert_close(x.grad[i], xi.grad[0])


def test_table_changes_only_on_training_forwards_with_grad():
    x, y = make_batch(n=4, seed=1, grad=False)
    index = torch.tensor([2, 0, 5, 1])
    loss = ALDRKLLoss(num_samples=6, lam=1.0, reduction="none").double()
    start = loss.lambdas.clone()
    first = loss(x, y, index=index)  # input without grad: reads, does not write
    assert torch.equal(loss.lambdas, start)
    with torch.no_grad():
        loss(x.clone().requires_grad_(True), y, index=index)
    assert torch.equal(loss.lambdas, start)
    trained = loss(x.clone().requires_grad_(True), y, index=index)
    torch.testing.assert_close(trained.detach(), first)
    assert not torch.equal(loss.lambdas, start)
    after_one = loss.lambdas.clone()
    second = loss(x, y, index=index)  # steps from the stored lambda now: a different value
    assert not torch.allclose(second, first)
    assert torch.equal(loss.lambdas, after_one)

    loss.eval()  # evaluation indices are another dataset's: start from lam0, never write
    evaluated = loss(x.clone().requires_grad_(True), y, index=torch.tensor([10, 11, 12, 13]))
    torch.testing.assert_close(evaluated.detach(), first)
    assert torch.equal(loss.lambdas, after_one)


def test_ignored_samples_keep_their_lambda_and_class_weight_scales():
    x, y = make_batch(n=5, seed=4)
    index = torch.arange(5)
    y_ign = y.clone()
    y_ign[1] = -100
    loss = ALDRKLLoss(num_samples=5, lam=1.0, reduction="none", ignore_index=-100).double()
    out = loss(x, y_ign, index=index)
    assert out[1] == 0 and loss.lambdas[1] == 1.0
    assert (loss.lambdas[[0, 2, 3, 4]] < 1.0).all()
    full = ALDRKLLoss(lam=1.0, reduction="none").double()(x, y, index=index)
    torch.testing.assert_close(out[[0, 2, 3, 4]], full[[0, 2, 3, 4]])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    weighted = ALDRKLLoss(lam=1.0, weight=w, reduction="none").double()(x, y, index=index)
    torch.testing.assert_close(weighted, full * w.double()[y])


def test_table_grows_without_num_samples_and_stays_fixed_with_it():
    x, y = make_batch(n=3, seed=2)
    growing = ALDRKLLoss(lam=1.0).double()
    assert growing.lambdas.shape == (0,)
    growing(x, y, index=torch.tensor([4, 0, 2]))
    assert growing.lambdas.shape == (5,)
    assert growing.lambdas[1] == 1.0 and growing.lambdas[3] == 1.0  # never written
    fixed = ALDRKLLoss(num_samples=10, lam=1.0).double()
    fixed(x, y, index=torch.tensor([4, 0, 2]))
    assert fixed.lambdas.shape == (10,)
    assert torch.equal(fixed.lambdas[:5], growing.lambdas)
    assert (fixed.lambdas[5:] == 1.0).all()
    growing(x, y, index=torch.tensor([1, 7, 0]))
    assert growing.lambdas.shape == (8,)


@pytest.mark.parametrize("num_samples", [None, 12])
def test_state_round_trip_resumes_exactly(num_samples):
    steps = [
        (
            make_batch(n=4, seed=s),
            torch.randperm(12, generator=torch.Generator().manual_seed(s))[:4],
        )
        for s in range(4)
    ]
    loss = ALDRKLLoss(num_samples=num_samples, lam=2.0, reduction="none")
    for (x, y), index in steps[:2]:
        loss(x.float().detach().requires_grad_(True), y, index=index)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    resumed = ALDRKLLoss(num_samples=num_samples, lam=2.0, reduction="none")
    resumed.load_state_dict(torch.load(buffer))
    assert torch.equal(resumed.lambdas, loss.lambdas)
    for (x, y), index in steps[2:]:
        a = loss(x.float().detach().requires_grad_(True), y, index=index)
        b = resumed(x.float().detach().requires_grad_(True), y, index=index)
        assert torch.equal(a, b)
    assert torch.equal(resumed.lambdas, loss.lambdas)
    assert loss.lambdas.dtype == torch.float64
    assert resumed.to(torch.float32).lambdas.dtype == torch.float32  # a buffer: it follows .to()
    if num_samples is not None:
        with pytest.raises(RuntimeError, match="lambdas"):
            ALDRKLLoss(num_samples=5).load_state_dict(loss.state_dict())


def test_loss_mixin_passes_the_batch_index():
    class Model(LossMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.criterion = build_loss("aldr_kl", num_samples=10, lam=1.0)

    model = Model()
    x, y = make_batch(n=3, seed=6)
    model.compute_loss(x, y, batch={"x": x, "y": y, "index": torch.tensor([9, 4, 1])})
    changed = (model.criterion.lambdas != 1.0).nonzero().flatten().tolist()
    assert changed == [1, 4, 9]
    with pytest.raises(ValueError, match="index"):
        model.compute_loss(x, y, batch=(x, y))


def test_finite_at_saturated_and_zero_logits():
    x, y = make_batch(n=6, seed=7)
    for transform in TRANSFORMS:
        loss = ALDRKLLoss(lam=0.1, alpha=1.01, logit_transform=transform)
        for z in (torch.sign(x.detach()) * 100, torch.zeros(6, 5, dtype=torch.float64)):
            z = z.float().requires_grad_(True)
            value = loss(z, y, index=torch.arange(6))
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(z.grad).all()
            assert torch.isfinite(loss.lambdas).all() and (loss.lambdas > 0).all()


def test_errors():
    x, y = make_batch(n=4, seed=0, grad=False)
    loss = ALDRKLLoss(num_samples=4)
    with pytest.raises(TypeError, match="index"):
        loss(x, y)
    with pytest.raises(TypeError, match="index"):
        loss(x, y, index=[0, 1, 2, 3])
    with pytest.raises(TypeError, match=r"index.*integer"):
        loss(x, y, index=torch.arange(4.0))
    with pytest.raises(ValueError, match=r"index.*shape \(4,\)"):
        loss(x, y, index=torch.arange(3))
    with pytest.raises(ValueError, match=r"index.*\[0, 4\).*\[4\]"):
        loss(x, y, index=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"index.*>= 0.*\[-1\]"):
        ALDRKLLoss()(x, y, index=torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"input.*\(N, K\)"):
        loss(torch.randn(4, 5, 3), torch.randint(0, 5, (4, 3)), index=torch.arange(4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        loss(torch.randn(4, 1), torch.zeros(4, dtype=torch.long), index=torch.arange(4))
    with pytest.raises(ValueError, match="lam"):
        ALDRKLLoss(lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        ALDRKLLoss(lam=-1.0)
    for alpha in (1.0, 0.5, -1.0):
        with pytest.raises(ValueError, match=r"alpha.*> 1"):
            ALDRKLLoss(alpha=alpha)
    with pytest.raises(ValueError, match=r"alpha.*finite"):
        ALDRKLLoss(alpha=math.inf)
    with pytest.raises(ValueError, match="margin"):
        ALDRKLLoss(margin=-0.1)
    with pytest.raises(ValueError, match="num_samples"):
        ALDRKLLoss(num_samples=0)
    with pytest.raises(ValueError, match=r"logit_transform.*'abs_mean'"):
        ALDRKLLoss(logit_transform="abs")


# -- DDP: 2 processes on CPU (gloo) ------------------------------------------------------------


def _ddp_steps():
    """Per step, each rank's (x, y, index); sizes differ by rank and index 3 is on both ranks."""
    steps = []
    for s, (idx0, idx1) in enumerate(
        [([0, 3, 5], [3, 7, 1, 8]), ([2, 6], [4, 0, 9]), ([9, 3, 1, 5], [6, 2])]
    ):
        batches = []
        for r, idx in enumerate((idx0, idx1)):
            x, y = make_batch(n=len(idx), seed=100 * s + r, grad=False)
            batches.append((x, y, torch.tensor(idx)))
        steps.append(batches)
    return steps


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss = ALDRKLLoss(lam=1.0, reduction="none").double()
        for batches in _ddp_steps():
            x, y, index = batches[rank]
            loss(x.clone().requires_grad_(True), y, index=index)
        torch.save(loss.lambdas, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawn: each rank imports the library afresh (fork can deadlock in OpenMP)
@pytest.mark.ddp
def test_ddp_ranks_hold_the_table_of_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    tables = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(tables[0], tables[1])
    single = ALDRKLLoss(lam=1.0, reduction="none").double()
    for batches in _ddp_steps():  # rank 0's batch, then rank 1's: rank 1 wins index 3
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        single(x.requires_grad_(True), y, index=torch.cat([b[2] for b in batches]))
    torch.testing.assert_close(tables[0], single.lambdas, rtol=1e-12, atol=0)
