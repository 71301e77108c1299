"""Region losses side by side with MONAI and segmentation_models_pytorch (test-only references):
the same values and gradients where the definitions agree, and a test for each place where they
differ showing which side follows the paper."""

from __future__ import annotations

import pytest
import torch

from lightning_losses.losses.segmentation import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    JaccardMetricLoss,
    TverskyLoss,
)

monai_losses = pytest.importorskip("monai.losses")
smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")

F64 = torch.float64


def inputs(n=3, c=4, spatial=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=F64) * 2
    y = torch.randint(0, c, (n, *spatial), generator=g)
    y[0][y[0] == 2] = 0  # class 2 absent from image 0
    return x, y


def same_values_and_grads(ours, theirs, x, y, y_theirs=None):
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    va, vb = ours(a, y), theirs(b, y if y_theirs is None else y_theirs)
    torch.testing.assert_close(va, vb)
    va.sum().backward()
    vb.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


SPATIAL = pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])


# -- MONAI --------------------------------------------------------------------------------------


def monai_per_image(loss):
    """MONAI's ``reduction="none"`` (N, C, 1, ...) folded to our per-image class mean."""
    return lambda x, y: loss(x, y).reshape(x.shape[0], -1).mean(1)


@SPATIAL
@pytest.mark.parametrize("include_background", [True, False])
def test_dice_equals_monai(spatial, include_background):
    x, y = inputs(spatial=spatial)
    kw = dict(include_background=include_background)
    theirs = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, reduction="none", **kw)
    same_values_and_grads(
        DiceLoss(reduction="none", **kw), monai_per_image(theirs), x, y, y[:, None]
    )
    batch = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=True, **kw)
    same_values_and_grads(DiceLoss(reduce_over="batch", **kw), batch, x, y, y[:, None])


@pytest.mark.parametrize("reduce_over", ["image", "batch"])
def test_squared_dice_equals_monai_squared_pred(reduce_over):
    x, y = inputs()
    batch = reduce_over == "batch"
    theirs = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True, batch=batch)
    ours = DiceLoss(squared_pred=True, reduce_over=reduce_over)
    same_values_and_grads(ours, theirs, x, y, y[:, None])


def test_dice_equals_monai_in_binary_mode_with_soft_labels():
    x, _ = inputs(c=1)
    soft = torch.rand(3, 1, 5, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    theirs = monai_losses.DiceLoss(sigmoid=True, soft_label=True)
    same_values_and_grads(DiceLoss(mode="binary", soft_label=True), theirs, x, soft)


def test_dice_and_tversky_equal_monai_with_ignore_index():
    x, y = inputs()
    y[1, :2] = 255
    monai_kw = dict(softmax=True, to_onehot_y=True, ignore_index=255, reduction="none")
    same_values_and_grads(
        DiceLoss(ignore_index=255, reduction="none"),
        monai_per_image(monai_losses.DiceLoss(**monai_kw)),
        x,
        y,
        y[:, None],
    )
    same_values_and_grads(
        TverskyLoss(ignore_index=255, reduction="none"),
        monai_per_image(monai_losses.TverskyLoss(alpha=0.3, beta=0.7, **monai_kw)),
        x,
        y,
        y[:, None],
    )


@SPATIAL
@pytest.mark.parametrize("reduce_over", ["image", "batch"])
@pytest.mark.parametrize("absent_from_batch", [False, True])
def test_generalized_dice_equals_monai_without_smoothing(spatial, reduce_over, absent_from_batch):
    """Absent classes included: from one image, and from the whole batch (MONAI #6765)."""
    x, y = inputs(spatial=spatial)
    if absent_from_batch:
        y[y == 3] = 1
    kw = dict(smooth_nr=0.0, smooth_dr=0.0)
    batch = reduce_over == "batch"
    theirs = monai_losses.GeneralizedDiceLoss(
        softmax=True, to_onehot_y=True, batch=batch, reduction="none" if not batch else "mean", **kw
    )
    fold = theirs if batch else (lambda a, b: theirs(a, b).reshape(-1))
    ours = GeneralizedDiceLoss(
        reduce_over=reduce_over, reduction="none" if not batch else "mean", **kw
    )
    same_values_and_grads(ours, fold, x, y, y[:, None])


def test_generalized_dice_smoothing_drifts_in_monai_on_large_volumes():
    """Where they differ: MONAI's unscaled weights (~1/G) are as small as its default smoothing
    on a large volume, so its value moves away from the paper's (unsmoothed) formula; the scaled
    weights here keep the default smoothing negligible."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 64, 64, 64, generator=g, dtype=F64)
    y = (torch.rand(1, 64, 64, 64, generator=g) < 0.4).long()  # ~1e5 foreground voxels
    paper = GeneralizedDiceLoss(smooth_nr=0.0, smooth_dr=0.0)(x, y)
    ours = GeneralizedDiceLoss()(x, y)
    theirs = monai_losses.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)(x, y[:, None])
    assert abs(float(ours - paper)) < 1e-8
    assert abs(float(theirs - paper)) > 0.05


@SPATIAL
def test_tversky_equals_monai(spatial):
    x, y = inputs(spatial=spatial)
    theirs = monai_losses.TverskyLoss(
        softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7, reduction="none"
    )
    same_values_and_grads(TverskyLoss(reduction="none"), monai_per_image(theirs), x, y, y[:, None])
    batch = monai_losses.TverskyLoss(
        softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7, batch=True
    )
    same_values_and_grads(TverskyLoss(reduce_over="batch"), batch, x, y, y[:, None])


# -- smp ---------------------------------------------------------------------------------------

#: smp's rules, in the contract's terms: batch sums, absent classes zeroed, one smoothing term
#: (0 by default), counts in the L1 form.
SMP_LIKE = dict(reduce_over="batch", empty_target="zero", smooth_nr=0.0, smooth_dr=0.0)


@SPATIAL
def test_dice_equals_smp(spatial):
    x, y = inputs(spatial=spatial)
    same_values_and_grads(
        DiceLoss(soft_label=True, **SMP_LIKE), smp_losses.DiceLoss("multiclass"), x, y
    )
    same_values_and_grads(
        DiceLoss(soft_label=True, log_loss=True, **SMP_LIKE),
        smp_losses.DiceLoss("multiclass", log_loss=True),
        x,
        y,
    )


def test_dice_equals_smp_with_ignore_index_in_binary_and_multiclass():
    x, y = inputs()
    y[1, 2:4] = 255
    same_values_and_grads(
        DiceLoss(ignore_index=255, **SMP_LIKE),
        smp_losses.DiceLoss("multiclass", ignore_index=255),
        x,
        y,
    )
    xb, yb = x[:, :1], (y == 1).long()
    yb[1, 2:4] = 255
    same_values_and_grads(
        DiceLoss(mode="binary", ignore_index=255, **SMP_LIKE),
        smp_losses.DiceLoss("binary", ignore_index=255),
        xb,
        yb,
    )


def test_dice_on_soft_labels_equals_smp_with_soft_label_counts():
    x, _ = inputs()
    g = torch.Generator().manual_seed(2)
    soft = torch.softmax(torch.randn(x.shape, generator=g, dtype=F64), 1)
    same_values_and_grads(
        DiceLoss(soft_label=True, mode="multilabel", **SMP_LIKE),
        smp_losses.DiceLoss("multilabel"),
        x,
        soft,
    )


@SPATIAL
def test_jaccard_equals_smp_on_hard_labels(spatial):
    x, y = inputs(spatial=spatial)
    same_values_and_grads(JaccardLoss(**SMP_LIKE), smp_losses.JaccardLoss("multiclass"), x, y)


def test_smp_jaccard_on_soft_labels_is_jml1_not_the_product_soft_jaccard():
    """Where they differ: smp computes its counts from L1 norms, so on soft labels its Jaccard
    loss is the paper's JML1 (Wang & Blaschko 2023), which is 0 at p = g; the product-form soft
    Jaccard (Rahman & Wang 2016, this library's ``jaccard``) is not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=F64)
    soft = torch.softmax(torch.randn(x.shape, generator=g, dtype=F64), 1)
    theirs = smp_losses.JaccardLoss("multilabel")
    same_values_and_grads(JaccardMetricLoss("jml1", mode="multilabel", **SMP_LIKE), theirs, x, soft)
    product = JaccardLoss(mode="multilabel", **SMP_LIKE)(x, soft)
    assert abs(float(product - theirs(x, soft))) > 1e-3


@SPATIAL
def test_tversky_equals_smp(spatial):
    x, y = inputs(spatial=spatial)
    same_values_and_grads(
        TverskyLoss(soft_label=True, **SMP_LIKE),
        smp_losses.TverskyLoss("multiclass", alpha=0.3, beta=0.7),
        x,
        y,
    )


def test_focal_tversky_equals_smp_for_one_class_with_the_exponent_inverted():
    x, y = inputs(c=2)
    x, y = x[:, :1], (y > 0).long()
    same_values_and_grads(
        FocalTverskyLoss(mode="binary", gamma=4 / 3, **SMP_LIKE),
        smp_losses.TverskyLoss("binary", alpha=0.3, beta=0.7, gamma=0.75),
        x,
        y,
    )


def test_focal_tversky_differs_from_smp_for_several_classes():
    """Where they differ: the paper raises each class's Tversky loss to 1/gamma; smp raises the
    class mean. This class follows the paper (the mean of the powered terms)."""
    x, y = inputs()
    ours = FocalTverskyLoss(**SMP_LIKE)(x, y)
    theirs = smp_losses.TverskyLoss("multiclass", alpha=0.3, beta=0.7, gamma=0.75)(x, y)
    assert abs(float(ours - theirs)) > 1e-4
    # smp's value is the power of the class mean, ours the mean of the powers
    torch.testing.assert_close(theirs, TverskyLoss(soft_label=True, **SMP_LIKE)(x, y) ** 0.75)
    p = torch.softmax(x, 1)
    binary = TverskyLoss(mode="binary", from_logits=False, **SMP_LIKE)
    per_class = [binary(p[:, k : k + 1], (y == k).long()) for k in range(4)]
    torch.testing.assert_close(ours, sum(t**0.75 for t in per_class) / 4)


def test_smp_leaves_false_positives_on_an_empty_batch_unpunished():
    """Where they differ: smp zeroes the loss of a class absent from the batch's target, so a
    prediction full of false positives on empty images costs nothing. The paper's ratio gives
    Dice 0 (loss 1) for any false positive; ``empty_target="keep"`` follows it."""
    x = torch.full((2, 1, 4, 4), 8.0, dtype=F64)  # predicts foreground everywhere
    y = torch.zeros(2, 4, 4, dtype=torch.long)  # nothing there
    assert float(smp_losses.DiceLoss("binary")(x, y)) == 0.0
    assert float(DiceLoss(mode="binary")(x, y)) > 0.99
