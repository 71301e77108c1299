"""SkeletonTransform and DistanceTransform: the reference recipe, layouts, and a brute-force EDT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from skimage.morphology import dilation, skeletonize
from torch.utils.data import default_collate

from lightning_losses.topology.transforms import (
    DistanceTransform,
    SkeletonTransform,
    signed_distance,
)

from .shapes import hline, ring


def test_binary_tube_equals_the_reference_recipe():
    mask = ring(40, outer=14.0, inner=6.0).astype(np.int64)
    skel = skeletonize(mask.astype(bool)).astype(np.int16)
    expected = dilation(dilation(skel)) * mask  # two cross dilations, masked by the GT
    out = SkeletonTransform(mode="binary")({"image": None, "mask": mask})["skeleton"]
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.int64


def test_tube_of_a_thick_bar_is_five_rows_around_its_centre():
    bar = hline(size=32, row=16, width=9, start=2, stop=30).astype(np.uint8)
    tube = SkeletonTransform(mode="binary")({"mask": bar})["skeleton"]
    # Away from the ends (where thinning leaves short spurs to the corners).
    rows = np.nonzero(tube[:, 8:24].any(1))[0]
    np.testing.assert_array_equal(rows, np.arange(14, 19))
    assert (tube[14:19, 8:24] == 1).all()
    assert (tube <= bar).all()
    bare = SkeletonTransform(mode="binary", tube_iterations=0)({"mask": bar})["skeleton"]
    np.testing.assert_array_equal(bare, skeletonize(bar.astype(bool)))


def test_multiclass_tubes_carry_their_class_and_skip_background_and_ignore():
    mask = np.zeros((32, 32), np.int64)
    mask[4:11, 2:30] = 1
    mask[11:18, 2:30] = 2  # touches class 1: each class keeps its own skeleton
    mask[22:29, 2:30] = 255
    out = SkeletonTransform(ignore_index=255)({"mask": mask})["skeleton"]
    assert set(np.unique(out).tolist()) == {0, 1, 2}
    for c, centre in ((1, 7), (2, 14)):
        assert out[centre, 8:24].tolist() == [c] * 16
        assert ((out == c) <= (mask == c)).all()
    # A non-zero background label fills the pixels off the skeleton.
    out = SkeletonTransform(background=2)({"mask": mask})["skeleton"]
    assert (out[mask == 2] == 2).all() and (out == 0).any()


def test_multilabel_layout_and_a_tensor_mask_give_a_tensor():
    mask = torch.zeros(2, 24, 24, dtype=torch.uint8)
    mask[0, 10:15, 2:22] = 1
    mask[1, 2:22, 10:15] = 1
    out = SkeletonTransform(mode="multilabel", background=None)({"mask": mask, "x": 3})
    assert isinstance(out["skeleton"], torch.Tensor) and out["skeleton"].shape == mask.shape
    assert out["x"] == 3
    assert out["skeleton"][0, 12, 5:19].eq(1).all() and out["skeleton"][1, 5:19, 12].eq(1).all()
    skipped = SkeletonTransform(mode="multilabel")({"mask": mask})["skeleton"]
    assert skipped[0].sum() == 0 and torch.equal(skipped[1], out["skeleton"][1])


def test_three_dimensional_tube():
    vol = np.zeros((16, 16, 24), np.int64)
    vol[5:12, 5:12, 2:22] = 1
    tube = SkeletonTransform(mode="binary")({"mask": vol})["skeleton"]
    assert tube[8, 8, 6:18].tolist() == [1] * 12
    assert (tube <= vol).all() and tube.sum() < vol.sum()


def test_samples_collate_into_the_batch_context_and_are_not_mutated():
    transform = SkeletonTransform(mode="binary")
    samples = [
        {"image": torch.zeros(1, 32, 32), "mask": torch.tensor(hline(width=w))} for w in (3, 5)
    ]
    batch = default_collate([transform(s) for s in samples])
    assert batch["skeleton"].shape == (2, 32, 32)
    assert all("skeleton" not in s for s in samples)


def _brute_force_signed_distance(region: np.ndarray) -> np.ndarray:
    inside, outside = np.argwhere(region), np.argwhere(~region)
    out = np.zeros(region.shape)
    for x in itertools.product(*map(range, region.shape)):
        if region[x]:
            out[x] = -(np.sqrt(((outside - x) ** 2).sum(1)).min() - 1.0)
        else:
            out[x] = np.sqrt(((inside - x) ** 2).sum(1)).min()
    return out


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_signed_distance_equals_a_brute_force_float64_loop(shape):
    region = np.random.default_rng(len(shape)).random(shape) < 0.4
    np.testing.assert_allclose(
        signed_distance(region), _brute_force_signed_distance(region), rtol=1e-6
    )


def test_distance_is_negative_inside_zero_on_the_boundary_and_per_class():
    mask = np.zeros((20, 20), np.int64)
    mask[5:15, 5:15] = 2
    mask[0, 0] = 255
    dist = DistanceTransform(num_classes=4, ignore_index=255)({"mask": mask})["distance"]
    assert dist.shape == (4, 20, 20) and dist.dtype == np.float32
    assert dist[2, 10, 10] == -4 and dist[2, 5, 5] == 0 and dist[2, 5, 3] == 2
    assert (dist[1] == 0).all() and (dist[3] == 0).all()  # absent classes
    assert dist[0, 10, 10] == 5 and dist[0, 2, 10] == -2 and dist[0, 4, 10] == 0
    assert dist[0, 1, 1] < 0 and dist[0, 1, 1] > -1  # the ignored pixel is not class 0
    binary = DistanceTransform(mode="binary")({"mask": torch.tensor(mask == 2).long()})
    torch.testing.assert_close(binary["distance"][0], torch.from_numpy(dist[2]))
    spaced = DistanceTransform(num_classes=4, ignore_index=255, sampling=(2.0, 1.0))(
        {"mask": mask}
    )["distance"]
    assert spaced[2, 5, 3] == 2 and spaced[2, 3, 5] == 4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`mode`"):
        SkeletonTransform(mode="binray")
    with pytest.raises(ValueError, match="`background`"):
        SkeletonTransform(background=None)
    with pytest.raises(ValueError, match="`num_classes`"):
        DistanceTransform()
    with pytest.raises(ValueError, match="'mask' entry"):
        SkeletonTransform()({"image": 1})
    with pytest.raises(ValueError, match="only 0 and 1"):
        SkeletonTransform(mode="binary")({"mask": np.full((4, 4), 2)})
    with pytest.raises(ValueError, match="2 or 3 spatial"):
        DistanceTransform(num_classes=2)({"mask": np.zeros(5, np.int64)})
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        DistanceTransform(num_classes=2)({"mask": np.full((4, 4), 3)})
