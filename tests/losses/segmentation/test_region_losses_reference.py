"""Region losses (Dice, generalized Dice, Tversky, focal Tversky, soft Jaccard, JML1/JML2)
against float64 loops written from their papers' formulas, in 2-D and 3-D, per image and per
batch, and their documented identities (Tversky 0.5/0.5 = Dice, 1/1 = Jaccard, JML = Jaccard on
hard labels)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss
from lightning_losses.losses.segmentation import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    JaccardMetricLoss,
    TverskyLoss,
)

F64 = torch.float64
S = 1e-5  # the default smoothing


def inputs(n=3, c=4, spatial=(5, 6), seed=0, absent=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=F64) * 2
    y = torch.randint(0, c, (n, *spatial), generator=g)
    if absent:  # class 2 absent from image 0, class 3 from image 1
        y[0][y[0] == 2] = 0
        y[1][y[1] == 3] = 1
    return x, y


def rows(x, y):
    """Per image, per class: (probabilities, one-hot target) over the image's pixels."""
    p = torch.softmax(x, 1)
    g = F.one_hot(y, x.shape[1]).movedim(-1, 1).to(F64)
    n, c = x.shape[:2]
    return [[(p[i, k].reshape(-1), g[i, k].reshape(-1)) for k in range(c)] for i in range(n)]


def counts(p, g):
    tp = sum(float(a * b) for a, b in zip(p, g, strict=True))
    fp = sum(float(a * (1 - b)) for a, b in zip(p, g, strict=True))
    fn = sum(float((1 - a) * b) for a, b in zip(p, g, strict=True))
    return tp, fp, fn


def naive(x, y, term):
    """The class mean of ``term(p, g)`` per image (``"keep"``: every class counts)."""
    out = []
    for image in rows(x, y):
        out.append(sum(term(p, g) for p, g in image) / len(image))
    return torch.tensor(out, dtype=F64)


def dice_term(p, g, s=S):
    tp, fp, fn = counts(p, g)
    return 1 - (2 * tp + s) / (2 * tp + fp + fn + s)


def tversky_term(p, g, a=0.3, b=0.7, s=S):
    tp, fp, fn = counts(p, g)
    return 1 - (tp + s) / (tp + a * fp + b * fn + s)


def jaccard_term(p, g, s=S):
    tp = sum(float(u * v) for u, v in zip(p, g, strict=True))
    return 1 - (tp + s) / (float(p.sum()) + float(g.sum()) - tp + s)


SPATIAL = pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])


@SPATIAL
def test_dice_matches_the_formula(spatial):
    x, y = inputs(spatial=spatial)
    torch.testing.assert_close(DiceLoss(reduction="none")(x, y), naive(x, y, dice_term))
    log = DiceLoss(reduction="none", log_loss=True)(x, y)
    ref = naive(x, y, lambda p, g: -math.log(1 - dice_term(p, g)))
    torch.testing.assert_close(log, ref)


def test_dice_squared_denominator_is_v_net():
    x, y = inputs()

    def v_net(p, g):
        return 1 - (2 * float((p * g).sum()) + S) / (float((p * p).sum() + (g * g).sum()) + S)

    out = DiceLoss(squared_pred=True, reduction="none")(x, y)
    torch.testing.assert_close(out, naive(x, y, v_net))
    with pytest.raises(ValueError, match="squared_pred"):
        DiceLoss(squared_pred=True, soft_label=True)


def test_dice_batch_reduction_is_the_ratio_of_batch_sums():
    x, y = inputs()
    out = DiceLoss(reduction="none", reduce_over="batch")(x, y)
    # the batch as one long image
    xb = x.movedim(0, 1).reshape(1, 4, -1)
    yb = y.reshape(1, -1)
    ref = naive(xb, yb, dice_term)
    torch.testing.assert_close(out, ref.expand(3))
    torch.testing.assert_close(DiceLoss(reduce_over="batch")(x, y), ref[0])
    assert not torch.allclose(DiceLoss(reduction="none")(x, y).mean(), ref[0])  # Simpson


@SPATIAL
def test_tversky_matches_the_formula_and_its_special_cases(spatial):
    x, y = inputs(spatial=spatial)
    torch.testing.assert_close(TverskyLoss(reduction="none")(x, y), naive(x, y, tversky_term))
    # Dice doubles the counts, not the smoothing: the identity is exact without smoothing
    unsmoothed = dict(reduction="none", smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(
        TverskyLoss(0.5, 0.5, **unsmoothed)(x, y), DiceLoss(**unsmoothed)(x, y)
    )
    torch.testing.assert_close(
        TverskyLoss(1.0, 1.0, reduction="none")(x, y), JaccardLoss(reduction="none")(x, y)
    )


@SPATIAL
def test_focal_tversky_matches_the_paper_exponent(spatial):
    x, y = inputs(spatial=spatial)
    ref = naive(x, y, lambda p, g: tversky_term(p, g) ** 0.75)  # 1/gamma, gamma = 4/3
    torch.testing.assert_close(FocalTverskyLoss(reduction="none")(x, y), ref)
    torch.testing.assert_close(
        FocalTverskyLoss(gamma=1.0, reduction="none")(x, y), TverskyLoss(reduction="none")(x, y)
    )


def test_focal_tversky_gradient_is_finite_at_a_perfect_prediction():
    y = torch.randint(0, 3, (2, 4, 4))
    x = (F.one_hot(y, 3).movedim(-1, 1).double() * 60 - 30).requires_grad_(True)
    out = FocalTverskyLoss()(x, y)
    out.backward()
    assert out < 1e-6 and torch.isfinite(x.grad).all()


@SPATIAL
def test_jaccard_matches_the_formula(spatial):
    x, y = inputs(spatial=spatial)
    torch.testing.assert_close(JaccardLoss(reduction="none")(x, y), naive(x, y, jaccard_term))


def jml_term(p, g, variant, s=S):
    l1 = lambda v: float(v.abs().sum())  # noqa: E731
    if variant == "jml1":
        num = l1(p) + l1(g) - l1(p - g) + 2 * s
        den = l1(p) + l1(g) + l1(p - g) + 2 * s
    else:
        inner = float((p * g).sum())
        num, den = inner + s, inner + l1(p - g) + s
    return 1 - num / den


@pytest.mark.parametrize("variant", ["jml1", "jml2"])
@SPATIAL
def test_jaccard_metric_losses_match_the_formula_on_soft_labels(variant, spatial):
    x, _ = inputs(spatial=spatial, absent=False)
    g = torch.Generator().manual_seed(3)
    soft = torch.softmax(torch.randn(x.shape, generator=g, dtype=F64) * 2, 1)
    out = JaccardMetricLoss(variant, reduction="none", empty_target="keep")(x, soft)
    p = torch.softmax(x, 1)
    ref = torch.tensor(
        [
            sum(jml_term(p[i, k].reshape(-1), soft[i, k].reshape(-1), variant) for k in range(4))
            / 4
            for i in range(3)
        ],
        dtype=F64,
    )
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("variant", ["jml1", "jml2"])
def test_jaccard_metric_losses_equal_soft_jaccard_on_hard_labels(variant):
    x, y = inputs()
    for empty in ("keep", "skip"):
        kw = dict(reduction="none", empty_target=empty)
        torch.testing.assert_close(JaccardMetricLoss(variant, **kw)(x, y), JaccardLoss(**kw)(x, y))


@pytest.mark.parametrize("variant", ["jml1", "jml2"])
def test_jaccard_metric_losses_are_zero_at_the_soft_label_but_soft_jaccard_is_not(variant):
    """The point of JML (Wang & Blaschko 2023): p = g minimises it for soft g."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, generator=g, dtype=F64)
    soft = torch.softmax(logits, 1)
    kw = dict(smooth_nr=0.0, smooth_dr=0.0)
    jml = JaccardMetricLoss(variant, **kw)(logits, soft)
    torch.testing.assert_close(jml, torch.zeros((), dtype=F64), atol=1e-12, rtol=0)
    assert JaccardLoss(**kw)(logits, soft) > 0.2
    # and p = g is a stationary point of JML: the gradient vanishes there
    z = logits.clone().requires_grad_(True)
    JaccardMetricLoss(variant, **kw)(z, soft).backward()
    assert z.grad.abs().max() < 1e-6
    # soft Dice with the L1 counts is also exact at the soft label; the product form is not
    assert DiceLoss(soft_label=True, **kw)(logits, soft) < 1e-12
    assert DiceLoss(**kw)(logits, soft) > 0.1


# -- generalized Dice ---------------------------------------------------------------------------


def naive_gdl(x, y, scale_weights, s=S):
    out = []
    for image in rows(x, y):
        gsum = [float(g.sum()) for _, g in image]
        finite = [1 / v**2 for v in gsum if v > 0]
        wmax = max(finite)
        w = [1 / v**2 if v > 0 else wmax for v in gsum]  # absent class: largest finite weight
        if scale_weights:
            w = [wi / wmax for wi in w]
        num = den = 0.0
        for wc, (p, g) in zip(w, image, strict=True):
            tp, fp, fn = counts(p, g)
            num += wc * 2 * tp
            den += wc * (2 * tp + fp + fn)
        out.append(1 - (num + s) / (den + s))
    return torch.tensor(out, dtype=F64)


@SPATIAL
def test_generalized_dice_matches_the_paper_formula_without_smoothing(spatial):
    x, y = inputs(spatial=spatial)
    out = GeneralizedDiceLoss(smooth_nr=0.0, smooth_dr=0.0, reduction="none")(x, y)
    torch.testing.assert_close(out, naive_gdl(x, y, scale_weights=False, s=0.0))


def test_generalized_dice_scales_the_weights_so_the_largest_is_one():
    x, y = inputs()
    out = GeneralizedDiceLoss(reduction="none")(x, y)
    torch.testing.assert_close(out, naive_gdl(x, y, scale_weights=True))


def test_generalized_dice_absent_class_is_differentiable_and_counted():
    """An absent class keeps the largest finite weight (not 0: its false positives count) and
    the gradient is finite (MONAI #3618); with "skip" it drops out."""
    x, y = inputs()
    x = x.requires_grad_(True)
    keep = GeneralizedDiceLoss(reduction="none")(x, y)
    keep.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 2].abs().sum() > 0  # the absent class 2 of image 0 gets a gradient
    skip = GeneralizedDiceLoss(reduction="none", empty_target="skip")(x, y)
    assert not torch.allclose(keep, skip)
    with pytest.raises(ValueError, match="empty_target"):
        GeneralizedDiceLoss(empty_target="zero")


def test_generalized_dice_image_without_any_present_class():
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    keep = GeneralizedDiceLoss(include_background=False, reduction="none")(x, y)
    plain = DiceLoss(include_background=False, reduction="none")(x, y)
    assert torch.isfinite(keep).all() and (keep > 0).all()
    # equal weights: the ratio of the summed counts over the (absent) foreground classes
    p = torch.softmax(x, 1)[:, 1:]
    ref = 1 - S / (p.sum((1, 2, 3)) + S)
    torch.testing.assert_close(keep, ref)
    assert (plain > 0).all()
    skip = GeneralizedDiceLoss(include_background=False, empty_target="skip")
    assert skip.per_sample(x, y).valid.tolist() == [False, False]


# -- the registry and defaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "defaults"),
    [
        ("dice", dict(smooth_nr=1e-5, smooth_dr=1e-5, empty_target="keep")),
        ("generalized_dice", dict(smooth_nr=1e-5, smooth_dr=1e-5, empty_target="keep")),
        ("tversky", dict(alpha=0.3, beta=0.7)),
        ("focal_tversky", dict(alpha=0.3, beta=0.7, gamma=4 / 3)),
        ("jaccard", dict(smooth_nr=1e-5, empty_target="keep")),
        ("jaccard_metric", dict(variant="jml1", empty_target="skip")),
    ],
)
def test_registered_with_the_documented_defaults(name, defaults):
    loss = build_loss(name)
    for key, value in defaults.items():
        if isinstance(value, float):
            assert getattr(loss, key) == pytest.approx(value), key
        else:
            assert getattr(loss, key) == value, key
    assert loss.reduce_over == "image" and loss.mode == "multiclass"


@pytest.mark.parametrize(
    "name",
    [
        "dice",
        "generalized_dice",
        "tversky",
        "focal_tversky",
        "jaccard",
        "jaccard_metric",
        "lovasz_softmax",
        "lovasz_hinge",
    ],
)
def test_a_better_prediction_has_a_lower_loss(name):
    """Perfect logits < random logits < logits that pick the wrong class everywhere, and a
    training step on a toy problem lowers the loss (every registered segmentation loss)."""
    _, y = inputs(absent=False)
    onehot = F.one_hot(y, 4).movedim(-1, 1).double()
    target = onehot if name == "lovasz_hinge" else y
    loss = build_loss(name)
    perfect = loss(onehot * 20 - 10, target)
    random = loss(torch.randn(onehot.shape, generator=torch.Generator().manual_seed(4)), target)
    wrong = loss(onehot.roll(1, dims=1) * 20 - 10, target)
    assert perfect < 1e-3 < random < wrong
    z = torch.zeros(onehot.shape, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.3)
    start = loss(z, target).item()
    for _ in range(30):
        opt.zero_grad()
        loss(z, target).backward()
        opt.step()
    assert loss(z, target).item() < 0.5 * start
