"""Distillation losses against naive float64 loops of their formulas (METHODS.md section 9).

Each ``naive_*`` reference is written from the paper's formula with Python floats and
:mod:`math`, one sample (and one class, pair, triplet) at a time; where a public implementation
defines the batch objective (mdistiller's KD / DKD / AT / RKD, the DIST authors' code), a
``*_style`` function re-states that definition in plain torch and the loss's batch mean is
compared with it (mdistiller is not a package on the registry). torchdistill, a test-only
dependency, is imported in ``test_distillation_vs_torchdistill.py`` for KD, DIST, AT and RKD.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss, list_losses, loss_info
from lightning_losses.losses.distillation import (
    AttentionTransferLoss,
    DISTLoss,
    DKDLoss,
    DualHeadKDLoss,
    FitNetLoss,
    HardDistillationLoss,
    KDLoss,
    MarginMSELoss,
    MultiTeacherKDLoss,
    RegressionDistillationLoss,
    RKDLoss,
    SelfDistillationLoss,
    average_teacher_probs,
)

NAMES = list_losses("distillation")
TEMPERATURE_LOSSES = ["kd", "dkd", "dist", "dual_head_kd", "self_distillation", "multi_teacher_kd"]


def test_the_family_is_registered():
    assert set(NAMES) == {
        "attention_transfer",
        "deit_hard_distillation",
        "dist",
        "dkd",
        "dual_head_kd",
        "fitnet",
        "kd",
        "margin_mse",
        "multi_teacher_kd",
        "regression_distillation",
        "rkd",
        "self_distillation",
    }
    for name in NAMES:
        assert "teacher" in loss_info(name).context
    assert loss_info("dkd").context == ("teacher", "epoch")


# -- inputs ------------------------------------------------------------------------------------


def make_case(name, n=6, k=5, seed=0, scale=2.0):
    """Student input (requires grad), labels, and the context with teacher tensors that require
    grad (to show that none reaches them)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    if name == "attention_transfer":
        x, ctx = r(n, 3, 4, 5), {"teacher_features": r(n, 6, 4, 5)}
    elif name == "rkd":
        x, ctx = r(n, 4), {"teacher_features": r(n, 7)}
    elif name == "fitnet":
        x, ctx = r(n, 3, 2, 2), {"teacher_features": r(n, 3, 2, 2)}
    elif name == "margin_mse":
        x, ctx = r(n, 4), {"teacher_scores": r(n, 4)}
    elif name == "regression_distillation":
        x, ctx = r(n, 3), {"teacher_outputs": r(n, 3)}
    elif name == "multi_teacher_kd":
        x, ctx = r(n, k), {"teacher_logits": r(3, n, k)}
    elif name == "dual_head_kd":
        x, ctx = r(n, k), {"teacher_logits": r(n, k), "aux_logits": r(n, k)}
    else:
        x, ctx = r(n, k), {"teacher_logits": r(n, k)}
    if name == "dkd":
        ctx["epoch"] = 30
    y = torch.randint(0, k, (n,), generator=g)
    return x, y, ctx


def softmax(v):
    top = max(v)
    e = [math.exp(a - top) for a in v]
    s = sum(e)
    return [a / s for a in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def huber(u):
    return 0.5 * u * u if abs(u) < 1 else abs(u) - 0.5


def sigmoid(u):
    return 1.0 / (1.0 + math.exp(-u))


def rows(t):
    return t.detach().tolist()


# -- naive references --------------------------------------------------------------------------


def naive_kd(s, t, temp):
    return torch.tensor(
        [
            temp**2 * kl(softmax([a / temp for a in zt]), softmax([a / temp for a in zs]))
            for zs, zt in zip(rows(s), rows(t), strict=True)
        ],
        dtype=torch.float64,
    )


def naive_dkd(s, t, y, alpha, beta, temp, factor):
    out = []
    for zs, zt, yi in zip(rows(s), rows(t), y.tolist(), strict=True):
        ps, pt = softmax([a / temp for a in zs]), softmax([a / temp for a in zt])
        tckd = kl([pt[yi], 1 - pt[yi]], [ps[yi], 1 - ps[yi]])
        hat_s = [p / (1 - ps[yi]) for j, p in enumerate(ps) if j != yi]
        hat_t = [p / (1 - pt[yi]) for j, p in enumerate(pt) if j != yi]
        out.append(factor * temp**2 * (alpha * tckd + beta * kl(hat_t, hat_s)))
    return torch.tensor(out, dtype=torch.float64)


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((u - ma) * (v - mb) for u, v in zip(a, b, strict=True))
    va = math.sqrt(sum((u - ma) ** 2 for u in a))
    vb = math.sqrt(sum((v - mb) ** 2 for v in b))
    return cov / (va * vb)


def naive_dist(s, t, beta, gamma, temp):
    ys = [softmax([a / temp for a in z]) for z in rows(s)]
    yt = [softmax([a / temp for a in z]) for z in rows(t)]
    k = len(ys[0])
    intra = sum(1 - pearson([r[c] for r in ys], [r[c] for r in yt]) for c in range(k)) / k
    return torch.tensor(
        [
            temp**2 * (beta * (1 - pearson(a, b)) + gamma * intra)
            for a, b in zip(ys, yt, strict=True)
        ],
        dtype=torch.float64,
    )


def naive_at(s, t, p, beta):
    out = []
    for fs, ft in zip(s.detach(), t.detach(), strict=True):
        maps = []
        for f in (fs, ft):
            c = f.shape[0]
            flat = f.reshape(c, -1).tolist()
            q = [sum(abs(flat[ch][j]) ** p for ch in range(c)) for j in range(len(flat[0]))]
            norm = math.sqrt(sum(v * v for v in q))
            maps.append([v / norm for v in q])
        out.append(beta / 2 * sum((a - b) ** 2 for a, b in zip(*maps, strict=True)) / len(q))
    return torch.tensor(out, dtype=torch.float64)


def naive_rkd(s, t, wd, wa):
    def potentials(x):
        n = len(x)
        d = [[math.dist(x[i], x[j]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        psi_d = [[d[i][j] / mu for j in range(n)] for i in range(n)]

        def unit(i, j):
            if i == j:
                return [0.0] * len(x[0])
            return [(b - a) / d[i][j] for a, b in zip(x[i], x[j], strict=True)]

        psi_a = [
            [
                [sum(u * v for u, v in zip(unit(i, j), unit(i, k), strict=True)) for k in range(n)]
                for j in range(n)
            ]
            for i in range(n)
        ]
        return psi_d, psi_a

    (ds, as_), (dt, at) = potentials(rows(s)), potentials(rows(t))
    n = len(ds)
    out = []
    for i in range(n):
        dist = sum(huber(ds[i][j] - dt[i][j]) for j in range(n)) / n
        ang = sum(huber(as_[i][j][k] - at[i][j][k]) for j in range(n) for k in range(n)) / n**2
        out.append(wd * dist + wa * ang)
    return torch.tensor(out, dtype=torch.float64)


def naive_dual_head(s, t, a, temp, tb, weight, binary):
    out = []
    for zs, zt, za in zip(rows(s), rows(t), rows(a), strict=True):
        kd = temp**2 * kl(softmax([v / temp for v in zt]), softmax([v / temp for v in zs]))
        d = 0.0
        for vt, va in zip(zt, za, strict=True):
            if binary == "kl":
                p, q = sigmoid(vt / tb), sigmoid(va / tb)
            else:
                p, q = 0.5, sigmoid((va - vt) / tb)
            d += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        out.append(kd + weight * tb**2 * d)
    return torch.tensor(out, dtype=torch.float64)


def naive_self_distillation(s, t, y, alpha, temp):
    out = []
    for zs, zt, yi in zip(rows(s), rows(t), y.tolist(), strict=True):
        pt, ps = softmax([v / temp for v in zt]), softmax(zs)
        q = [alpha * (j == yi) + (1 - alpha) * pt[j] for j in range(len(zs))]
        out.append(-sum(qj * math.log(pj) for qj, pj in zip(q, ps, strict=True)))
    return torch.tensor(out, dtype=torch.float64)


def naive_hard(s, t):
    out = []
    for zs, zt in zip(rows(s), rows(t), strict=True):
        label = max(range(len(zt)), key=zt.__getitem__)
        out.append(-math.log(softmax(zs)[label]))
    return torch.tensor(out, dtype=torch.float64)


def naive_margin_mse(s, t):
    out = []
    for zs, zt in zip(rows(s), rows(t), strict=True):
        terms = [((zs[0] - zs[j]) - (zt[0] - zt[j])) ** 2 for j in range(1, len(zs))]
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def naive_multi_teacher(s, stack, weights, temp):
    m = len(stack)
    w = [1.0 / m] * m if weights is None else [v / sum(weights) for v in weights]
    return sum(w[i] * naive_kd(s, stack[i], temp) for i in range(m))


def naive_regression(s, stack, weights, distance):
    out = []
    flat_s = s.detach().reshape(s.shape[0], -1).tolist()
    for i, row in enumerate(flat_s):
        total = 0.0
        for wm, t in zip(weights, stack, strict=True):
            trow = t.detach().reshape(t.shape[0], -1)[i].tolist()
            diffs = [a - b for a, b in zip(row, trow, strict=True)]
            rho = [u * u for u in diffs] if distance == "mse" else [abs(u) for u in diffs]
            total += wm * sum(rho) / len(rho)
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


# -- each loss against its formula -------------------------------------------------------------


@pytest.mark.parametrize("temp", [1.0, 4.0, 0.5])
def test_kd_matches_naive_and_mdistiller_style(temp):
    x, y, ctx = make_case("kd", seed=1)
    t = ctx["teacher_logits"]
    out = KDLoss(temperature=temp, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_kd(x, t, temp))
    batchmean = F.kl_div(
        F.log_softmax(x / temp, 1), F.softmax(t / temp, 1), reduction="batchmean"
    ) * (temp**2)
    torch.testing.assert_close(KDLoss(temperature=temp)(x, y, **ctx), batchmean)


def test_kd_is_zero_when_the_student_equals_the_teacher():
    x, y, _ = make_case("kd")
    out = KDLoss(reduction="none")(x, y, teacher_logits=x.detach().clone())
    torch.testing.assert_close(out, torch.zeros(6, dtype=torch.float64))


def test_pixel_wise_kd_is_the_mean_over_valid_pixels():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 3, 5), generator=g)
    y[0, 1, :3] = -100
    y[1, 2, 4] = -100
    out = KDLoss(temperature=2.0, reduction="none", ignore_index=-100)(s, y, teacher_logits=t)
    ref = []
    for i in range(2):
        vals = [
            naive_kd(s[i, :, h, w][None], t[i, :, h, w][None], 2.0)[0]
            for h in range(3)
            for w in range(5)
            if y[i, h, w] != -100
        ]
        ref.append(sum(vals) / len(vals))
    torch.testing.assert_close(out, torch.stack(ref))


@pytest.mark.parametrize(("alpha", "beta", "temp"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_naive(alpha, beta, temp):
    x, y, ctx = make_case("dkd", seed=2)
    loss = DKDLoss(alpha=alpha, beta=beta, temperature=temp, reduction="none")
    torch.testing.assert_close(
        loss(x, y, **ctx), naive_dkd(x, ctx["teacher_logits"], y, alpha, beta, temp, 1.0)
    )


def mdistiller_style_dkd(s, t, y, alpha, beta, temp):
    """DKD as mdistiller states it: cat_mask of the probabilities, log, -1000 masking."""
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)

    def cat_mask(p):
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)

    bs, bt = cat_mask(ps), cat_mask(pt)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temp**2 / s.shape[0]
    nt = F.softmax(t / temp - 1000.0 * gt, 1)
    ns = F.log_softmax(s / temp - 1000.0 * gt, 1)
    nckd = F.kl_div(ns, nt, reduction="sum") * temp**2 / s.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_batch_mean_matches_mdistiller_style():
    x, y, ctx = make_case("dkd", seed=5)
    ref = mdistiller_style_dkd(x, ctx["teacher_logits"], y, 1.0, 8.0, 4.0)
    torch.testing.assert_close(DKDLoss()(x, y, **ctx), ref)


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)])
def test_dkd_warmup_is_linear_over_20_epochs(epoch, factor):
    x, y, ctx = make_case("dkd", seed=4)
    ctx["epoch"] = epoch
    ref = naive_dkd(x, ctx["teacher_logits"], y, 1.0, 8.0, 4.0, factor)
    torch.testing.assert_close(DKDLoss(reduction="none")(x, y, **ctx), ref)
    no_warmup = DKDLoss(warmup=0, reduction="none")(x, y, **{**ctx, "epoch": 0})
    torch.testing.assert_close(no_warmup, naive_dkd(x, ctx["teacher_logits"], y, 1, 8, 4, 1.0))


def test_dkd_needs_the_epoch():
    x, y, ctx = make_case("dkd")
    del ctx["epoch"]
    with pytest.raises(TypeError, match="epoch"):
        DKDLoss()(x, y, **ctx)


@pytest.mark.parametrize(("beta", "gamma", "temp"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_naive_and_official_style(beta, gamma, temp):
    x, y, ctx = make_case("dist", n=7, seed=6)
    t = ctx["teacher_logits"]
    out = DISTLoss(beta=beta, gamma=gamma, temperature=temp, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_dist(x, t, beta, gamma, temp))

    def relation(a, b):  # the DIST authors' inter_class_relation
        return 1 - F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True))

    ys, yt = F.softmax(x / temp, 1), F.softmax(t / temp, 1)
    official = temp**2 * (beta * relation(ys, yt).mean() + gamma * relation(ys.T, yt.T).mean())
    torch.testing.assert_close(out.mean(), official)


def test_dist_ignored_samples_leave_the_batch_terms():
    x, y, ctx = make_case("dist", n=7, seed=7)
    y[2] = -100
    out = DISTLoss(reduction="none", ignore_index=-100)(x, y, **ctx)
    keep = [0, 1, 3, 4, 5, 6]
    ref = DISTLoss(reduction="none")(x[keep], y[keep], teacher_logits=ctx["teacher_logits"][keep])
    assert out[2] == 0
    torch.testing.assert_close(out[keep], ref)


def test_fitnet_matches_naive():
    x, y, ctx = make_case("fitnet", seed=8)
    t = ctx["teacher_features"]
    ref = naive_regression(x, [t], [1.0], "mse")
    torch.testing.assert_close(FitNetLoss(reduction="none")(x, y, **ctx), ref)
    torch.testing.assert_close(FitNetLoss()(x, None, **ctx), F.mse_loss(x, t))


@pytest.mark.parametrize(("p", "beta"), [(2.0, 1000.0), (1.0, 2.0), (3.0, 10.0)])
def test_attention_transfer_matches_naive_and_mdistiller_style(p, beta):
    x, y, ctx = make_case("attention_transfer", seed=9)
    t = ctx["teacher_features"]
    out = AttentionTransferLoss(p=p, beta=beta, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_at(x, t, p, beta))

    def at(f):  # mdistiller's _at (pow of the absolute value, for odd p)
        return F.normalize(f.abs().pow(p).mean(1).reshape(f.shape[0], -1))

    torch.testing.assert_close(out.mean(), beta / 2 * (at(x) - at(t)).pow(2).mean())


def test_attention_transfer_needs_matching_spatial_size():
    x, y, _ = make_case("attention_transfer")
    with pytest.raises(ValueError, match=r"\(6, 3, 4, 5\).*\(6, 6, 4, 4\)"):
        AttentionTransferLoss()(x, y, teacher_features=torch.randn(6, 6, 4, 4))
    with pytest.raises(ValueError, match="input"):
        AttentionTransferLoss()(torch.randn(6, 3), y, teacher_features=torch.randn(6, 3))


@pytest.mark.parametrize(("wd", "wa"), [(25.0, 50.0), (1.0, 0.0), (0.0, 3.0)])
def test_rkd_matches_naive(wd, wa):
    x, y, ctx = make_case("rkd", n=5, seed=10)
    out = RKDLoss(distance_weight=wd, angle_weight=wa, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_rkd(x, ctx["teacher_features"], wd, wa))


def mdistiller_style_rkd(s, t, wd=25.0, wa=50.0, eps=1e-12):
    def pdist(e):
        sq = e.pow(2).sum(1)
        res = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp(min=eps).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    def angles(e):
        d = F.normalize(e[None, :] - e[:, None], p=2, dim=2)
        return torch.bmm(d, d.transpose(1, 2)).reshape(-1)

    td, sd = pdist(t), pdist(s)
    loss_d = F.smooth_l1_loss(sd / sd[sd > 0].mean(), td / td[td > 0].mean())
    return wd * loss_d + wa * F.smooth_l1_loss(angles(s), angles(t))


def test_rkd_batch_mean_matches_mdistiller_style():
    x, y, ctx = make_case("rkd", n=8, seed=11)
    ref = mdistiller_style_rkd(x, ctx["teacher_features"])
    torch.testing.assert_close(RKDLoss()(x, y, **ctx), ref)


def test_rkd_is_scale_invariant_and_zero_on_a_scaled_teacher():
    x, y, _ = make_case("rkd", n=6, seed=12)
    zero = RKDLoss(reduction="none")(x, y, teacher_features=3.0 * x.detach())
    torch.testing.assert_close(zero, torch.zeros(6, dtype=torch.float64))
    assert torch.isfinite(RKDLoss()(x[:1], y[:1], teacher_features=x[:1].detach()))


@pytest.mark.parametrize("binary", ["kl", "kl_norm"])
def test_dual_head_matches_naive(binary):
    x, y, ctx = make_case("dual_head_kd", seed=13)
    loss = DualHeadKDLoss(aux_weight=0.7, binary=binary, reduction="none")
    ref = naive_dual_head(x, ctx["teacher_logits"], ctx["aux_logits"], 4.0, 2.0, 0.7, binary)
    torch.testing.assert_close(loss(x, y, **ctx), ref)


@pytest.mark.parametrize(("alpha", "temp"), [(0.5, 1.0), (0.0, 2.0), (1.0, 1.0), (0.3, 3.0)])
def test_self_distillation_matches_naive(alpha, temp):
    x, y, ctx = make_case("self_distillation", seed=14)
    loss = SelfDistillationLoss(alpha=alpha, temperature=temp, reduction="none")
    torch.testing.assert_close(
        loss(x, y, **ctx), naive_self_distillation(x, ctx["teacher_logits"], y, alpha, temp)
    )


def test_self_distillation_with_alpha_one_is_cross_entropy():
    x, y, ctx = make_case("self_distillation", seed=15)
    out = SelfDistillationLoss(alpha=1.0, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, F.cross_entropy(x, y, reduction="none"))


def test_deit_hard_distillation_matches_naive():
    x, y, ctx = make_case("deit_hard_distillation", seed=16)
    out = HardDistillationLoss(reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_hard(x, ctx["teacher_logits"]))


def test_margin_mse_matches_naive_and_ignores_a_teacher_shift():
    x, y, ctx = make_case("margin_mse", seed=17)
    t = ctx["teacher_scores"]
    out = MarginMSELoss(reduction="none")(x, None, **ctx)
    torch.testing.assert_close(out, naive_margin_mse(x, t))
    shifted = MarginMSELoss(reduction="none")(x, y, teacher_scores=t + 5.0)
    torch.testing.assert_close(shifted, out)
    pair = MarginMSELoss()(x[:, :2], y, teacher_scores=t[:, :2])
    ref = F.mse_loss(x[:, 0] - x[:, 1], t[:, 0] - t[:, 1])
    torch.testing.assert_close(pair, ref)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 1.0]])
def test_multi_teacher_matches_naive(weights):
    x, y, ctx = make_case("multi_teacher_kd", seed=18)
    stack = ctx["teacher_logits"]
    out = MultiTeacherKDLoss(weights=weights, reduction="none")(x, y, **ctx)
    torch.testing.assert_close(out, naive_multi_teacher(x, stack, weights, 4.0))


def test_multi_teacher_gradient_equals_kd_to_the_averaged_teacher():
    x, y, ctx = make_case("multi_teacher_kd", seed=19)
    w, temp = [0.2, 0.5, 0.3], 2.0
    MultiTeacherKDLoss(weights=w, temperature=temp)(x, y, **ctx).backward()
    grad = x.grad.clone()
    x.grad = None
    avg = average_teacher_probs(list(ctx["teacher_logits"]), w, temp)
    assert not avg.requires_grad
    teachers = [rows(t) for t in ctx["teacher_logits"]]
    naive = [
        [
            sum(w[m] * softmax([v / temp for v in teachers[m][i]])[j] for m in range(3))
            for j in range(5)
        ]
        for i in range(6)
    ]
    torch.testing.assert_close(avg, torch.tensor(naive, dtype=torch.float64))
    ce = -(avg * F.log_softmax(x / temp, 1)).sum(1).mean() * temp**2
    ce.backward()
    torch.testing.assert_close(grad, x.grad)


def test_multi_teacher_rejects_a_wrong_stack():
    x, y, ctx = make_case("multi_teacher_kd")
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(6, 5\)"):
        MultiTeacherKDLoss()(x, y, teacher_logits=ctx["teacher_logits"][0])
    with pytest.raises(ValueError, match="weights"):
        MultiTeacherKDLoss(weights=[1.0, 1.0])(x, y, **ctx)


@pytest.mark.parametrize("distance", ["mse", "l1"])
def test_regression_distillation_matches_naive(distance):
    x, y, ctx = make_case("regression_distillation", seed=20)
    t = ctx["teacher_outputs"]
    out = RegressionDistillationLoss(distance=distance, reduction="none")(x, None, **ctx)
    torch.testing.assert_close(out, naive_regression(x, [t], [1.0], distance))
    stack = torch.stack([t, t.detach() * 0.5 + 1.0])
    multi = RegressionDistillationLoss(distance, teacher_weights=[3.0, 1.0], reduction="none")
    out = multi(x, y, teacher_outputs=stack)
    torch.testing.assert_close(out, naive_regression(x, list(stack), [0.75, 0.25], distance))
    with pytest.raises(ValueError, match=r"\(6, 3\).*\(6, 3\)"):
        multi(x, y, teacher_outputs=t)


# -- the contract, for every distillation loss ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_shape_and_sample_weight(name):
    x, y, ctx = make_case(name)
    none = build_loss(name, reduction="none")(x, y, **ctx)
    assert none.shape == (6,) and none.dtype == torch.float64
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    mean = build_loss(name)(x, y, sample_weight=w, **ctx)
    torch.testing.assert_close(mean, (w * none).sum() / 6)
    torch.testing.assert_close(build_loss(name, reduction="sum")(x, y, **ctx), none.sum())


@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_reaches_the_teacher(name):
    x, y, ctx = make_case(name)
    build_loss(name)(x, y, **ctx).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for key in loss_info(name).cls.teacher_keys:
        if key == "aux_logits":  # the student's own auxiliary head
            assert ctx[key].grad is not None
        else:
            assert ctx[key].grad is None, key


@pytest.mark.parametrize("name", NAMES)
def test_teacher_of_another_shape_names_both_shapes(name):
    x, y, ctx = make_case(name)
    key = loss_info(name).cls.teacher_keys[0]
    bad = ctx[key].detach()
    bad = bad[:, :4] if name == "multi_teacher_kd" else bad[:4]  # another batch size
    with pytest.raises(ValueError, match=rf"`input`.*\(6, .*`{key}`.*4, "):
        build_loss(name)(x, y, **{**ctx, key: bad})


@pytest.mark.parametrize(
    "name", [n for n in NAMES if n not in ("rkd", "attention_transfer", "multi_teacher_kd")]
)
def test_class_count_mismatch_names_both_shapes(name):
    x, y, ctx = make_case(name)
    key = loss_info(name).cls.teacher_keys[0]
    bad = torch.cat([ctx[key].detach(), ctx[key].detach()[:, :1]], 1)
    with pytest.raises(ValueError, match=rf"\(6, {x.shape[1]}.*\(6, {x.shape[1] + 1}"):
        build_loss(name)(x, y, **{**ctx, key: bad})


@pytest.mark.parametrize("name", TEMPERATURE_LOSSES)
@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(name, temperature):
    with pytest.raises(ValueError, match="temperature"):
        build_loss(name, temperature=temperature)


def test_dual_head_aux_temperature_must_be_positive():
    with pytest.raises(ValueError, match="aux_temperature"):
        DualHeadKDLoss(aux_temperature=0.0)


@pytest.mark.parametrize("name", NAMES)
def test_nan_in_input_or_teacher_is_caught_when_asked(name):
    x, y, ctx = make_case(name)
    key = loss_info(name).cls.teacher_keys[0]
    bad_teacher = ctx[key].detach().clone()
    bad_teacher.view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=rf"{key}.*NaN"):
        build_loss(name, validate_args=True)(x, y, **{**ctx, key: bad_teacher})
    bad_input = x.detach().clone()
    bad_input.view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=r"input.*NaN"):
        build_loss(name, validate_args=True)(bad_input, y, **ctx)


@pytest.mark.parametrize("name", NAMES)
def test_missing_teacher_keyword_is_a_type_error(name):
    x, y, ctx = make_case(name)
    key = loss_info(name).cls.teacher_keys[0]
    del ctx[key]
    with pytest.raises(TypeError, match=key):
        build_loss(name)(x, y, **ctx)
    with pytest.raises(TypeError, match="unexpected"):
        build_loss(name)(x, y, **{**make_case(name)[2], "teacher_probs": x})


def test_float32_teacher_with_a_float64_student_computes_in_float64():
    x, y, ctx = make_case("kd")
    out = KDLoss(reduction="none")(x, y, teacher_logits=ctx["teacher_logits"].float())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, naive_kd(x, ctx["teacher_logits"].float().double(), 4.0))
