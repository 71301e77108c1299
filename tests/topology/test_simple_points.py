"""Simple-point skeletonization: the simple-point test against its definition, topology kept on
shapes with known Betti numbers, straight-through gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_losses.topology import Skeletonizer
from lightning_losses.topology.persistence import betti_numbers
from lightning_losses.topology.simple_points import (
    SimplePointSkeletonizer,
    simple_point_skeleton,
    simple_points,
)

from .shapes import disk, figure_eight, hline, ring


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask, dtype=torch.float64)[None, None]


def _locally_simple(patch: np.ndarray) -> bool:
    """Rosenfeld's local definition: in the 3 x 3 neighbourhood without its centre, one
    8-component of foreground and one 4-component of background 4-adjacent to the centre."""
    ring8 = patch.copy()
    ring8[1, 1] = False
    _, n_fg = ndimage.label(ring8, structure=np.ones((3, 3)))
    bg_mask = ~patch
    bg_mask[1, 1] = False
    bg, _ = ndimage.label(bg_mask)  # 4-connectivity
    touching = {bg[r, c] for r, c in ((0, 1), (1, 0), (1, 2), (2, 1))} - {0}
    return n_fg == 1 and len(touching) == 1


def test_simple_point_test_equals_the_local_definition_on_all_256_neighbourhoods():
    patches = []
    for bits in itertools.product((False, True), repeat=8):
        patch = np.ones((3, 3), bool)
        patch.flat[[0, 1, 2, 3, 5, 6, 7, 8]] = bits
        patches.append(patch)
    # Each patch centred in a 5 x 5 background frame.
    batch = np.zeros((256, 1, 5, 5), bool)
    for i, patch in enumerate(patches):
        batch[i, 0, 1:4, 1:4] = patch
    found = simple_points(torch.from_numpy(batch))[:, 0, 2, 2].numpy()
    expected = np.array([_locally_simple(p) for p in patches])
    np.testing.assert_array_equal(found, expected)
    assert 0 < expected.sum() < 256


def test_deleting_a_pixel_keeps_the_betti_numbers_exactly_when_it_is_simple():
    rng = np.random.default_rng(0)
    for _ in range(3):
        mask = rng.random((9, 9)) < 0.55
        simple = simple_points(_t(mask))[0, 0].numpy()
        base = betti_numbers(mask)
        for r, c in zip(*np.nonzero(mask), strict=True):
            smaller = mask.copy()
            smaller[r, c] = False
            assert np.array_equal(betti_numbers(smaller), base) == simple[r, c], (r, c)


@pytest.mark.parametrize(
    ("name", "mask", "betti"),
    [
        ("ring", ring(40, outer=14.0, inner=6.0), [1, 1]),
        ("bar", hline(size=32, row=16, width=7, start=3, stop=29), [1, 0]),
        ("figure eight", figure_eight(), [1, 2]),
        ("disk", disk(32, 9.0), [1, 0]),
    ],
)
def test_skeleton_keeps_topology_and_is_thin(name, mask, betti):
    for num_iter in (1, 3, 20):
        skel = simple_point_skeleton(_t(mask), num_iter, probabilistic=False)[0, 0].numpy() > 0
        np.testing.assert_array_equal(betti_numbers(skel), betti, err_msg=f"{name}, {num_iter}")
        assert (skel <= mask).all()
    # Converged: no 2 x 2 block is left fully in the skeleton, and it is much smaller.
    blocks = skel[:-1, :-1] & skel[1:, :-1] & skel[:-1, 1:] & skel[1:, 1:]
    assert not blocks.any() and skel.sum() < 0.5 * mask.sum()


def test_num_iter_is_honoured():
    # Each iteration peels about one layer per side of a thick shape (the subfield sweeps let
    # a thin one collapse in one iteration).
    big = disk(64, 28.0)
    sizes = [simple_point_skeleton(_t(big), k, probabilistic=False).sum() for k in (0, 1, 2, 4)]
    assert sizes[0] == big.sum()
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]


def test_straight_through_gradient_reaches_every_pixel_not_deleted():
    mask = _t(ring())
    probs = (0.2 + 0.6 * mask).requires_grad_(True)
    skel = simple_point_skeleton(probs, 10, probabilistic=False)
    skel.sum().backward()
    # Skeleton and background pixels pass the gradient on (identity); deleted pixels do not.
    deleted = (mask > 0) & (skel.detach() == 0)
    torch.testing.assert_close(probs.grad, (~deleted).double())
    assert set(torch.unique(skel.detach()).tolist()) == {0.0, 1.0}


def test_probabilistic_binarisation_is_sampled_and_differentiable():
    mask = _t(ring())
    torch.manual_seed(0)
    sure = simple_point_skeleton(mask.clamp(0.001, 0.999), 10)  # confident: noise flips nothing
    torch.testing.assert_close(sure, simple_point_skeleton(mask, 10, probabilistic=False))
    probs = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64, requires_grad=True)
    draws = [simple_point_skeleton(probs, 0) for _ in range(2)]
    assert not torch.equal(draws[0], draws[1])
    draws[0].sum().backward()
    assert probs.grad.abs().sum() > 0


def test_skeletonizer_interface_and_bad_input():
    skeletonizer = SimplePointSkeletonizer(num_iter=4, probabilistic=False)
    assert isinstance(skeletonizer, Skeletonizer) and "num_iter=4" in repr(skeletonizer)
    x = torch.rand(2, 3, 12, 12)
    assert skeletonizer(x).shape == x.shape
    with pytest.raises(ValueError, match="2-D only"):
        skeletonizer(torch.rand(1, 1, 4, 4, 4))
    with pytest.raises(TypeError, match="floating-point"):
        simple_point_skeleton(torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tau"):
        SimplePointSkeletonizer(tau=0.0)
