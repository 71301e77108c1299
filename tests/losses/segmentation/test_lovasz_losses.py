"""Lovász-softmax and Lovász-hinge: a float64 loop written from the paper's Algorithm 1, the
Jaccard loss at hard predictions, ignore_index as slicing, per-image vs per-batch, empty classes,
and smp's LovaszLoss side by side (values and gradients; float32, as smp's gradient helper casts
to float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_losses.losses.segmentation import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad
from lightning_losses.testing import no_host_sync

F64 = torch.float64


def inputs(n=3, c=4, spatial=(5, 6), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, *spatial, generator=g, dtype=F64) * 2).to(dtype)
    y = torch.randint(0, c, (n, *spatial), generator=g)
    y[0][y[0] == 2] = 0  # class 2 absent from image 0
    return x, y


def naive_extension(errors, fg):
    """Algorithm 1 of Berman et al. on 1-D float64 lists: sort, Jaccard prefix, dot."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total = sum(fg)
    loss, previous, inter, union = 0.0, 0.0, total, total
    for i in order:
        inter -= fg[i]
        union += 1 - fg[i]
        jaccard = 1 - inter / union
        loss += errors[i] * (jaccard - previous)
        previous = jaccard
    return loss


def naive_softmax(x, y, classes="present"):
    p = torch.softmax(x, 1)
    out = []
    for i in range(x.shape[0]):
        terms = []
        for c in range(x.shape[1]):
            fg = (y[i] == c).double().reshape(-1).tolist()
            if classes == "present" and sum(fg) == 0:
                continue
            pc = p[i, c].reshape(-1).tolist()
            terms.append(naive_extension([abs(a - b) for a, b in zip(fg, pc, strict=True)], fg))
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=F64)


def naive_hinge(x, t):
    out = []
    for i in range(x.shape[0]):
        terms = []
        for c in range(x.shape[1]):
            fg = t[i, c].reshape(-1).tolist()
            z = x[i, c].reshape(-1).tolist()
            errors = [max(0.0, 1 - zi * (2 * gi - 1)) for zi, gi in zip(z, fg, strict=True)]
            terms.append(naive_extension(errors, fg))
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=F64)


SPATIAL = pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)], ids=["2d", "3d"])


@SPATIAL
def test_lovasz_softmax_matches_algorithm_1(spatial):
    x, y = inputs(spatial=spatial)
    torch.testing.assert_close(LovaszSoftmaxLoss(reduction="none")(x, y), naive_softmax(x, y))
    keep = LovaszSoftmaxLoss(reduction="none", empty_target="keep")(x, y)
    torch.testing.assert_close(keep, naive_softmax(x, y, classes="all"))


@SPATIAL
def test_lovasz_hinge_matches_algorithm_1(spatial):
    x, y = inputs(spatial=spatial)
    t = (y[:, None] == torch.arange(4).reshape(1, 4, *[1] * len(spatial))).double()
    torch.testing.assert_close(LovaszHingeLoss(reduction="none")(x, t), naive_hinge(x, t))
    binary = LovaszHingeLoss(mode="binary", reduction="none")(x[:, 1:2], t[:, 1])
    torch.testing.assert_close(binary, naive_hinge(x[:, 1:2], t[:, 1:2]))


def test_lovasz_softmax_at_a_hard_prediction_is_the_jaccard_loss():
    """The Lovász extension equals the set function at indicator vectors (the paper's premise):
    with one-hot probabilities, each class's term is 1 - IoU of the hard masks."""
    _, y = inputs()
    pred = torch.randint(0, 4, y.shape, generator=torch.Generator().manual_seed(5))
    probs = F.one_hot(pred, 4).movedim(-1, 1).double()
    out = LovaszSoftmaxLoss(from_logits=False, empty_target="keep", reduction="none")(probs, y)
    ref = []
    for i in range(3):
        ious = []
        for c in range(4):
            a, b = pred[i] == c, y[i] == c
            union = (a | b).sum().item()
            ious.append(1 - (a & b).sum().item() / union if union else 0.0)
        ref.append(sum(ious) / 4)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=F64))


def test_lovasz_grad_of_sorted_ground_truth():
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=F64)
    # J_k = 1 - (2 - cum_g) / (2 + cum_(1-g)): 1/2, 2/3, 1, 1
    torch.testing.assert_close(lovasz_grad(g), torch.tensor([[0.5, 1 / 6, 1 / 3, 0.0]], dtype=F64))


def test_batch_reduction_is_the_batch_as_one_image():
    x, y = inputs()
    out = LovaszSoftmaxLoss(reduce_over="batch", reduction="none")(x, y)
    ref = naive_softmax(x.movedim(0, 1).reshape(1, 4, -1), y.reshape(1, -1))
    torch.testing.assert_close(out, ref.expand(3))


@pytest.mark.parametrize("reduce_over", ["image", "batch"])
def test_ignore_index_equals_slicing(reduce_over):
    x, y = inputs()
    g = torch.Generator().manual_seed(1)
    y[torch.rand(y.shape, generator=g) < 0.3] = 255
    loss = LovaszSoftmaxLoss(ignore_index=255, reduce_over=reduce_over, reduction="none")
    out = loss(x, y)
    keep = (y != 255).reshape(3, -1)
    if reduce_over == "image":
        for i in range(3):
            xi = x[i].reshape(4, -1)[:, keep[i]][None]
            yi = y[i].reshape(-1)[keep[i]][None]
            torch.testing.assert_close(out[i : i + 1], naive_softmax(xi, yi))
    else:
        xs = torch.cat([x[i].reshape(4, -1)[:, keep[i]] for i in range(3)], 1)[None]
        ys = torch.cat([y[i].reshape(-1)[keep[i]] for i in range(3)])[None]
        torch.testing.assert_close(out, naive_softmax(xs, ys).expand(3))
    # the hinge, element-wise in multilabel mode
    t = (torch.rand(x.shape, generator=g) < 0.4).double()
    t[torch.rand(x.shape, generator=g) < 0.3] = -1
    hinge = LovaszHingeLoss(ignore_index=-1, reduction="none")(x, t)
    ref = []
    for i in range(3):
        terms = []
        for c in range(4):
            kept = t[i, c] != -1
            xi, ti = x[i, c][kept].reshape(1, 1, -1), t[i, c][kept].reshape(1, 1, -1)
            terms.append(naive_hinge(xi, ti)[0])
        ref.append(sum(terms) / 4)
    torch.testing.assert_close(hinge, torch.stack(ref))


def test_ignored_pixels_get_no_gradient_and_no_host_read():
    x, y = inputs()
    y[1, :2] = 255
    x = x.requires_grad_(True)
    with no_host_sync():
        LovaszSoftmaxLoss(ignore_index=255, validate_args=True)(x, y).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[1, :, :2] == 0).all()


def test_empty_classes_and_images():
    x, y = inputs()
    # a class absent from an image keeps its term under "keep": the largest error (max p_c)
    p = torch.softmax(x, 1)
    keep = LovaszSoftmaxLoss(empty_target="keep", reduction="none")(x, y)
    skip = LovaszSoftmaxLoss(reduction="none")(x, y)
    present_terms = skip[0] * 3  # image 0 has 3 present classes
    torch.testing.assert_close(keep[0], (present_terms + p[0, 2].max()) / 4)
    # an image of background only, with include_background=False: invalid under "skip"
    y[2] = 0
    out = LovaszSoftmaxLoss(include_background=False).per_sample(x, y)
    assert out.valid.tolist() == [True, True, False]
    # the hinge on an empty image pushes the largest logit below -1
    xe = torch.full((1, 1, 3, 3), -2.0, dtype=F64)
    xe[0, 0, 1, 1] = 0.5
    e = LovaszHingeLoss(mode="binary")(xe, torch.zeros(1, 3, 3))
    torch.testing.assert_close(e, torch.tensor(1.5, dtype=F64))


def test_saturated_logits_give_finite_values_and_gradients():
    x, y = inputs()
    x = (torch.sign(x) * 100).requires_grad_(True)
    for loss in (LovaszSoftmaxLoss(), LovaszSoftmaxLoss(reduce_over="batch")):
        loss(x, y).backward()
        assert torch.isfinite(x.grad).all()


def test_option_errors():
    with pytest.raises(ValueError, match=r"`mode` of the Lovász-hinge.*multiclass"):
        LovaszHingeLoss(mode="multiclass")
    with pytest.raises(ValueError, match="from_logits"):
        LovaszHingeLoss(from_logits=False)
    x, y = inputs()
    with pytest.raises(ValueError, match=r"outside \[0, 3\].*\[9\]"):
        y[0, 0, 0] = 9
        LovaszSoftmaxLoss()(x, y)


# -- smp ----------------------------------------------------------------------------------------

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")


def same_values_and_grads(ours, theirs, x, y):
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    va, vb = ours(a, y), theirs(b, y)
    torch.testing.assert_close(va, vb)
    va.backward()
    vb.backward()
    torch.testing.assert_close(a.grad, b.grad)


@SPATIAL
@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_softmax_equals_smp(spatial, per_image):
    x, y = inputs(spatial=spatial, dtype=torch.float32)
    ro = "image" if per_image else "batch"
    theirs = smp_losses.LovaszLoss("multiclass", per_image=per_image)
    same_values_and_grads(LovaszSoftmaxLoss(reduce_over=ro), theirs, x, y)
    y[1, :2] = 255
    theirs = smp_losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=255)
    same_values_and_grads(LovaszSoftmaxLoss(reduce_over=ro, ignore_index=255), theirs, x, y)


@pytest.mark.parametrize("per_image", [True, False])
def test_lovasz_hinge_equals_smp_in_binary_mode(per_image):
    x, y = inputs(dtype=torch.float32)
    xb, yb = x[:, :1], (y == 1).long()
    ro = "image" if per_image else "batch"
    theirs = smp_losses.LovaszLoss("binary", per_image=per_image)
    same_values_and_grads(LovaszHingeLoss(mode="binary", reduce_over=ro), theirs, xb, yb)
    same_values_and_grads(
        LovaszHingeLoss(reduce_over=ro), theirs, xb, yb[:, None].float()
    )  # multilabel on one channel is the binary loss


def test_smp_pools_multilabel_channels_into_one_problem():
    """Where they differ: smp's multilabel Lovász pools all channels of an image into one binary
    problem; here each channel is its own binary problem (the paper's per-class IoU) and the
    channels are averaged."""
    x, y = inputs(dtype=torch.float32)
    t = (y[:, None] == torch.arange(4).reshape(1, 4, 1, 1)).float()
    ours = LovaszHingeLoss()(x, t)
    theirs = smp_losses.LovaszLoss("multilabel", per_image=True)(x, t)
    assert abs(float(ours - theirs)) > 1e-3
    per_channel = [LovaszHingeLoss()(x[:, c : c + 1], t[:, c : c + 1]) for c in range(4)]
    torch.testing.assert_close(ours, sum(per_channel) / 4)


def test_smp_fails_on_a_fully_ignored_image():
    """Where they differ: smp's per-image Lovász-softmax returns an empty tensor when the first
    image is fully ignored and raises when a later one is; here such an image is not valid and
    leaves the mean (ignoring = slicing: the image is not there)."""
    x, y = inputs(dtype=torch.float32)
    y[0] = 255
    theirs = smp_losses.LovaszLoss("multiclass", per_image=True, ignore_index=255)
    assert theirs(x, y).numel() == 0
    y2 = y.roll(-1, 0)  # the ignored image last
    with pytest.raises(RuntimeError):
        theirs(x.roll(-1, 0), y2)
    ours = LovaszSoftmaxLoss(ignore_index=255)
    torch.testing.assert_close(ours(x, y), LovaszSoftmaxLoss()(x[1:], y[1:]))
    torch.testing.assert_close(ours(x.roll(-1, 0), y2), ours(x, y))
