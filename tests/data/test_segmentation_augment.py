"""Tests for ``SegmentationAugment`` and ``SegmentationDataModule(augment=True)``."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_losses.data import SegmentationDataModule
from lightning_losses.data.segmentation_datamodule import SegmentationAugment
from lightning_losses.topology.transforms import SkeletonTransform


def _sample(height: int = 8, width: int = 8) -> dict:
    mask = torch.zeros(height, width, dtype=torch.long)
    mask[1, 1:4] = 1  # an asymmetric shape: every symmetry of the square moves it differently
    mask[2, 1] = 1
    return {"image": mask[None].float(), "mask": mask, "index": 0}


def _symmetries(mask: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(mask, k, dims=(-2, -1)) for k in range(4)]
    return turns + [torch.flip(t, (-1,)) for t in turns]


def test_same_seed_same_draws_other_seed_other_draws():
    a, b, c = SegmentationAugment(seed=3), SegmentationAugment(seed=3), SegmentationAugment(seed=4)
    first = [a(_sample()) for _ in range(6)]
    again = [b(_sample()) for _ in range(6)]
    other = [c(_sample()) for _ in range(6)]
    for x, y in zip(first, again, strict=True):
        torch.testing.assert_close(x["image"], y["image"])
        assert torch.equal(x["mask"], y["mask"])
    assert any(not torch.equal(x["image"], z["image"]) for x, z in zip(first, other, strict=True))


def test_geometry_moves_image_and_mask_together_through_all_eight_symmetries():
    augment = SegmentationAugment(seed=0, contrast=0.0, brightness=0.0, noise=0.0)
    sample = _sample()
    expected = _symmetries(sample["mask"])
    seen = set()
    for _ in range(200):
        out = augment(_sample())
        assert torch.equal(out["image"][0], out["mask"].float())  # no intensity change: equal
        matches = [i for i, e in enumerate(expected) if torch.equal(out["mask"], e)]
        assert len(matches) == 1
        seen.add(matches[0])
        assert out["index"] == 0 and out["mask"].dtype == torch.long
    assert seen == set(range(8))


def test_non_square_images_keep_their_shape():
    augment = SegmentationAugment(seed=1, contrast=0.0, brightness=0.0, noise=0.0)
    for _ in range(20):
        out = augment(_sample(6, 10))
        assert out["image"].shape == (1, 6, 10) and out["mask"].shape == (6, 10)
        assert torch.equal(out["image"][0], out["mask"].float())


def test_intensity_is_an_affine_map_within_the_ranges_plus_bounded_noise():
    augment = SegmentationAugment(seed=2, flip=False, rotate=False, noise=0.0)
    image = torch.linspace(-2.0, 2.0, 64).view(1, 8, 8)
    slopes, shifts = [], []
    for _ in range(100):
        out = augment({"image": image.clone(), "mask": torch.zeros(8, 8, dtype=torch.long)})
        slope = (out["image"][0, -1, -1] - out["image"][0, 0, 0]) / 4.0
        shift = out["image"].mean() - slope * image.mean()
        torch.testing.assert_close(out["image"], slope * image + shift)
        slopes.append(float(slope))
        shifts.append(float(shift))
    assert 1 / 1.25 - 1e-6 <= min(slopes) < 0.9 and 1.1 < max(slopes) <= 1.25 + 1e-6
    assert -0.25 <= min(shifts) < -0.15 and 0.15 < max(shifts) <= 0.25

    noisy = SegmentationAugment(seed=2, flip=False, rotate=False, contrast=0.0, brightness=0.0)
    residual = [noisy({"image": image.clone()})["image"] - image for _ in range(50)]
    stds = [float(r.std()) for r in residual]
    assert max(stds) < 0.1 * 1.5 and max(stds) > 0.05  # sigma uniform in [0, 0.1]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="`contrast`"):
        SegmentationAugment(contrast=-0.1)
    with pytest.raises(ValueError, match="`noise`"):
        SegmentationAugment(noise=math.inf)
    with pytest.raises(ValueError, match="`seed`"):
        SegmentationAugment(seed=-1)
    with pytest.raises(TypeError, match="`augment`"):
        SegmentationDataModule(train_size=4, val_size=2, test_size=2, augment="yes")


def test_datamodule_augments_training_samples_only_and_before_the_train_transforms():
    sizes = {"train_size": 8, "val_size": 4, "test_size": 4, "ood_splits": ["ood_blur"]}
    skeleton = SkeletonTransform(mode="multiclass", tube_iterations=0)
    plain = SegmentationDataModule(**sizes)
    augmented = SegmentationDataModule(**sizes, augment=True, train_transforms=[skeleton])
    plain.setup()
    augmented.setup()
    assert isinstance(augmented.train_transforms[0], SegmentationAugment)
    assert augmented.train_transforms[1] is skeleton
    changed = 0
    for i in range(8):
        base, aug = plain.train_dataset[i], augmented.train_dataset[i]
        # the mask is one of the eight symmetries of the original mask
        assert any(torch.equal(aug["mask"], m) for m in _symmetries(base["mask"]))
        changed += not torch.equal(aug["image"], base["image"])
        # the skeleton was drawn from the augmented mask: it lies on it
        assert bool(((aug["skeleton"] > 0) <= (aug["mask"] > 0)).all())
    assert changed == 8
    for name in ("val_dataset", "test_dataset"):
        torch.testing.assert_close(
            getattr(augmented, name)[0]["image"], getattr(plain, name)[0]["image"]
        )
    # the same seed repeats the same augmented first sample
    torch.testing.assert_close(_first_augmented(sizes), _first_augmented(sizes))


def _first_augmented(sizes: dict) -> torch.Tensor:
    dm = SegmentationDataModule(**sizes, augment=True)
    dm.setup()
    return dm.train_dataset[0]["image"]
