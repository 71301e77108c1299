"""The dense loss contract (lightning_losses/losses/segmentation/_dense.py): layouts, modes,
ignore_index as slicing, empty targets, reduce_over, precision, errors and host reads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_losses import build_loss
from lightning_losses.losses.segmentation import DiceLoss, prepare_dense, region_sums, soft_tp_fp_fn
from lightning_losses.losses.segmentation._dense import apply_empty_target
from lightning_losses.testing import no_host_sync

F64 = torch.float64


def logits_and_labels(n=3, c=4, spatial=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g, dtype=F64) * 2
    y = torch.randint(0, c, (n, *spatial), generator=g)
    return x, y


def one_hot(y, c):
    return F.one_hot(y, c).movedim(-1, 1).to(F64)


# -- layouts and modes -------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)], ids=["1d", "2d", "3d"])
def test_index_one_hot_and_singleton_index_targets_agree(spatial):
    x, y = logits_and_labels(spatial=spatial)
    loss = DiceLoss(reduction="none")
    by_index = loss(x, y)
    torch.testing.assert_close(loss(x, one_hot(y, 4)), by_index)
    torch.testing.assert_close(loss(x, y[:, None]), by_index)  # MONAI's (N, 1, *spatial)
    assert by_index.shape == (3,)


def test_prepare_dense_flattens_activates_and_one_hots():
    x, y = logits_and_labels()
    d = prepare_dense(x, y)
    assert d.probs.shape == d.target.shape == (3, 4, 30) and d.mask is None
    torch.testing.assert_close(d.probs, torch.softmax(x, 1).reshape(3, 4, 30))
    torch.testing.assert_close(d.target, one_hot(y, 4).reshape(3, 4, 30))
    d = prepare_dense(x, y, include_background=False)
    torch.testing.assert_close(d.probs, torch.softmax(x, 1)[:, 1:].reshape(3, 3, 30))
    xb = x[:, :1]
    yb = (y > 1).long()
    for mode, target in (("binary", yb), ("binary", yb[:, None].double())):
        d = prepare_dense(xb, target, mode=mode)
        torch.testing.assert_close(d.probs, torch.sigmoid(xb).reshape(3, 1, 30))
        torch.testing.assert_close(d.target, yb.reshape(3, 1, 30).double())
    ml = (torch.rand(3, 4, 5, 6, dtype=F64) > 0.5).double()
    d = prepare_dense(x, ml, mode="multilabel")
    torch.testing.assert_close(d.probs, torch.sigmoid(x).reshape(3, 4, 30))


def test_from_logits_false_takes_probabilities():
    x, y = logits_and_labels()
    a = DiceLoss(reduction="none")(x, y)
    b = DiceLoss(reduction="none", from_logits=False)(torch.softmax(x, 1), y)
    torch.testing.assert_close(a, b)


def test_include_background_false_equals_the_foreground_channels():
    x, y = logits_and_labels()
    p = torch.softmax(x, 1)
    dropped = DiceLoss(reduction="none", include_background=False)(x, y)
    sliced = DiceLoss(reduction="none", from_logits=False, mode="multilabel")(
        p[:, 1:], one_hot(y, 4)[:, 1:]
    )
    torch.testing.assert_close(dropped, sliced)


def test_soft_tp_fp_fn_forms():
    x, y = logits_and_labels()
    d = prepare_dense(x, y)
    hard_l1 = soft_tp_fp_fn(d, form="l1")
    hard_product = soft_tp_fp_fn(d, form="product")
    for a, b in zip(hard_l1, hard_product, strict=True):  # equal on hard labels
        torch.testing.assert_close(a, b)
    _, fp, fn = hard_product
    p, g = d.probs, d.target
    torch.testing.assert_close(fp, (p * (1 - g)).sum(2))
    torch.testing.assert_close(fn, ((1 - p) * g).sum(2))
    # a soft target predicted exactly: no false mass in the L1 form, some in the product form
    soft = torch.softmax(x, 1)
    d = prepare_dense(soft, soft, from_logits=False)
    _, fp1, fn1 = soft_tp_fp_fn(d, form="l1")
    _, fp2, fn2 = soft_tp_fp_fn(d, form="product")
    torch.testing.assert_close(fp1, torch.zeros_like(fp1), atol=1e-12, rtol=0)
    torch.testing.assert_close(fn1, torch.zeros_like(fn1), atol=1e-12, rtol=0)
    assert (fp2 > 0.1).all() and (fn2 > 0.1).all()
    with pytest.raises(ValueError, match="form"):
        soft_tp_fp_fn(d, form="l2")


def test_region_sums_batch_is_the_sum_over_images():
    x, y = logits_and_labels()
    d = prepare_dense(x, y)
    per_image = region_sums(d, "image", difference=True)
    batch = region_sums(d, "batch", difference=True)
    for a, b in zip(per_image, batch, strict=True):
        torch.testing.assert_close(a.sum(0, keepdim=True), b)
    assert batch.intersection.shape == (1, 4)


# -- ignore_index equals slicing ----------------------------------------------------------------


def _ignored(y, fraction=0.3, seed=1, value=255):
    g = torch.Generator().manual_seed(seed)
    y = y.clone()
    y[torch.rand(y.shape, generator=g) < fraction] = value
    return y


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("empty_target", ["keep", "skip", "zero", "one"])
def test_ignore_index_equals_slicing_the_pixels_away_per_image(spatial, empty_target):
    x, y = logits_and_labels(spatial=spatial)
    y = _ignored(y)
    x = x.requires_grad_(True)
    kw = dict(empty_target=empty_target, include_background=False)
    out = DiceLoss(reduction="none", ignore_index=255, **kw)(x, y)
    out.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    for i in range(x.shape[0]):
        keep = (y[i] != 255).reshape(-1)
        xi = x[i].reshape(4, -1)[:, keep][None]  # (1, C, K): the kept pixels only
        yi = y[i].reshape(-1)[keep][None]
        ref = DiceLoss(reduction="none", **kw)(xi, yi)
        torch.testing.assert_close(out[i : i + 1], ref)
    # the gradient of ignored pixels is zero, and the rest equals the sliced gradient
    sliced_total = sum(
        DiceLoss(reduction="none", **kw)(
            x[i].reshape(4, -1)[:, (y[i] != 255).reshape(-1)][None],
            y[i].reshape(-1)[(y[i] != 255).reshape(-1)][None],
        ).sum()
        for i in range(x.shape[0])
    )
    sliced_total.backward()
    torch.testing.assert_close(grad, x.grad)
    assert (grad.movedim(1, -1)[y == 255] == 0).all()


INDEX_TARGET_LOSSES = [
    "dice",
    "generalized_dice",
    "tversky",
    "focal_tversky",
    "jaccard",
    "jaccard_metric",
    "lovasz_softmax",
]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(INDEX_TARGET_LOSSES),
    spatial=st.sampled_from([(4, 5), (2, 3, 4)]),
    reduce_over=st.sampled_from(["image", "batch"]),
    seed=st.integers(0, 1000),
)
def test_every_index_target_loss_ignores_by_slicing(name, spatial, reduce_over, seed):
    x, y = logits_and_labels(spatial=spatial, seed=seed)
    y = _ignored(y, seed=seed)
    y[0, 0] = 255  # at least one ignored pixel
    out = build_loss(name, ignore_index=255, reduce_over=reduce_over, reduction="none")(x, y)
    keep = (y != 255).reshape(3, -1)
    plain = build_loss(name, reduce_over=reduce_over, reduction="none")
    if reduce_over == "batch":
        xs = torch.cat([x[i].reshape(4, -1)[:, keep[i]] for i in range(3)], 1)[None]
        ys = torch.cat([y[i].reshape(-1)[keep[i]] for i in range(3)])[None]
        torch.testing.assert_close(out, plain(xs, ys).expand(3))
        return
    for i in range(3):
        xi = x[i].reshape(4, -1)[:, keep[i]][None]
        torch.testing.assert_close(out[i : i + 1], plain(xi, y[i].reshape(-1)[keep[i]][None]))


def test_ignore_index_equals_slicing_with_batch_reduction():
    x, y = logits_and_labels()
    y = _ignored(y)
    out = DiceLoss(reduce_over="batch", ignore_index=255, reduction="none")(x, y)
    keep = (y != 255).reshape(3, -1)
    pixels = torch.cat([x[i].reshape(4, -1)[:, keep[i]] for i in range(3)], 1)[None]
    labels = torch.cat([y[i].reshape(-1)[keep[i]] for i in range(3)])[None]
    ref = DiceLoss(reduction="none")(pixels, labels)
    torch.testing.assert_close(out, ref.expand(3))


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_ignore_index_is_element_wise_in_sigmoid_modes(mode):
    x, y = logits_and_labels()
    if mode == "binary":
        x, t = x[:, :1], (y > 1).double()[:, None]
    else:
        t = (y[:, None] > torch.arange(4).reshape(1, 4, 1, 1)).double()
    t = _ignored(t, value=-1)
    out = DiceLoss(mode=mode, ignore_index=-1, reduction="none", smooth_nr=0, smooth_dr=0)(x, t)
    p = torch.sigmoid(x)
    ref = torch.zeros(3, dtype=F64)
    for i in range(3):  # naive loop over images and channels, over the kept elements only
        for c in range(x.shape[1]):
            keep = t[i, c] != -1
            pi, gi = p[i, c][keep], t[i, c][keep]
            ref[i] += (1 - 2 * (pi * gi).sum() / (pi.sum() + gi.sum())) / x.shape[1]
    torch.testing.assert_close(out, ref)


def test_fully_ignored_image_is_invalid_and_leaves_the_mean():
    x, y = logits_and_labels()
    y[1] = 255
    x = x.requires_grad_(True)
    loss = DiceLoss(ignore_index=255, reduction="none")
    none = loss(x, y)
    assert none[1] == 0
    mean = DiceLoss(ignore_index=255)(x, y)
    torch.testing.assert_close(mean, (none[0] + none[2]) / 2)
    mean.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all()


def test_no_ignore_index_builds_no_mask():
    x, y = logits_and_labels()
    assert prepare_dense(x, y).mask is None
    assert DiceLoss(reduction="none").per_sample(x, y).valid is None


# -- empty targets ------------------------------------------------------------------------------


def test_apply_empty_target_rules():
    per_class = torch.tensor([[0.2, 0.8, 0.5], [0.4, 0.6, 0.9]], dtype=F64)
    present = torch.tensor([[True, False, True], [False, False, False]])
    keep, v = apply_empty_target(per_class, present, "keep")
    torch.testing.assert_close(keep, per_class.mean(1))
    assert v is None
    zero, _ = apply_empty_target(per_class, present, "zero")
    torch.testing.assert_close(zero, torch.tensor([0.7 / 3, 0.0], dtype=F64))
    one, _ = apply_empty_target(per_class, present, "one")
    torch.testing.assert_close(one, torch.tensor([1.7 / 3, 1.0], dtype=F64))
    skip, valid = apply_empty_target(per_class, present, "skip")
    torch.testing.assert_close(skip, torch.tensor([0.35, 0.0], dtype=F64))
    assert valid.tolist() == [True, False]


def test_empty_target_in_binary_mode():
    """An image with no foreground: ``keep`` gives 0 for an empty prediction and punishes false
    positives; ``skip`` leaves the image out of the mean; ``zero`` / ``one`` are constants."""
    x = torch.full((2, 1, 4, 4), -30.0, dtype=F64)  # predicts nothing
    x[1, 0, :2] = 30.0  # image 1 predicts 8 false-positive pixels
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    keep = DiceLoss(mode="binary", reduction="none")(x.clone().requires_grad_(True), y)
    assert keep[0] < 1e-6 and keep[1] > 0.99
    skip = DiceLoss(mode="binary", empty_target="skip")
    assert skip.per_sample(x, y).valid.tolist() == [False, False]
    assert skip(x, y) == 0
    zero = DiceLoss(mode="binary", empty_target="zero", reduction="none")(x, y)
    one = DiceLoss(mode="binary", empty_target="one", reduction="none")(x, y)
    assert zero.tolist() == [0.0, 0.0] and one.tolist() == [1.0, 1.0]
    xg = x.clone().requires_grad_(True)
    DiceLoss(mode="binary")(xg, y).backward()
    assert torch.isfinite(xg.grad).all() and (xg.grad[1] >= 0).all()  # pushes FPs down


def test_skip_with_batch_reduction_keeps_images_without_a_present_class():
    x, y = logits_and_labels(c=3)
    y[0] = 0  # image 0 has only background
    loss = DiceLoss(reduce_over="batch", include_background=False, empty_target="skip")
    out = loss.per_sample(x, y)
    assert out.valid is not None and out.valid.all()  # the batch has present classes
    assert torch.equal(out.values, out.values[:1].expand(3))


# -- precision ------------------------------------------------------------------------------


def test_half_input_sums_in_float32_without_overflow():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 300, 300, generator=g, dtype=F64)  # 9e4 pixels: more than fp16's max
    y = torch.randint(0, 2, (1, 300, 300), generator=g)
    ref = DiceLoss(reduction="none")(x.half().double(), y)
    out = DiceLoss(reduction="none")(x.half(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = DiceLoss()(x.bfloat16(), y)
    assert low.dtype == torch.float32


def test_zero_smoothing_0_over_0_is_finite():
    x = torch.full((1, 1, 3, 3), -200.0, requires_grad=True)
    y = torch.zeros(1, 3, 3)
    out = DiceLoss(mode="binary", smooth_nr=0.0, smooth_dr=0.0)(x, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


# -- errors -------------------------------------------------------------------------------------


def test_shape_and_channel_errors_name_the_argument():
    x, y = logits_and_labels()
    loss = DiceLoss()
    with pytest.raises(ValueError, match=r"`target`.*\(3, 5, 6\).*got \(3, 5, 7\)"):
        loss(x, torch.zeros(3, 5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` must have the input's 4 channels.*got 3"):
        loss(x, torch.zeros(3, 3, 5, 6))
    with pytest.raises(ValueError, match=r"4 channels.*or be class indices of shape \(3, 5, 6\)"):
        loss(x, torch.zeros(3, 7, 5, 6, dtype=torch.long))  # a 3-D target for a 2-D input
    with pytest.raises(ValueError, match=r"2 spatial dims.*got \(3, 2, 7, 5, 6\) \(4 or 3 spatial"):
        loss(x, torch.zeros(3, 2, 7, 5, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`input`.*at least one spatial dim"):
        loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`input` in binary mode must have one channel"):
        DiceLoss(mode="binary")(x, y)
    with pytest.raises(ValueError, match=r"`input` in multiclass mode needs at least 2"):
        loss(x[:, :1], y)
    with pytest.raises(ValueError, match=r"`target` in multilabel mode must have the input"):
        DiceLoss(mode="multilabel")(x, y)
    with pytest.raises(TypeError, match="floating-point"):
        loss(y[:, None].expand(3, 4, 5, 6), y)


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match=r"`mode` must be one of.*Did you mean 'binary'"):
        DiceLoss(mode="binray")
    with pytest.raises(ValueError, match=r"`reduce_over` must be one of"):
        DiceLoss(reduce_over="pixel")
    with pytest.raises(ValueError, match=r"`empty_target` must be one of"):
        DiceLoss(empty_target="nan")
    with pytest.raises(ValueError, match="include_background"):
        DiceLoss(mode="binary", include_background=False)
    with pytest.raises(TypeError, match="ignore_index"):
        DiceLoss(ignore_index=0.5)


def test_label_out_of_range_names_the_label_without_validate_args():
    x, y = logits_and_labels()
    y[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"outside \[0, 3\].*\[7\]"):
        DiceLoss()(x, y)
    y[1, 2, 3] = -1
    with pytest.raises(ValueError, match=r"\[-1\].*ignore_index=-1"):
        DiceLoss()(x, y)
    with pytest.raises(ValueError, match=r"outside \[0, 3\].*\[-1\]"):
        DiceLoss(validate_args=True)(x, y)
    y[1, 2, 3] = 255
    DiceLoss(ignore_index=255, validate_args=True)(x, y)  # an ignored label is fine


def test_value_checks_with_validate_args():
    x, y = logits_and_labels()
    xb, yb = x[:, :1], (y > 1).long()
    yb[0, 0, 0] = 2
    DiceLoss(mode="binary")(xb, yb)  # no pass over the values by default
    with pytest.raises(ValueError, match=r"`target` of binary mode.*\[0, 1\].*2"):
        DiceLoss(mode="binary", validate_args=True)(xb, yb)
    soft = torch.softmax(x, 1)
    soft[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"`target`.*\[0, 1\].*1\.5"):
        DiceLoss(validate_args=True)(x, soft)
    with pytest.raises(ValueError, match=r"`input` \(probabilities.*1\.5"):
        DiceLoss(validate_args=True, from_logits=False)(soft, y)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`input`.*NaN"):
        DiceLoss(validate_args=True)(x, y)


# -- no host reads ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("validate_args", [False, True])
@pytest.mark.parametrize("reduce_over", ["image", "batch"])
def test_no_host_read_with_ignore_index(mode, validate_args, reduce_over):
    x, y = logits_and_labels()
    if mode == "binary":
        x, y = x[:, :1], (y > 1).long()
    elif mode == "multilabel":
        y = (y[:, None] > torch.arange(4).reshape(1, 4, 1, 1)).long()
    y = _ignored(y)
    loss = DiceLoss(
        mode=mode,
        ignore_index=255,
        validate_args=validate_args,
        reduce_over=reduce_over,
        empty_target="skip",
    )
    x = x.requires_grad_(True)
    with no_host_sync():
        loss(x, y, sample_weight=torch.rand(3, dtype=F64)).backward()


@pytest.mark.compile
def test_compiles_with_fullgraph_and_equals_eager():
    """No data-dependent branch or shape in the contract: one graph, ignore_index included."""
    torch._dynamo.reset()
    x, y = logits_and_labels()
    y = _ignored(y)
    loss = DiceLoss(ignore_index=255, empty_target="skip", reduction="none")
    compiled = torch.compile(loss, fullgraph=True)
    torch.testing.assert_close(compiled(x, y), loss(x, y))


def test_batch_reduction_marks_the_instance_as_a_batch_statistic():
    assert DiceLoss(reduce_over="batch").batch_statistic
    assert not DiceLoss().batch_statistic and not DiceLoss.batch_statistic
