"""Imbalance / long-tail losses: naive float64 references, established implementations,
identities, state and errors.

The references below are written from the papers' formulas with explicit Python loops over
samples and classes (``math`` on Python floats), independent of the library code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses import LossMixin, build_loss
from lightning_losses.losses import (
    AsymmetricLoss,
    BalancedSoftmaxLoss,
    BinaryFocalLoss,
    ClassBalancedBCELoss,
    ClassBalancedLoss,
    DistributionBalancedLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_balanced_weights,
    logit_adjust,
)

COUNTS = [500.0, 120.0, 40.0, 9.0, 2.0]
K = len(COUNTS)


def _logits(n=6, k=K, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * scale


def _labels(n=6, k=K, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (n,), generator=g)


def _multihot(n=6, k=K, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, k), generator=g).to(torch.float64)


# -- naive references ----------------------------------------------------------------------------


def ref_cb_weights(counts, beta):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    s = sum(w)
    return [wi * len(counts) / s for wi in w]


def ref_log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def ref_ce(z, y, class_weight=None, shift=None, scale=1.0, margin=None):
    out = []
    for i in range(len(y)):
        row = [float(v) for v in z[i]]
        if shift is not None:
            row = [row[k] + shift[k] for k in range(len(row))]
        if margin is not None:
            row[y[i]] -= margin[y[i]]
        row = [scale * v for v in row]
        loss = -ref_log_softmax(row)[y[i]]
        out.append(loss * (class_weight[y[i]] if class_weight else 1.0))
    return torch.tensor(out, dtype=torch.float64)


def ref_focal(z, y, gamma, class_weight):
    out = []
    for i in range(len(y)):
        p = math.exp(ref_log_softmax([float(v) for v in z[i]])[y[i]])
        out.append(-class_weight[y[i]] * (1 - p) ** gamma * math.log(p))
    return torch.tensor(out, dtype=torch.float64)


def sig(v):
    return 1 / (1 + math.exp(-v))


def ref_weighted_binary(x, t, class_weight, gamma=0.0, alpha=None):
    out = []
    for i in range(x.shape[0]):
        total = 0.0
        for k in range(x.shape[1]):
            p, y = sig(float(x[i, k])), float(t[i, k])
            pt = p if y == 1 else 1 - p
            term = -((1 - pt) ** gamma) * math.log(pt)
            if alpha is not None:
                term *= alpha if y == 1 else 1 - alpha
            total += class_weight[k] * term
        out.append(total / x.shape[1])
    return torch.tensor(out, dtype=torch.float64)


def ref_asl(x, t, gamma_pos, gamma_neg, m):
    out = []
    for i in range(x.shape[0]):
        total = 0.0
        for k in range(x.shape[1]):
            p, y = sig(float(x[i, k])), float(t[i, k])
            pm = max(p - m, 0.0)
            total -= y * (1 - p) ** gamma_pos * math.log(p)
            total -= (1 - y) * pm**gamma_neg * math.log(1 - pm)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def ref_db(x, t, counts, num_samples, lam, kappa, alpha, beta, mu):
    kk = len(counts)
    out = []
    for i in range(x.shape[0]):
        positives = [k for k in range(kk) if t[i, k] == 1]
        p_inst = sum(1 / kk / counts[k] for k in positives)  # P^I(x)
        total = 0.0
        for k in range(kk):
            p_class = 1 / kk / counts[k]  # P^C_k
            r_hat = alpha + (sig(beta * (p_class / p_inst - mu)) if positives else 1.0)
            prior = counts[k] / num_samples
            b_hat = -math.log(1 / prior - 1)
            nu = -kappa * b_hat / lam
            z = float(x[i, k])
            if t[i, k] == 1:
                total += r_hat * math.log(1 + math.exp(-(z - nu)))
            else:
                total += r_hat / lam * math.log(1 + math.exp(lam * (z - nu)))
        out.append(total / kk)
    return torch.tensor(out, dtype=torch.float64)


# -- class-balanced ------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_class_balanced_weights_match_formula(beta):
    w = class_balanced_weights(COUNTS, beta)
    torch.testing.assert_close(w, torch.tensor(ref_cb_weights(COUNTS, beta), dtype=torch.float64))
    assert w.sum().item() == pytest.approx(K)
    assert torch.all(w[1:] > w[:-1])  # rarer classes weigh more


def test_class_balanced_weight_limits():
    torch.testing.assert_close(
        class_balanced_weights(COUNTS, 0.0), torch.ones(K, dtype=torch.float64)
    )
    torch.testing.assert_close(
        class_balanced_weights(COUNTS, 1e-12), torch.ones(K, dtype=torch.float64)
    )
    inv = torch.tensor([1 / n for n in COUNTS], dtype=torch.float64)
    near_one = class_balanced_weights(COUNTS, 1 - 1e-9)
    torch.testing.assert_close(near_one, inv * K / inv.sum(), rtol=1e-5, atol=0)


def test_zero_counts_are_finite_and_equal_the_smallest_nonzero_count():
    w = class_balanced_weights([100.0, 0.0, 3.0], 0.999)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, class_balanced_weights([100.0, 3.0, 3.0], 0.999))
    for name in ("class_balanced", "ldam", "logit_adjusted", "balanced_softmax"):
        loss = build_loss(name, class_counts=[10.0, 0.0, 3.0, 7.0, 1.0])
        x = (torch.sign(_logits()) * 100).requires_grad_(True)
        ctx = {"epoch": 0} if name == "ldam" else {}
        out = loss(x, _labels(), **ctx)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("beta", [0.99, 0.9999])
def test_class_balanced_ce_matches_naive_loop_and_torch(beta):
    x, y = _logits(), _labels()
    loss = ClassBalancedLoss(COUNTS, beta=beta, reduction="none")
    w = ref_cb_weights(COUNTS, beta)
    out = loss(x, y)
    torch.testing.assert_close(out, ref_ce(x, y.tolist(), class_weight=w))
    # torch's weighted "mean" divides by sum(w[y]); ours by N, so compare per sample
    wt = torch.tensor(w, dtype=torch.float64)
    torch.testing.assert_close(out, F.cross_entropy(x, y, weight=wt, reduction="none"))
    mean = ClassBalancedLoss(COUNTS, beta=beta)(x, y)
    torch.testing.assert_close(mean, out.sum() / len(y))


def test_class_balanced_focal_base_matches_naive_loop():
    x, y = _logits(), _labels()
    loss = ClassBalancedLoss(
        COUNTS, beta=0.999, base="focal", base_kwargs={"gamma": 1.5}, reduction="none"
    )
    ref = ref_focal(x, y.tolist(), 1.5, ref_cb_weights(COUNTS, 0.999))
    torch.testing.assert_close(loss(x, y), ref)


def test_class_balanced_beta_zero_is_the_plain_base():
    x, y = _logits(), _labels()
    cb = ClassBalancedLoss(COUNTS, beta=0.0, reduction="none")
    torch.testing.assert_close(cb(x, y), F.cross_entropy(x, y, reduction="none"))


@pytest.mark.parametrize(
    ("base", "base_kwargs", "gamma", "alpha"),
    [
        ("binary_cross_entropy", None, 0.0, None),
        ("binary_focal", {"alpha": None}, 2.0, None),
        ("binary_focal", {"gamma": 1.0, "alpha": 0.25}, 1.0, 0.25),
    ],
)
def test_class_balanced_bce_matches_naive_loop(base, base_kwargs, gamma, alpha):
    x, t = _logits(), _multihot()
    loss = ClassBalancedBCELoss(
        COUNTS, beta=0.999, base=base, base_kwargs=base_kwargs, reduction="none"
    )
    ref = ref_weighted_binary(x, t, ref_cb_weights(COUNTS, 0.999), gamma=gamma, alpha=alpha)
    torch.testing.assert_close(loss(x, t), ref)


def test_binary_focal_weight_multiplies_each_class_column():
    x, t = _logits(), _multihot()
    w = [0.5, 2.0, 1.0, 3.0, 0.0]
    out = BinaryFocalLoss(gamma=2.0, alpha=None, weight=w, reduction="none")(x, t)
    torch.testing.assert_close(out, ref_weighted_binary(x, t, w, gamma=2.0))
    with pytest.raises(ValueError, match="per-class vector"):
        BinaryFocalLoss(weight=[1.0, 2.0])(x, t)


def test_class_balanced_weight_buffer_follows_new_counts():
    loss = ClassBalancedLoss(COUNTS)
    loss.set_class_counts([1.0, 1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(loss.base_loss.weight, torch.ones(K))


# -- LDAM + DRW ----------------------------------------------------------------------------------


def ref_ldam_margins(counts, max_margin):
    inv = [n**-0.25 for n in counts]
    c = max_margin / max(inv)
    return [c * v for v in inv]


def test_ldam_matches_naive_loop():
    x, y = _logits(scale=1.0), _labels()
    loss = LDAMLoss(COUNTS, max_margin=0.5, scale=30.0, reduction="none")
    margin = ref_ldam_margins(COUNTS, 0.5)
    assert max(margin) == pytest.approx(0.5)
    ref = ref_ce(x, y.tolist(), scale=30.0, margin=margin)
    torch.testing.assert_close(loss(x, y, epoch=0), ref)


def test_ldam_drw_switches_on_at_drw_epoch():
    x, y = _logits(scale=1.0), _labels()
    plain = LDAMLoss(COUNTS, reduction="none")
    drw = LDAMLoss(COUNTS, drw_epoch=160, drw_beta=0.9999, reduction="none")
    torch.testing.assert_close(drw(x, y, epoch=0), plain(x, y, epoch=0))
    torch.testing.assert_close(drw(x, y, epoch=159), plain(x, y, epoch=159))
    w = ref_cb_weights(COUNTS, 0.9999)
    weighted = ref_ce(
        x, y.tolist(), class_weight=w, scale=30.0, margin=ref_ldam_margins(COUNTS, 0.5)
    )
    torch.testing.assert_close(drw(x, y, epoch=160), weighted)
    torch.testing.assert_close(drw(x, y, epoch=199), weighted)
    assert not torch.allclose(drw(x, y, epoch=160), plain(x, y, epoch=160))
    assert drw.drw_active(160) and not drw.drw_active(159) and not plain.drw_active(10**6)


def test_ldam_needs_an_int_epoch():
    loss = LDAMLoss(COUNTS)
    with pytest.raises(TypeError, match="epoch"):
        loss(_logits(), _labels())
    with pytest.raises(TypeError, match="epoch"):
        loss(_logits(), _labels(), epoch=1.5)


# -- logit adjustment / balanced softmax ---------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_matches_naive_loop(tau):
    x, y = _logits(), _labels()
    total = sum(COUNTS)
    shift = [tau * math.log(n / total) for n in COUNTS]
    out = LogitAdjustedLoss(COUNTS, tau=tau, reduction="none")(x, y)
    torch.testing.assert_close(out, ref_ce(x, y.tolist(), shift=shift))
    if tau == 0.0:
        torch.testing.assert_close(out, F.cross_entropy(x, y, reduction="none"))


def test_balanced_softmax_matches_naive_loop_and_equals_logit_adjusted_tau_1():
    x, y = _logits(), _labels()
    bs = BalancedSoftmaxLoss(COUNTS, reduction="none")(x, y)
    torch.testing.assert_close(bs, ref_ce(x, y.tolist(), shift=[math.log(n) for n in COUNTS]))
    la = LogitAdjustedLoss(COUNTS, tau=1.0, reduction="none")(x, y)
    torch.testing.assert_close(bs, la)
    la2 = LogitAdjustedLoss(COUNTS, tau=2.0, reduction="none")(x, y)
    assert not torch.allclose(bs, la2)


def test_post_hoc_logit_adjust():
    x = _logits()
    total = sum(COUNTS)
    out = logit_adjust(x, COUNTS, tau=1.0)
    for i in range(x.shape[0]):
        for k in range(K):
            assert out[i, k].item() == pytest.approx(x[i, k].item() - math.log(COUNTS[k] / total))
    # with equal logits the prediction is the rarest class
    assert logit_adjust(torch.zeros(1, K), COUNTS).argmax(1).item() == K - 1
    dense = logit_adjust(torch.zeros(2, K, 3), COUNTS)
    assert dense.shape == (2, K, 3) and torch.equal(dense[:, :, 0], dense[:, :, 2])
    with pytest.raises(ValueError, match="class_counts"):
        logit_adjust(x, COUNTS[:3])
    with pytest.raises(ValueError, match="tau"):
        logit_adjust(x, COUNTS, tau=-1.0)


# -- asymmetric loss -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gamma_pos", "gamma_neg", "clip"), [(0, 4, 0.05), (1, 4, 0.05), (0, 2, 0.0), (2, 0, 0.2)]
)
def test_asl_matches_naive_loop(gamma_pos, gamma_neg, clip):
    x, t = _logits(scale=2.0), _multihot()
    out = AsymmetricLoss(gamma_pos, gamma_neg, clip, reduction="none")(x, t)
    torch.testing.assert_close(out, ref_asl(x, t, gamma_pos, gamma_neg, clip))


@pytest.mark.parametrize("gamma_pos", [0.0, 1.0])
def test_asl_matches_timm(gamma_pos):
    timm_loss = pytest.importorskip("timm.loss").AsymmetricLossMultiLabel
    # timm computes in float32 with 1 - sigmoid(x) (cancellation: relative error ~ 6e-8 /
    # (1 - p), about 2.5e-5 at |x| = 6) and clamps p and 1 - p_m at eps = 1e-8 before the log,
    # which is inactive for |x| <= 6 (sigmoid(-6) ~ 2.5e-3). Hence rtol 1e-4 on logits in
    # [-6, 6].
    x, t = _logits(n=16, scale=2.0).clamp(-6, 6), _multihot(n=16)
    ref = timm_loss(gamma_neg=4, gamma_pos=gamma_pos, clip=0.05, reduction="none")(x, t)
    ours = AsymmetricLoss(gamma_pos, 4.0, 0.05, reduction="none")(x, t)
    torch.testing.assert_close(ours, ref.double().sum(1), rtol=1e-4, atol=1e-6)
    timm_sum = timm_loss(gamma_neg=4, gamma_pos=gamma_pos, clip=0.05, reduction="sum")(x, t)
    ours_sum = AsymmetricLoss(gamma_pos, 4.0, 0.05, reduction="sum")(x, t)
    torch.testing.assert_close(ours_sum, timm_sum.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_asl_is_finite_in_low_precision_at_saturated_logits(dtype):
    x = torch.tensor([[100.0, -100.0, 30.0, -30.0, 0.0]] * 2, dtype=dtype, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0]], dtype=dtype)
    out = AsymmetricLoss(reduction="none")(x, t)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # the logits are exact in every dtype and the loss is computed in float32 from them
    ref = ref_asl(x.detach().double(), t.double(), 0.0, 4.0, 0.05)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    # row 1: a wrong positive at -100 costs 100, a wrong negative at +100 costs
    # -log(m) (1 - m)^4, a positive at 0 costs log 2; the rest is ~0
    expected = 100 - math.log(0.05) * 0.95**4 + math.log(2)
    assert ref[1].item() == pytest.approx(expected, rel=1e-9)


def test_asl_ignores_easy_negatives_below_the_clip():
    x = torch.tensor([[-4.0, -3.5]], requires_grad=True)  # p < 0.05
    out = AsymmetricLoss(reduction="none")(x, torch.zeros(1, 2))
    out.sum().backward()
    assert out.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# -- distribution-balanced loss ------------------------------------------------------------------
#
# Checked against the authors' code, wutong16/DistributionBalancedLoss,
# mllt/models/losses/resample_loss.py (ResampleLoss, commit 2567764):
#   rebalance_weight: repeat_rate = sum(labels * 1/n), pos_weight = (1/n) / repeat_rate for every
#     class, weight = sigmoid(map_beta * (pos_weight - map_gamma)) + map_alpha (positives and
#     negatives alike); a sample with no positives gets weight 1 + alpha (repeat_rate = 0).
#   logit_reg: init_bias = -log(train_num / class_freq - 1) * init_bias / neg_scale is added to
#     every logit; negatives' logits are multiplied by neg_scale and their weight divided by it.
#   the BCE is then averaged over all elements ("mean"), i.e. a mean over classes per sample.
#   configs/voc/LT_resnet50_pfc_DB.py: init_bias=0.05, neg_scale=5, map alpha=0.1, beta=10,
#     gamma(mu)=0.3; configs/coco/...: neg_scale=2, mu=0.2. Both configs also add a focal factor
#     (DB-Focal), which is not part of the plain loss here.


def official_db(x, t, counts, train_num, init_bias=0.05, neg_scale=5.0, a=0.1, b=10.0, g=0.3):
    """The authors' ResampleLoss computation, transcribed step by step (float64)."""
    freq = torch.tensor(counts, dtype=torch.float64)
    bias = -torch.log(train_num / freq - 1) * init_bias / neg_scale
    freq_inv = 1 / freq
    repeat_rate = (t * freq_inv).sum(1, keepdim=True)
    weight = torch.sigmoid(b * (freq_inv[None] / repeat_rate - g)) + a
    logits = x + bias
    logits = logits * (1 - t) * neg_scale + logits * t
    weight = weight / neg_scale * (1 - t) + weight * t
    return F.binary_cross_entropy_with_logits(logits, t, weight, reduction="none").mean(1)


def test_distribution_balanced_matches_naive_loop():
    x, t = _logits(scale=2.0), _multihot()
    t[3] = 0.0  # a sample without positive labels
    loss = DistributionBalancedLoss(COUNTS, num_samples=800, reduction="none")
    ref = ref_db(x, t, COUNTS, 800, lam=5.0, kappa=0.05, alpha=0.1, beta=10.0, mu=0.3)
    torch.testing.assert_close(loss(x, t), ref)


def test_distribution_balanced_matches_the_authors_code():
    x, t = _logits(n=10, scale=2.0), _multihot(n=10)
    t[0] = 0.0
    for lam, mu in ((5.0, 0.3), (2.0, 0.2)):
        loss = DistributionBalancedLoss(
            COUNTS, num_samples=800, neg_scale=lam, mu=mu, reduction="none"
        )
        ref = official_db(x, t, COUNTS, 800.0, neg_scale=lam, g=mu)
        torch.testing.assert_close(loss(x, t), ref)


def test_distribution_balanced_sample_without_positives_gets_weight_one_plus_alpha():
    x = _logits(n=1)
    t = torch.zeros(1, K, dtype=torch.float64)
    loss = DistributionBalancedLoss(COUNTS, num_samples=800, alpha=0.1, reduction="none")
    unit = DistributionBalancedLoss(COUNTS, num_samples=800, reduction="none")
    # alpha + sigmoid(+inf) = 1.1: the same as the weight-1 loss scaled by 1.1
    shift = unit.logit_shift.double()
    plain = (F.softplus(5.0 * (x + shift)) / 5.0).mean(1)
    torch.testing.assert_close(loss(x, t), 1.1 * plain)


def test_distribution_balanced_defaults_and_num_samples():
    loss = DistributionBalancedLoss(COUNTS)
    assert (loss.neg_scale, loss.init_bias_scale, loss.alpha, loss.beta, loss.mu) == (
        5.0,
        0.05,
        0.1,
        10.0,
        0.3,
    )
    x, t = _logits(), _multihot()
    total = sum(COUNTS)
    ref = ref_db(x, t, COUNTS, total, lam=5.0, kappa=0.05, alpha=0.1, beta=10.0, mu=0.3)
    torch.testing.assert_close(DistributionBalancedLoss(COUNTS, reduction="none")(x, t), ref)
    with pytest.raises(ValueError, match="num_samples"):
        DistributionBalancedLoss(COUNTS, num_samples=100)
    # a class positive in every sample keeps a finite prior logit
    full = DistributionBalancedLoss([10.0, 3.0], num_samples=10)
    assert torch.isfinite(full.logit_shift).all()


def test_distribution_balanced_refuses_dense_input():
    with pytest.raises(ValueError, match="input"):
        DistributionBalancedLoss(COUNTS)(torch.zeros(2, K, 3), torch.zeros(2, K, 3))


# -- every loss: saturated logits, state, errors ------------------------------------------------

COUNTS_LOSSES = [
    "class_balanced",
    "class_balanced_bce",
    "ldam",
    "logit_adjusted",
    "balanced_softmax",
    "distribution_balanced",
]
ALL = [*COUNTS_LOSSES, "asl"]
MULTILABEL = {"class_balanced_bce", "distribution_balanced", "asl"}


def _call(loss, name, x, target):
    return loss(x, target, epoch=200) if name == "ldam" else loss(x, target)


def _target(name, n=6):
    return _multihot(n) if name in MULTILABEL else _labels(n)


def _build(name, **kwargs):
    if name in COUNTS_LOSSES:
        kwargs.setdefault("class_counts", COUNTS)
    if name == "ldam":
        kwargs.setdefault("drw_epoch", 100)
    return build_loss(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_values_and_gradients_at_100(name, dtype):
    x = (torch.sign(_logits()) * 100).to(dtype).requires_grad_(True)
    out = _call(_build(name), name, x, _target(name).to(dtype) if name in MULTILABEL else _labels())
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", COUNTS_LOSSES)
def test_counts_survive_state_dict_and_dtype_moves(name):
    x, target = _logits(), _target(name)
    loss = _build(name, reduction="none")
    fresh = build_loss(name, **({"drw_epoch": 100} if name == "ldam" else {}), reduction="none")
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh.class_counts, torch.tensor(COUNTS))
    torch.testing.assert_close(_call(fresh, name, x, target), _call(loss, name, x, target))
    moved = fresh.to(torch.float64)
    assert moved.class_counts.dtype == torch.float64
    torch.testing.assert_close(_call(moved, name, x, target), _call(loss, name, x, target))


@pytest.mark.parametrize("name", COUNTS_LOSSES)
def test_loading_other_counts_of_the_same_length_updates_derived_values(name):
    x, target = _logits(), _target(name)
    other = [3.0, 50.0, 7.0, 900.0, 20.0]
    source = _build(name, class_counts=other, reduction="none")
    loss = _build(name, reduction="none")
    before = _call(loss, name, x, target)
    loss.load_state_dict(source.state_dict())
    after = _call(loss, name, x, target)
    torch.testing.assert_close(after, _call(source, name, x, target))
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name", COUNTS_LOSSES)
def test_count_errors(name):
    x, target = _logits(), _target(name)
    with pytest.raises(ValueError, match="class counts"):
        _call(build_loss(name), name, x, target)
    with pytest.raises(ValueError, match=r"class_counts.*negative"):
        build_loss(name, class_counts=[5.0, -1.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"class_counts.*3 entries.*5 classes"):
        _call(build_loss(name, class_counts=[5.0, 2.0, 1.0]), name, x, target)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("class_balanced", {"beta": 1.0}, "beta"),
        ("class_balanced", {"beta": -0.1}, "beta"),
        ("class_balanced", {"base": "binary_cross_entropy"}, "base"),
        ("class_balanced", {"base_kwargs": {"weight": [1.0] * K}}, "base_kwargs"),
        ("class_balanced_bce", {"base": "focal"}, "base"),
        ("ldam", {"max_margin": 0.0}, "max_margin"),
        ("ldam", {"scale": -1.0}, "scale"),
        ("ldam", {"drw_epoch": -1}, "drw_epoch"),
        ("ldam", {"drw_beta": 1.5}, "drw_beta"),
        ("logit_adjusted", {"tau": -0.5}, "tau"),
        ("asl", {"gamma_neg": -1.0}, "gamma_neg"),
        ("asl", {"gamma_pos": -1.0}, "gamma_pos"),
        ("asl", {"clip": 1.0}, "clip"),
        ("distribution_balanced", {"neg_scale": 0.0}, "neg_scale"),
        ("distribution_balanced", {"init_bias_scale": -0.1}, "init_bias_scale"),
        ("distribution_balanced", {"beta": 0.0}, "beta"),
        ("distribution_balanced", {"alpha": -1.0}, "alpha"),
        ("distribution_balanced", {"num_samples": 0}, "num_samples"),
    ],
)
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        build_loss(name, **kwargs)


def test_ldam_drw_epoch_type():
    with pytest.raises(TypeError, match="drw_epoch"):
        LDAMLoss(drw_epoch=1.5)


# -- with LossMixin ------------------------------------------------------------------------------


class _Module(LossMixin, nn.Module):
    class_counts = COUNTS

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion


def test_loss_mixin_gives_counts_and_epoch():
    x, y = _logits(), _labels()
    module = _Module(build_loss("ldam", drw_epoch=0))
    out = module.compute_loss(x, y)
    assert module.criterion.has_class_counts
    torch.testing.assert_close(out, LDAMLoss(COUNTS, drw_epoch=0)(x, y, epoch=0))
    module = _Module(build_loss("class_balanced"))
    torch.testing.assert_close(module.compute_loss(x, y), ClassBalancedLoss(COUNTS)(x, y))
