"""Betti numbers of shapes with known topology, cross-checked with cripser, and Betti matching."""

from __future__ import annotations

import cripser
import numpy as np
import pytest

from lightning_losses.topology.persistence import (
    betti_matching_error,
    betti_number_error,
    betti_numbers,
    euler_characteristic,
)

from .shapes import disk, figure_eight, hline, hollow_ball, ring, torus, two_disks

KNOWN = [
    ("disk", disk(), [1, 0]),
    ("ring", ring(), [1, 1]),
    ("two disks", two_disks(), [2, 0]),
    ("figure eight", figure_eight(), [1, 2]),
    ("empty", np.zeros((9, 9), bool), [0, 0]),
    ("full", np.ones((9, 9), bool), [1, 0]),
    ("torus", torus(), [1, 1, 0]),
    ("hollow ball", hollow_ball(), [1, 0, 1]),
    ("solid ball", hollow_ball(inner=0.0), [1, 0, 0]),
]


@pytest.mark.parametrize(("name", "mask", "betti"), KNOWN, ids=[k[0] for k in KNOWN])
def test_betti_numbers_of_known_shapes(name, mask, betti):
    np.testing.assert_array_equal(betti_numbers(mask), betti)
    # Euler-Poincare: chi is the alternating sum of the Betti numbers.
    assert euler_characteristic(mask) == sum((-1) ** k * b for k, b in enumerate(betti))
    assert all(v == 0 for v in betti_matching_error(mask, mask).values())


def test_connectivity_convention_foreground_8_background_4():
    diamond = np.zeros((5, 5), bool)
    diamond[1, 2] = diamond[2, 1] = diamond[2, 3] = diamond[3, 2] = True
    np.testing.assert_array_equal(betti_numbers(diamond), [1, 1])
    diagonal = np.eye(6, dtype=bool)
    np.testing.assert_array_equal(betti_numbers(diagonal), [1, 0])


def _cripser_betti(mask: np.ndarray) -> list[int]:
    """Bars alive at the mask's level of the superlevel filtration, per dimension."""
    bars = cripser.compute_ph(1.0 - mask, filtration="T", maxdim=mask.ndim - 1)
    alive = bars[bars[:, 1] == 0]
    return [int((alive[:, 0] == k).sum()) for k in range(mask.ndim)]


@pytest.mark.parametrize("shape", [(12, 14), (7, 8, 9)])
def test_betti_numbers_equal_cripser_bar_counts_on_random_masks(shape):
    rng = np.random.default_rng(len(shape))
    for density in (0.3, 0.5, 0.7):
        for _ in range(4):
            mask = rng.random(shape) < density
            np.testing.assert_array_equal(betti_numbers(mask), _cripser_betti(mask))


@pytest.mark.parametrize("shape", [(16, 16), (8, 9, 10)])
def test_matching_error_is_symmetric_and_zero_on_identical_random_masks(shape):
    rng = np.random.default_rng(len(shape))
    top = len(shape) - 1
    for density in (0.2, 0.5, 0.8):
        for _ in range(5):
            p, g = rng.random(shape) < density, rng.random(shape) < density
            assert betti_matching_error(p, p) == {0: 0, top: 0}
            errors = betti_matching_error(p, g)
            assert errors == betti_matching_error(g, p)
            # Never more than every bar unmatched, never less than the Betti number difference.
            total = betti_numbers(p) + betti_numbers(g)
            diff = betti_number_error(p, g)
            for k in (0, top):
                assert diff[k] <= errors[k] <= total[k]
                assert errors[k] % 2 == diff[k] % 2


def test_displaced_features_count_in_the_matching_error_only():
    gt = disk(40, 5.0, (10, 10)) | disk(40, 5.0, (10, 28))
    pred = disk(40, 5.0, (28, 10)) | disk(40, 5.0, (28, 28))
    np.testing.assert_array_equal(betti_number_error(pred, gt), [0, 0])
    assert betti_matching_error(pred, gt) == {0: 4, 1: 0}


def test_a_broken_line_and_a_merge_each_cost_one_unmatched_component():
    line = hline(width=3)
    broken = line.copy()
    broken[:, 15:17] = False
    assert betti_matching_error(broken, line) == {0: 1, 1: 0}
    gt = two_disks()
    merged = gt | hline(size=32, row=15, width=3, start=8, stop=25)
    np.testing.assert_array_equal(betti_numbers(merged), [1, 0])
    assert betti_matching_error(merged, gt) == {0: 1, 1: 0}


def test_holes_match_only_where_they_overlap():
    assert betti_matching_error(ring(), disk(32, 10.0)) == {0: 0, 1: 1}
    a = ring(48, outer=10.0, inner=4.0, center=(24, 18))
    b = ring(48, outer=10.0, inner=4.0, center=(24, 28))
    np.testing.assert_array_equal(betti_number_error(a, b), [0, 0])
    assert betti_matching_error(a, b) == {0: 0, 1: 2}
    shifted = ring(48, outer=10.0, inner=4.0, center=(24, 20))
    assert betti_matching_error(a, shifted) == {0: 0, 1: 0}


def test_three_dimensional_cavity_and_component_matching():
    solid = hollow_ball(inner=0.0)
    assert betti_matching_error(hollow_ball(), solid) == {0: 0, 2: 1}
    np.testing.assert_array_equal(betti_number_error(torus(), hollow_ball(24, 7.0, 4.0)), [0, 1, 1])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`mask` must be a 2-D or 3-D"):
        betti_numbers(np.ones(5, bool))
    with pytest.raises(ValueError, match="`pred` must be binary"):
        betti_matching_error(np.full((4, 4), 0.5), np.ones((4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        betti_number_error(np.ones((4, 4)), np.ones((4, 5)))
