"""Boundary loss and Hausdorff-DT loss: float64 references from the papers' formulas, the
device distance transform against SciPy, and the Hausdorff-DT loss against MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_losses.losses.segmentation import BoundaryLoss, HausdorffDTLoss
from lightning_losses.losses.segmentation._distance import (
    squared_boundary_distance,
    squared_distance_to,
)
from lightning_losses.testing import no_host_sync
from lightning_losses.topology import DistanceTransform

SPATIAL = pytest.mark.parametrize("spatial", [(9, 11), (5, 6, 7)], ids=["2d", "3d"])


def _blobs(n: int, spatial: tuple[int, ...], k: int, seed: int = 0) -> torch.Tensor:
    """Index masks with one box per image of class 1..k-1 (and background 0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, *spatial, dtype=torch.long)
    for i in range(n):
        lo = [int(torch.randint(0, s // 2, (1,), generator=g)) for s in spatial]
        hi = [
            lo_ + 2 + int(torch.randint(0, s // 2, (1,), generator=g))
            for lo_, s in zip(lo, spatial, strict=False)
        ]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))
        y[(i, *box)] = 1 + i % (k - 1)
    return y


def _distance_maps(y: torch.Tensor, k: int) -> torch.Tensor:
    transform = DistanceTransform(num_classes=k)
    return torch.stack([transform({"mask": m})["distance"] for m in y])


# -- the device distance transform ---------------------------------------------------------


@SPATIAL
def test_device_distance_transform_equals_scipy(spatial):
    rng = np.random.default_rng(0)
    masks = rng.random((3, *spatial)) > 0.7
    got = squared_distance_to(torch.from_numpy(masks), len(spatial))
    for m, d in zip(masks, got, strict=False):
        expected = ndimage.distance_transform_edt(~m) ** 2
        np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-4)


@SPATIAL
def test_boundary_distance_is_edt_inside_plus_edt_outside_and_zero_without_boundary(spatial):
    rng = np.random.default_rng(1)
    masks = rng.random((4, *spatial)) > 0.5
    masks[2] = False  # empty
    masks[3] = True  # full
    got = squared_boundary_distance(torch.from_numpy(masks), len(spatial)).sqrt()
    for m, d in zip(masks[:2], got[:2], strict=False):
        expected = ndimage.distance_transform_edt(m) + ndimage.distance_transform_edt(~m)
        np.testing.assert_allclose(d.numpy(), expected, rtol=0, atol=1e-4)
    assert torch.equal(got[2:], torch.zeros_like(got[2:]))


# -- boundary loss ---------------------------------------------------------------------------


def _boundary_reference(logits, phi, include_background):
    """Kervadec et al. eq. 5, a loop: mean over pixels of phi * softmax, mean over classes."""
    p = torch.softmax(logits.double(), 1)
    n, k = p.shape[:2]
    first = 0 if include_background else 1
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        out[i] = sum((phi[i, c].double() * p[i, c]).mean() for c in range(first, k)) / (k - first)
    return out


@SPATIAL
@pytest.mark.parametrize("include_background", [False, True])
def test_boundary_loss_equals_the_formula_in_float64(spatial, include_background):
    torch.manual_seed(0)
    k = 3
    y = _blobs(4, spatial, k)
    phi = _distance_maps(y, k)
    x = torch.randn(4, k, *spatial, dtype=torch.float64)
    loss = BoundaryLoss(include_background=include_background, reduction="none")
    torch.testing.assert_close(
        loss(x, y, distance=phi), _boundary_reference(x, phi, include_background)
    )


def test_boundary_loss_is_smallest_at_the_target_and_negative_there():
    spatial = (16, 16)
    y = torch.zeros(1, *spatial, dtype=torch.long)
    y[0, 4:12, 5:11] = 1
    phi = _distance_maps(y, 2)
    loss = BoundaryLoss(from_logits=False)
    exact = torch.nn.functional.one_hot(y, 2).movedim(-1, 1).double()
    grown = exact.clone()
    grown[0, 1, 3:13, 4:12], grown[0, 0, 3:13, 4:12] = 1.0, 0.0
    shrunk = exact.clone()
    shrunk[0, 1, 4:12, 5:11], shrunk[0, 0, 4:12, 5:11] = 0.0, 1.0
    shrunk[0, 1, 6:10, 7:9], shrunk[0, 0, 6:10, 7:9] = 1.0, 0.0
    at_target = loss(exact, y, distance=phi)
    assert at_target < 0
    assert at_target < loss(grown, y, distance=phi)
    assert at_target < loss(shrunk, y, distance=phi)


def test_boundary_loss_takes_no_gradient_through_the_distance_map():
    y = _blobs(2, (8, 8), 2)
    phi = _distance_maps(y, 2).requires_grad_(True)
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    BoundaryLoss()(x, y, distance=phi).backward()
    assert phi.grad is None and x.grad is not None


def test_boundary_loss_ignored_pixels_leave_the_mean():
    torch.manual_seed(0)
    y = _blobs(2, (8, 10), 2)
    phi = _distance_maps(y, 2)
    x = torch.randn(2, 2, 8, 10, dtype=torch.float64)
    y_ignored = y.clone()
    y_ignored[:, :, 8:] = 255
    got = BoundaryLoss(ignore_index=255, reduction="none")(x, y_ignored, distance=phi)
    sliced = BoundaryLoss(reduction="none")(x[..., :8], y[..., :8], distance=phi[..., :8])
    torch.testing.assert_close(got, sliced)


def test_boundary_loss_distance_of_the_wrong_layout_is_a_clear_error():
    y = _blobs(2, (8, 8), 2)
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(ValueError, match=r"`distance` must have the logits' shape"):
        BoundaryLoss()(x, y, distance=torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match="distance"):
        BoundaryLoss()(x, y)


def test_boundary_loss_reads_nothing_back_to_the_host():
    y = _blobs(2, (8, 8), 2)
    phi = _distance_maps(y, 2)
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    with no_host_sync():
        BoundaryLoss()(x, y, distance=phi).backward()


# -- Hausdorff-DT loss -----------------------------------------------------------------------


def _field(mask: np.ndarray) -> np.ndarray:
    """Karimi's distance to the boundary, with SciPy (0 for an empty or full mask)."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return ndimage.distance_transform_edt(mask) + ndimage.distance_transform_edt(~mask)


def _hausdorff_reference(logits, y, alpha, include_background):
    """Karimi & Salcudean eq. 8, a loop over images and classes in float64."""
    p = torch.softmax(logits.double(), 1)
    n, k = p.shape[:2]
    g = torch.nn.functional.one_hot(y, k).movedim(-1, 1).double()
    first = 0 if include_background else 1
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        terms = []
        for c in range(first, k):
            d_p = torch.from_numpy(_field(p[i, c].detach().numpy() > 0.5))
            d_g = torch.from_numpy(_field(g[i, c].numpy() > 0.5))
            terms.append(((p[i, c] - g[i, c]) ** 2 * (d_p**alpha + d_g**alpha)).mean())
        out[i] = sum(terms) / len(terms)
    return out


@SPATIAL
@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_hausdorff_dt_equals_the_formula_in_float64(spatial, alpha):
    torch.manual_seed(0)
    k = 3
    y = _blobs(4, spatial, k)
    x = torch.randn(4, k, *spatial, dtype=torch.float64) * 2
    loss = HausdorffDTLoss(alpha=alpha, reduction="none")
    torch.testing.assert_close(loss(x, y), _hausdorff_reference(x, y, alpha, False))


@SPATIAL
@pytest.mark.parametrize("reduce_over", ["image", "batch"])
def test_hausdorff_dt_equals_monai_in_value_and_gradient(spatial, reduce_over):
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(0)
    k = 3
    y = _blobs(3, spatial, k)
    x = (torch.randn(3, k, *spatial, dtype=torch.float64) * 2).requires_grad_(True)
    ours = HausdorffDTLoss(include_background=True, reduce_over=reduce_over)(x, y)
    x2 = x.detach().clone().requires_grad_(True)
    theirs = monai_losses.HausdorffDTLoss(
        include_background=True, softmax=True, to_onehot_y=True, batch=reduce_over == "batch"
    )(x2, y.unsqueeze(1))
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_hausdorff_dt_is_zero_at_a_perfect_prediction_and_grows_with_distant_errors():
    y = torch.zeros(1, 20, 20, dtype=torch.long)
    y[0, 5:15, 5:15] = 1
    loss = HausdorffDTLoss(mode="binary", from_logits=False)
    exact = y[:, None].double()
    near, far = exact.clone(), exact.clone()
    near[0, 0, 4, 8] = 1.0  # one false positive next to the boundary
    far[0, 0, 0, 0] = 1.0  # one false positive far from it
    assert loss(exact, y) == 0
    assert 0 < loss(near, y) < loss(far, y)


def test_hausdorff_dt_reads_nothing_back_to_the_host():
    y = _blobs(2, (8, 8), 2)
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    with no_host_sync():
        HausdorffDTLoss()(x, y).backward()
    assert torch.isfinite(x.grad).all()
