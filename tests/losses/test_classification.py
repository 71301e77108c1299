"""Classification losses against naive float64 references, established libraries and identities.

The references are written from the papers' formulas (docs/losses/classification.md) with
explicit Python loops over samples and elements, using :mod:`math` on Python floats (no code
from the package).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss, list_losses

IGNORE = -100


# --------------------------------------------------------------------------- helpers


def make_inputs(n=6, k=5, dense=(), *, scale=3.0, seed=0, ignore_frac=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, *dense, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n, *dense), generator=g)
    if ignore_frac:
        mask = torch.rand(y.shape, generator=g) < ignore_frac
        mask.view(n, -1)[0, 0] = False  # keep every sample non-empty for a clean reference
        y = torch.where(mask, torch.full_like(y, IGNORE), y)
    return x, y


def lse(row):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def logp(row, j):
    return row[j] - lse(row)


def naive_per_sample(row_loss, x, y, weight=None):
    """Per-sample mean over non-ignored elements of ``w[y] * row_loss(row, y)``."""
    n, k = x.shape[0], x.shape[1]
    xs = x.reshape(n, k, -1)
    ys = y.reshape(n, -1)
    out = []
    for i in range(n):
        vals = []
        for e in range(xs.shape[2]):
            t = int(ys[i, e])
            if t == IGNORE:
                continue
            row = [float(v) for v in xs[i, :, e]]
            w = 1.0 if weight is None else float(weight[t])
            vals.append(w * row_loss(row, t))
        out.append(sum(vals) / len(vals) if vals else 0.0)
    return torch.tensor(out, dtype=torch.float64)


def ours(name, x, y, **kwargs):
    """Per-sample values; where the target holds IGNORE labels the loss is told to skip them,
    as a user would (nothing is ignored by default)."""
    if bool((y == IGNORE).any()):
        kwargs.setdefault("ignore_index", IGNORE)
    return build_loss(name, reduction="none", **kwargs)(x, y)


def close(a, b, rtol=1e-9, atol=1e-10):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- row references


def r_ce(row, y, eps=0.0, w=None):
    k = len(row)
    w = w or [1.0] * k
    nll = -w[y] * logp(row, y)
    return (1 - eps) * nll + eps / k * sum(-w[j] * logp(row, j) for j in range(k))


def r_focal(row, y, gamma=2.0, alpha=None):
    p = math.exp(logp(row, y))
    a = 1.0 if alpha is None else alpha
    return -a * (1 - p) ** gamma * math.log(p)


def r_poly1(row, y, epsilon=1.0):
    p = math.exp(logp(row, y))
    return -math.log(p) + epsilon * (1 - p)


def r_poly1_focal(row, y, gamma=2.0, epsilon=1.0):
    p = math.exp(logp(row, y))
    return r_focal(row, y, gamma) + epsilon * (1 - p) ** (gamma + 1)


def r_squentropy(row, y):
    k = len(row)
    return -logp(row, y) + sum(row[j] ** 2 for j in range(k) if j != y) / (k - 1)


def r_comp_sum(row, y, tau=1.0):
    u = sum(math.exp(row[j] - row[y]) for j in range(len(row)) if j != y)
    if tau == 1.0:
        return math.log1p(u)
    return ((1 + u) ** (1 - tau) - 1) / (1 - tau)


def r_gce(row, y, q=0.7):
    return (1 - math.exp(logp(row, y)) ** q) / q


def r_rce(row, y, A=-4.0):
    # -sum_k p_k log q_k with q one-hot and log 0 := A
    return -sum(math.exp(logp(row, j)) * (0.0 if j == y else A) for j in range(len(row)))


def r_nce(row, y):
    return -logp(row, y) / -sum(logp(row, j) for j in range(len(row)))


def r_spherical_z(row, y, a=1.0, b=3.0):
    k = len(row)
    mu = sum(row) / k
    sigma = math.sqrt(sum(v * v for v in row) / k - mu * mu)
    z = (row[y] - mu) / sigma
    return math.log1p(math.exp(a * (b - z))) / a


def r_logit_z(row, y, kappa=1e-4):
    return kappa * lse(row) ** 2


ROW_REFERENCES = [
    ("cross_entropy", {}, r_ce),
    ("cross_entropy", {"label_smoothing": 0.2}, lambda r, y: r_ce(r, y, eps=0.2)),
    ("focal", {}, r_focal),
    ("focal", {"gamma": 0.5, "alpha": 0.375}, lambda r, y: r_focal(r, y, 0.5, 0.375)),
    ("poly1", {}, r_poly1),
    ("poly1", {"epsilon": -0.5}, lambda r, y: r_poly1(r, y, -0.5)),
    ("poly1_focal", {}, r_poly1_focal),
    ("poly1_focal", {"gamma": 1.5, "epsilon": 2.0}, lambda r, y: r_poly1_focal(r, y, 1.5, 2.0)),
    ("squentropy", {}, r_squentropy),
    ("comp_sum", {}, r_comp_sum),
    ("comp_sum", {"tau": 0.5}, lambda r, y: r_comp_sum(r, y, 0.5)),
    ("comp_sum", {"tau": 1.5}, lambda r, y: r_comp_sum(r, y, 1.5)),
    ("comp_sum", {"tau": 3.0}, lambda r, y: r_comp_sum(r, y, 3.0)),
    ("sum_exp", {}, lambda r, y: sum(math.exp(v - r[y]) for j, v in enumerate(r) if j != y)),
    ("gce", {}, r_gce),
    ("gce", {"q": 0.3}, lambda r, y: r_gce(r, y, 0.3)),
    ("mae", {}, lambda r, y: 1 - math.exp(logp(r, y))),
    ("rce", {}, r_rce),
    ("rce", {"A": -9.0}, lambda r, y: r_rce(r, y, -9.0)),
    ("sce", {}, lambda r, y: 0.1 * -logp(r, y) + 1.0 * r_rce(r, y)),
    ("sce", {"alpha": 6.0, "beta": 0.1}, lambda r, y: 6.0 * -logp(r, y) + 0.1 * r_rce(r, y)),
    ("nce", {}, r_nce),
    ("nce_rce", {}, lambda r, y: r_nce(r, y) + r_rce(r, y)),
    ("nce_rce", {"alpha": 10.0, "beta": 0.1}, lambda r, y: 10 * r_nce(r, y) + 0.1 * r_rce(r, y)),
    ("spherical_z", {}, r_spherical_z),
    ("spherical_z", {"a": 0.5, "b": 1.0}, lambda r, y: r_spherical_z(r, y, 0.5, 1.0)),
    ("logit_z_regularizer", {}, r_logit_z),
    ("logit_z_regularizer", {"kappa": 0.1}, lambda r, y: r_logit_z(r, y, 0.1)),
]
REF_IDS = [
    f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw, _ in ROW_REFERENCES
]


@pytest.mark.parametrize(("name", "kwargs", "ref"), ROW_REFERENCES, ids=REF_IDS)
@pytest.mark.parametrize(
    "case",
    [
        {"n": 7, "k": 5},
        {"n": 3, "k": 4, "dense": (2, 3)},
        {"n": 6, "k": 6, "ignore_frac": 0.4},
        {"n": 3, "k": 3, "dense": (5,), "ignore_frac": 0.5, "seed": 3},
    ],
    ids=["flat", "dense", "ignore", "dense-ignore"],
)
def test_categorical_against_naive_reference(name, kwargs, ref, case):
    x, y = make_inputs(**case)
    close(ours(name, x, y, **kwargs), naive_per_sample(ref, x, y))


@pytest.mark.parametrize(
    "name",
    ["focal", "poly1", "squentropy", "comp_sum", "gce", "sce", "nce_rce", "spherical_z", "nce"],
)
def test_class_weight_multiplies_each_element(name):
    x, y = make_inputs(8, 4, seed=5)
    w = torch.tensor([0.5, 2.0, 0.0, 1.5], dtype=torch.float64)
    ref = dict((n, r) for n, kw, r in ROW_REFERENCES if not kw)[name]
    close(ours(name, x, y, weight=w), naive_per_sample(ref, x, y, weight=w))


def test_cross_entropy_weight_reference():
    x, y = make_inputs(8, 4, seed=2)
    w = [0.5, 2.0, 0.0, 1.5]
    got = ours("cross_entropy", x, y, weight=w, label_smoothing=0.1)
    close(got, naive_per_sample(lambda r, t: r_ce(r, t, 0.1, w), x, y))


# --------------------------------------------------------------------------- binary references


def r_bce_elem(x, t, w=1.0, v=1.0):
    ls_pos = -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))
    ls_neg = -math.log1p(math.exp(x)) if x < 0 else -x - math.log1p(math.exp(-x))
    return -w * (v * t * ls_pos + (1 - t) * ls_neg)


def r_binary_focal_elem(x, t, gamma=2.0, alpha=0.25):
    """The paper's focal loss at a hard label, averaged over y ~ Bernoulli(t)."""

    def hard(y):
        p = 1 / (1 + math.exp(-x))
        pt = p if y == 1 else 1 - p
        at = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        return -at * (1 - pt) ** gamma * math.log(pt)

    return t * hard(1) + (1 - t) * hard(0)


def r_gumbel_elem(x, t):
    # log eta = -e^{-x}; log(1 - eta) = log(-expm1(-e^{-x})), in float64.
    u = math.exp(-x)
    return -(t * -u + (1 - t) * math.log(-math.expm1(-u)))


def naive_binary(elem, x, t, class_arg=None):
    n = x.shape[0]
    out = []
    for i in range(n):
        vals = []
        for idx in itertools.product(*(range(d) for d in x.shape[1:])):
            tv = float(t[i][idx])
            if tv == IGNORE:
                continue
            extra = {} if class_arg is None else class_arg(idx[0])
            vals.append(elem(float(x[i][idx]), tv, **extra))
        out.append(sum(vals) / len(vals) if vals else 0.0)
    return torch.tensor(out, dtype=torch.float64)


def binary_inputs(shape, seed=0, scale=3.0, ignore_frac=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    t = torch.randint(0, 2, shape, generator=g).double()
    if ignore_frac:
        mask = torch.rand(shape, generator=g) < ignore_frac
        mask.view(shape[0], -1)[:, 0] = False
        t = torch.where(mask, torch.full_like(t, IGNORE), t)
    return x, t


BINARY_REFERENCES = [
    ("binary_cross_entropy", {}, r_bce_elem),
    ("binary_focal", {}, r_binary_focal_elem),
    (
        "binary_focal",
        {"gamma": 1.0, "alpha": 0.6},
        lambda x, t: r_binary_focal_elem(x, t, 1.0, 0.6),
    ),
    ("gumbel", {}, r_gumbel_elem),
]


@pytest.mark.parametrize(("name", "kwargs", "ref"), BINARY_REFERENCES, ids=lambda v: str(v)[:20])
@pytest.mark.parametrize(
    ("shape", "ignore_frac"),
    [((7,), 0.0), ((5, 4), 0.0), ((3, 3, 4), 0.0), ((6, 5), 0.3)],
    ids=["1d", "2d", "dense", "ignore"],
)
def test_binary_against_naive_reference(name, kwargs, ref, shape, ignore_frac):
    x, t = binary_inputs(shape, seed=1, ignore_frac=ignore_frac)
    close(ours(name, x, t, **kwargs), naive_binary(ref, x, t))


def test_bce_weights_against_naive_reference():
    x, t = binary_inputs((5, 3, 2), seed=4)
    w, v = [0.5, 1.0, 2.0], [3.0, 1.0, 0.25]
    got = ours("binary_cross_entropy", x, t, weight=w, pos_weight=v)
    close(got, naive_binary(r_bce_elem, x, t, class_arg=lambda c: {"w": w[c], "v": v[c]}))


def test_gumbel_weight_against_naive_reference():
    x, t = binary_inputs((5, 3), seed=4)
    w = [0.5, 1.0, 2.0]
    got = ours("gumbel", x, t, weight=w)
    close(got, naive_binary(lambda a, b, c: c * r_gumbel_elem(a, b), x, t, lambda c: {"c": w[c]}))


def test_gumbel_soft_targets_and_wide_range():
    # Logits over [-30, 60] exercise both branches of log(1 - eta) and the large-u regime.
    x = torch.linspace(-30, 60, 181, dtype=torch.float64).reshape(1, -1)
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = build_loss("gumbel", reduction="none")(x.float(), t.float())
    ref = naive_binary(r_gumbel_elem, x, t)
    close(got, ref, rtol=2e-6, atol=0)
    close(ours("gumbel", x, t), ref, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- libraries


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dense", [(), (3, 2)])
def test_cross_entropy_matches_torch(label_smoothing, weighted, dense):
    x, y = make_inputs(6, 5, dense, ignore_frac=0.3, seed=7)
    w = torch.tensor([1.0, 0.5, 2.0, 0.125, 3.0], dtype=torch.float64) if weighted else None
    ref = F.cross_entropy(
        x, y, weight=w, ignore_index=IGNORE, label_smoothing=label_smoothing, reduction="none"
    )
    valid = (y != IGNORE).reshape(6, -1)
    count = valid.sum(1)
    ref = torch.where(count > 0, ref.reshape(6, -1).sum(1) / count.clamp_min(1), 0.0)
    got = ours("cross_entropy", x, y, label_smoothing=label_smoothing, weight=w)
    close(got, ref)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_soft_targets_match_torch(label_smoothing):
    x, _ = make_inputs(6, 5, (2,), seed=8)
    q = torch.softmax(torch.randn(6, 5, 2, dtype=torch.float64), dim=1)
    w = torch.tensor([1.0, 0.5, 2.0, 0.125, 3.0], dtype=torch.float64)
    ref = F.cross_entropy(x, q, weight=w, label_smoothing=label_smoothing, reduction="none")
    got = ours("cross_entropy", x, q, weight=w, label_smoothing=label_smoothing)
    close(got, ref.mean(1))


def test_cross_entropy_matches_timm():
    timm_loss = pytest.importorskip("timm.loss")
    x, y = make_inputs(9, 7, seed=9)
    ls = timm_loss.LabelSmoothingCrossEntropy(smoothing=0.1)(x, y)
    close(build_loss("cross_entropy", label_smoothing=0.1)(x, y), ls)
    q = torch.softmax(torch.randn(9, 7, dtype=torch.float64), dim=1)
    close(build_loss("cross_entropy")(x, q), timm_loss.SoftTargetCrossEntropy()(x, q))


@pytest.mark.parametrize("epsilon", [1.0, 2.0, -1.0])
def test_poly1_matches_timm(epsilon):
    timm_loss = pytest.importorskip("timm.loss")
    x, y = make_inputs(9, 7, seed=10)
    ref = timm_loss.PolyCrossEntropy(epsilon=epsilon, reduction="none")(x, y)
    close(ours("poly1", x, y, epsilon=epsilon), ref.double(), rtol=1e-6, atol=1e-6)
    q = torch.softmax(torch.randn(9, 7, dtype=torch.float64), dim=1)
    ref_soft = timm_loss.PolyCrossEntropy(epsilon=epsilon, reduction="none")(x, q)
    close(ours("poly1", x.float(), q.float(), epsilon=epsilon), ref_soft, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dense", [(), (4,)])
def test_focal_matches_kornia(gamma, dense):
    kornia = pytest.importorskip("kornia")
    x, y = make_inputs(5, 4, dense, seed=11)
    ref = kornia.losses.focal_loss(x, y, alpha=None, gamma=gamma, reduction="none").sum(1)
    close(ours("focal", x, y, gamma=gamma), ref.reshape(5, -1).mean(1))


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, 0.5), (1.5, 0.9)])
def test_binary_focal_matches_torchvision(gamma, alpha):
    ops = pytest.importorskip("torchvision.ops")
    x, t = binary_inputs((6, 3, 2), seed=12)
    ref = ops.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="none")
    close(ours("binary_focal", x, t, gamma=gamma, alpha=alpha), ref.reshape(6, -1).mean(1))


@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, 0.25), (0.0, 0.5), (1.5, None), (0.0, None)])
def test_binary_focal_soft_targets_are_the_expectation_over_labels(gamma, alpha):
    """Soft targets: the focal loss averaged over y ~ Bernoulli(t), as kornia defines it (the
    float64 loop and kornia agree); torchvision's soft-target form differs (shown)."""
    kornia = pytest.importorskip("kornia")
    ops = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(21)
    x = torch.randn(6, 3, 2, generator=g, dtype=torch.float64) * 3
    t = torch.rand(6, 3, 2, generator=g, dtype=torch.float64)
    got = ours("binary_focal", x, t, gamma=gamma, alpha=alpha)
    loop = naive_binary(lambda a, b: r_binary_focal_elem(a, b, gamma, alpha), x, t)
    close(got, loop)
    ref = kornia.losses.binary_focal_loss_with_logits(
        x, t, alpha=alpha, gamma=gamma, reduction="none"
    )
    close(got, ref.reshape(6, -1).mean(1))
    # gradients agree with kornia's too
    xg = x.clone().requires_grad_(True)
    xk = x.clone().requires_grad_(True)
    ours("binary_focal", xg, t, gamma=gamma, alpha=alpha).sum().backward()
    kornia.losses.binary_focal_loss_with_logits(
        xk, t, alpha=alpha, gamma=gamma, reduction="none"
    ).reshape(6, -1).mean(1).sum().backward()
    close(xg.grad, xk.grad)
    if gamma > 0:
        tv = ops.sigmoid_focal_loss(x, t, alpha=-1 if alpha is None else alpha, gamma=gamma)
        assert not torch.allclose(got, tv.reshape(6, -1).mean(1))


def test_bce_matches_torch():
    x, t = binary_inputs((6, 3, 2), seed=13)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    v = torch.tensor([3.0, 1.0, 0.25], dtype=torch.float64)
    ref = F.binary_cross_entropy_with_logits(
        x, t, weight=w[:, None], pos_weight=v[:, None], reduction="none"
    )
    close(ours("binary_cross_entropy", x, t, weight=w, pos_weight=v), ref.reshape(6, -1).mean(1))
    loss = build_loss("binary_cross_entropy")
    close(loss(x, t), F.binary_cross_entropy_with_logits(x, t))
    # the fused reductions on the input's own layout, with the per-class vectors broadcast there
    weighted = dict(weight=w, pos_weight=v)
    close(build_loss("binary_cross_entropy", **weighted)(x, t), ref.mean())
    close(build_loss("binary_cross_entropy", reduction="sum", **weighted)(x, t), ref.sum() / 6)


# --------------------------------------------------------------------------- identities


CE_IDENTITIES = [
    ("focal", {"gamma": 0.0}),
    ("comp_sum", {"tau": 1.0}),
    ("poly1", {"epsilon": 0.0}),
    ("sce", {"alpha": 1.0, "beta": 0.0}),
    ("poly1_focal", {"gamma": 0.0, "epsilon": 0.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), CE_IDENTITIES, ids=[n for n, _ in CE_IDENTITIES])
def test_equals_cross_entropy(name, kwargs):
    x, y = make_inputs(6, 5, (2,), seed=20, ignore_frac=0.2)
    close(ours(name, x, y, **kwargs), ours("cross_entropy", x, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("gce", {"q": 1.0}), ("mae", {})),
        (("comp_sum", {"tau": 2.0}), ("mae", {})),
        (("comp_sum", {"tau": 0.0}), ("sum_exp", {})),
        (("comp_sum", {"tau": 1.7}), ("gce", {"q": 0.7})),
        (("poly1_focal", {"epsilon": 0.0}), ("focal", {})),
        (("sce", {"alpha": 0.0, "beta": 1.0}), ("rce", {})),
        (("nce_rce", {"beta": 0.0}), ("nce", {})),
        (("nce_rce", {"alpha": 0.0}), ("rce", {})),
    ],
    ids=lambda p: f"{p[0]}{p[1]}",
)
def test_pairwise_identities(a, b):
    x, y = make_inputs(6, 5, seed=21)
    close(ours(a[0], x, y, **a[1]), ours(b[0], x, y, **b[1]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("delta", [1e-7, -1e-7])
def test_comp_sum_is_continuous_at_tau_one(delta):
    x, y = make_inputs(6, 5, seed=22)
    ce = ours("cross_entropy", x, y)
    close(ours("comp_sum", x, y, tau=1.0 + delta), ce, rtol=1e-5, atol=0)


def all_labels(name, x, **kwargs):
    k = x.shape[1]
    return torch.stack([ours(name, x, torch.full((x.shape[0],), j), **kwargs) for j in range(k)])


@pytest.mark.parametrize(
    ("name", "total"),
    [("nce", lambda k: 1.0), ("mae", lambda k: k - 1.0), ("rce", lambda k: 4.0 * (k - 1))],
)
def test_symmetric_losses_sum_to_a_constant_over_labels(name, total):
    # The noise-robustness condition: sum over all K labels does not depend on the logits.
    for seed in range(3):
        x, _ = make_inputs(5, 6, seed=seed, scale=2.0 + seed)
        close(all_labels(name, x).sum(0), torch.full((5,), total(6), dtype=torch.float64))


def test_cross_entropy_is_not_symmetric():
    x, _ = make_inputs(5, 6, seed=1)
    s = all_labels("cross_entropy", x).sum(0)
    assert s.max() - s.min() > 1e-3


def test_focal_alpha_per_class_and_label_smoothing_mean():
    x, y = make_inputs(8, 3, seed=23)
    alpha = [0.25, 0.5, 0.375]
    got = ours("focal", x, y, alpha=alpha)
    ref = naive_per_sample(lambda r, t: alpha[t] * r_focal(r, t), x, y)
    close(got, ref)


def test_spherical_z_is_shift_and_scale_invariant():
    x, y = make_inputs(6, 5, seed=24)
    base = ours("spherical_z", x, y)
    close(ours("spherical_z", 7.5 * x - 3.0, y), base, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ours("cross_entropy", 7.5 * x, y), ours("cross_entropy", x, y))


def test_spherical_z_constant_logits_are_finite():
    x = torch.ones(3, 4, requires_grad=True)
    loss = build_loss("spherical_z")(x, torch.tensor([0, 1, 2]))
    loss.backward()
    close(loss.detach(), torch.tensor(math.log1p(math.exp(3.0))), rtol=1e-6, atol=0)  # z = 0
    assert torch.isfinite(x.grad).all()


def test_logit_z_regularizer_ignores_target_values_but_not_ignore_index():
    x, y = make_inputs(6, 5, (3,), seed=25)
    a = ours("logit_z_regularizer", x, y)
    close(ours("logit_z_regularizer", x, (y + 1) % 5), a, rtol=0, atol=0)
    close(ours("logit_z_regularizer", x, torch.softmax(x, 1)), a)
    y2 = y.clone()
    y2[0, 0] = IGNORE
    assert not torch.allclose(ours("logit_z_regularizer", x, y2)[0], a[0])


def test_squentropy_exceeds_cross_entropy_by_mean_square_of_other_logits():
    x, y = make_inputs(6, 5, seed=26)
    diff = ours("squentropy", x, y) - ours("cross_entropy", x, y)
    sq = (x**2).sum(1) - x.gather(1, y[:, None]).squeeze(1) ** 2
    close(diff, sq / 4)


@pytest.mark.parametrize("name", ["cross_entropy", "poly1", "gce", "gumbel", "nce_rce"])
def test_ignore_equals_slicing(name):
    if name == "gumbel":
        x, t = binary_inputs((4, 6), seed=27)
        t2 = t.clone()
        t2[:, 3:] = IGNORE
        close(ours(name, x, t2), ours(name, x[:, :3], t[:, :3]))
        return
    x, y = make_inputs(4, 5, (6,), seed=27)
    y2 = y.clone()
    y2[:, 3:] = IGNORE
    close(ours(name, x, y2), ours(name, x[..., :3], y[:, :3]))


def test_fully_ignored_sample_is_zero_and_left_out_of_the_mean():
    x, y = make_inputs(4, 5, (3,), seed=28)
    y[1] = IGNORE
    for name in ("poly1", "comp_sum", "spherical_z"):
        none = ours(name, x, y)
        assert none[1] == 0
        close(build_loss(name, ignore_index=IGNORE)(x, y), none.sum() / 3)


# --------------------------------------------------------------------------- numerics


CLASSIFICATION = list_losses("classification")


def _extreme(name, dtype):
    if build_loss(name).target_kind == "multilabel":
        x = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 50.0]], dtype=dtype)
        t = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=dtype)
        return x, t
    x = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0]], dtype=dtype)
    return x, torch.tensor([1, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_saturated_logits_give_finite_values_and_gradients(name, dtype):
    x, t = _extreme(name, dtype)
    x.requires_grad_(True)
    loss = build_loss(name)(x, t)
    loss.backward()
    assert torch.isfinite(loss), loss
    assert torch.isfinite(x.grad).all(), x.grad


def test_saturated_values_are_right_where_representable():
    x = torch.tensor([[100.0, -100.0]], dtype=torch.float64)
    y = torch.tensor([1])
    close(ours("cross_entropy", x, y), torch.tensor([200.0], dtype=torch.float64))
    close(ours("mae", x.float(), y), torch.tensor([1.0]))
    close(ours("poly1", x.float(), torch.tensor([0])), torch.tensor([0.0]), atol=1e-30, rtol=0)
    close(ours("gce", x.float(), y), torch.tensor([1 / 0.7]))
    # sum_exp beyond the cap keeps growing (tangent continuation) rather than saturating.
    a = ours("sum_exp", torch.tensor([[0.0, 50.0]]), torch.tensor([0]))
    b = ours("sum_exp", torch.tensor([[0.0, 60.0]]), torch.tensor([0]))
    assert torch.isfinite(b) and b > a > math.exp(39)


def test_sum_exp_exact_below_the_cap():
    x = torch.tensor([[0.0, 30.0, 1.0]], dtype=torch.float64)
    ref = math.exp(30.0) + math.exp(1.0)
    close(ours("sum_exp", x, torch.tensor([0])), torch.tensor([ref], dtype=torch.float64))


@pytest.mark.parametrize("name", ["poly1", "comp_sum", "spherical_z", "gumbel", "nce_rce"])
def test_low_precision_is_computed_in_float32(name):
    if name == "gumbel":
        x, t = binary_inputs((6, 4), seed=29)
    else:
        x, t = make_inputs(6, 4, seed=29)
    xb = x.to(torch.bfloat16)
    got = ours(name, xb, t.to(torch.bfloat16) if t.is_floating_point() else t)
    assert got.dtype == torch.float32
    close(got, ours(name, xb.double(), t), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- arguments


BAD_ARGS = [
    ("poly1", {"epsilon": -1.5}, ValueError, "epsilon"),
    ("poly1", {"epsilon": "1"}, TypeError, "epsilon"),
    ("poly1_focal", {"epsilon": -2.0}, ValueError, "epsilon"),
    ("poly1_focal", {"gamma": -1.0}, ValueError, "gamma"),
    ("comp_sum", {"tau": -0.1}, ValueError, "tau"),
    ("comp_sum", {"tau": float("nan")}, ValueError, "tau"),
    ("comp_sum", {"tau": None}, TypeError, "tau"),
    ("gce", {"q": 0.0}, ValueError, "q"),
    ("gce", {"q": 1.5}, ValueError, "q"),
    ("rce", {"A": 0.0}, ValueError, "A"),
    ("sce", {"alpha": -1.0}, ValueError, "alpha"),
    ("sce", {"beta": -1.0}, ValueError, "beta"),
    ("nce_rce", {"A": 4.0}, ValueError, "A"),
    ("spherical_z", {"a": 0.0}, ValueError, "a"),
    ("spherical_z", {"b": float("inf")}, ValueError, "b"),
    ("spherical_z", {"eps": -1.0}, ValueError, "eps"),
    ("logit_z_regularizer", {"kappa": -1e-4}, ValueError, "kappa"),
    ("gumbel", {"weight": [1.0, -1.0]}, ValueError, "weight"),
    ("squentropy", {"reduction": "avg"}, ValueError, "reduction"),
]


@pytest.mark.parametrize(("name", "kwargs", "exc", "arg"), BAD_ARGS, ids=lambda v: str(v)[:24])
def test_bad_hyperparameters_name_the_argument(name, kwargs, exc, arg):
    with pytest.raises(exc, match=f"`{arg}`"):
        build_loss(name, **kwargs)


@pytest.mark.parametrize("name", ["squentropy", "nce", "rce", "spherical_z", "poly1", "comp_sum"])
def test_one_class_input_is_rejected(name):
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_loss(name)(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", ["squentropy", "comp_sum", "rce", "spherical_z", "poly1_focal"])
def test_soft_targets_are_rejected_where_unsupported(name):
    with pytest.raises(TypeError, match="soft targets"):
        build_loss(name)(torch.randn(3, 4), torch.softmax(torch.randn(3, 4), 1))


def test_wrong_weight_length_is_reported():
    with pytest.raises(ValueError, match="`weight`"):
        build_loss("poly1", weight=[1.0, 2.0])(torch.randn(3, 4), torch.tensor([0, 1, 2]))
