"""The soft skeleton of clDice: morphology against SciPy, known skeletons, honoured iterations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_losses.topology import (
    Skeletonizer,
    SoftSkeletonizer,
    soft_dilate,
    soft_erode,
    soft_open,
    soft_skeleton,
)

from .shapes import hline


def _batch(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.float64)[None, None]


@pytest.mark.parametrize("dims", [2, 3])
def test_erosion_and_dilation_equal_scipy_grey_morphology(dims):
    x = np.random.default_rng(dims).random((5,) * dims)
    cross = ndimage.generate_binary_structure(dims, 1)
    t = _batch(x)
    # Border pixels see only their in-image neighbours, as with SciPy's "nearest" mode.
    np.testing.assert_allclose(
        soft_erode(t)[0, 0].numpy(), ndimage.grey_erosion(x, footprint=cross, mode="nearest")
    )
    np.testing.assert_allclose(
        soft_dilate(t)[0, 0].numpy(), ndimage.grey_dilation(x, size=(3,) * dims, mode="nearest")
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_skeleton_equals_the_formula_computed_with_scipy(dims):
    x = np.random.default_rng(10 + dims).random((7,) * dims)
    cross = ndimage.generate_binary_structure(dims, 1)

    def erode(a):
        return ndimage.grey_erosion(a, footprint=cross, mode="nearest")

    def opened(a):
        return ndimage.grey_dilation(erode(a), size=(3,) * dims, mode="nearest")

    skel = np.maximum(x - opened(x), 0)
    img = x
    for _ in range(4):
        img = erode(img)
        delta = np.maximum(img - opened(img), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    np.testing.assert_allclose(soft_skeleton(_batch(x), 4)[0, 0].numpy(), skel, atol=1e-12)


def test_skeleton_of_a_one_pixel_line_is_the_line():
    line = hline(width=1)
    np.testing.assert_array_equal(soft_skeleton(_batch(line), 3)[0, 0].numpy(), line)


def test_skeleton_of_a_thick_line_is_its_centre_row():
    bar = hline(row=16, width=5, start=4, stop=28)
    skel = soft_skeleton(_batch(bar), 3)[0, 0].numpy()
    assert set(np.unique(skel)) <= {0.0, 1.0}
    rows = np.nonzero(skel.any(1))[0]
    np.testing.assert_array_equal(rows, [16])
    # The centre row is covered except where the bar's ends were eroded away.
    assert skel[16].sum() >= (28 - 4) - 4


def test_num_iter_changes_the_result_until_the_map_is_eroded_away():
    # A bar 7 pixels thick joined to one 3 pixels thick: iteration 1 finds the thin bar's
    # centre, iteration 3 the thick bar's; from then on the eroded map is empty.
    m = np.zeros((32, 48), dtype=bool)
    m[10:17, 4:24] = True
    m[12:15, 24:44] = True
    x = _batch(m)
    skels = [soft_skeleton(x, k) for k in range(8)]
    assert skels[0].sum() == 0
    assert skels[1].sum() > 0
    assert skels[1][..., :, 4:24].sum() == 0 and skels[1][..., :, 24:44].sum() > 0
    assert not torch.equal(skels[1], skels[2]) or not torch.equal(skels[2], skels[3])
    assert skels[3][..., :, 4:24].sum() > 0
    for k in range(4, 7):
        assert torch.equal(skels[k], skels[k + 1])


def test_three_dimensional_tube_has_its_axis_as_skeleton():
    vol = np.zeros((16, 16, 24), dtype=bool)
    vol[6:11, 6:11, 3:21] = True  # a 5 x 5 square tube along the last axis
    skel = soft_skeleton(_batch(vol), 3)[0, 0].numpy()
    support = np.argwhere(skel > 0)
    assert len(support) > 0
    assert set(support[:, 0]) == {8} and set(support[:, 1]) == {8}
    assert skel[8, 8].sum() >= 18 - 4


def test_gradients_are_finite_and_reach_the_input():
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    soft_skeleton(x, 3).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_soft_skeletonizer_is_a_skeletonizer_and_keeps_the_shape():
    skeletonizer = SoftSkeletonizer(num_iter=5)
    assert isinstance(skeletonizer, Skeletonizer)
    x = torch.rand(2, 3, 10, 11)
    assert skeletonizer(x).shape == x.shape
    torch.testing.assert_close(skeletonizer(x), soft_skeleton(x, 5))
    assert "num_iter=5" in repr(skeletonizer)


def test_opening_is_the_dilation_of_the_erosion():
    # The cross erosion and box dilation are not adjoint, so the opening may exceed the input
    # (the skeleton's relu absorbs that); it is exactly their composition.
    x = torch.rand(3, 2, 9, 9)
    torch.testing.assert_close(soft_open(x), soft_dilate(soft_erode(x)), rtol=0, atol=0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`x` must be"):
        soft_skeleton(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        soft_skeleton(torch.ones(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="num_iter"):
        soft_skeleton(torch.rand(1, 1, 8, 8), -1)
    with pytest.raises(ValueError, match="num_iter"):
        SoftSkeletonizer(num_iter=2.5)
