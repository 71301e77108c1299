"""Tests for the embedded thin-structure segmentation data and ``SegmentationDataModule``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_losses.data import (
    LABEL_VARIANTS,
    OOD_SPLITS,
    SegmentationDataModule,
    ThinStructureParams,
    ThinStructuresDataset,
    thin_structures,
)
from lightning_losses.data.thin_structures import OOD_SHIFTS, split_params

EIGHT = np.ones((3, 3), dtype=bool)


def components(mask: np.ndarray) -> int:
    """Foreground components, 8-connected (the usual convention for thin structures)."""
    return int(ndimage.label(mask, structure=EIGHT)[1])


def mean_thickness(mask: np.ndarray) -> float:
    """Foreground area over skeleton length: the mean width of a thin structure in pixels."""
    from skimage.morphology import skeletonize

    skeleton = skeletonize(mask)
    return float(mask.sum() / max(int(skeleton.sum()), 1))


def contrast(images: np.ndarray, masks: np.ndarray) -> float:
    """Mean intensity on the structures minus mean intensity elsewhere."""
    grey = images.mean(1)
    return float(grey[masks == 1].mean() - grey[masks == 0].mean())


def gradient_energy(images: np.ndarray) -> float:
    grey = images.mean(1).astype(np.float64)
    return float((np.diff(grey, axis=1) ** 2).mean() + (np.diff(grey, axis=2) ** 2).mean())


def high_frequency_share(images: np.ndarray) -> float:
    """Share of the (non-DC) power at spatial frequencies above 1/12 cycles per pixel."""
    grey = images.mean(1).astype(np.float64)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    f = np.fft.fftfreq(grey.shape[-1])
    radius = np.hypot(f[:, None], f[None, :])
    return float(power[:, radius > 1 / 12].sum() / power.sum())


# --------------------------------------------------------------------- generator


def test_shapes_dtypes_and_range():
    data = thin_structures(6, "train", seed=0)
    assert data.images.shape == (6, 1, 64, 64) and data.images.dtype == np.float32
    assert data.masks.shape == (6, 64, 64) and data.masks.dtype == np.int64
    assert data.accurate_masks.shape == (6, 64, 64) and data.accurate_masks.dtype == np.int64
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert set(np.unique(data.masks)) == {0, 1}
    np.testing.assert_array_equal(data.masks, data.accurate_masks)
    share = (data.masks == 1).mean()
    assert 0.05 < share < 0.35  # thin: a minority of pixels, but present in every image
    assert all((m == 1).any() for m in data.masks)

    rgb = thin_structures(3, "val", image_size=48, in_chans=3, seed=0)
    assert rgb.images.shape == (3, 3, 48, 48)
    # three channels differ (a per-image tint and independent noise), not a repeated grey
    assert not np.allclose(rgb.images[:, 0], rgb.images[:, 1])


def test_same_seed_is_byte_identical_and_different_seeds_differ():
    for labels in LABEL_VARIANTS:
        a = thin_structures(4, "train", labels=labels, multiclass=True, in_chans=3, seed=3)
        b = thin_structures(4, "train", labels=labels, multiclass=True, in_chans=3, seed=3)
        for x, y in zip(a, b, strict=True):
            assert x.tobytes() == y.tobytes()
    c = thin_structures(4, "train", seed=4)
    d = thin_structures(4, "train", seed=3)
    assert not np.array_equal(c.images, d.images)
    assert not np.array_equal(c.masks, d.masks)


def test_a_sample_depends_on_its_index_only():
    few = thin_structures(3, "val", labels="noisy", seed=1)
    many = thin_structures(7, "val", labels="noisy", seed=1)
    for x, y in zip(few, many, strict=True):
        assert x.tobytes() == y[:3].tobytes()


def test_splits_hold_different_images():
    images = {s: thin_structures(4, s, seed=0).images for s in ("train", "val", "test")}
    assert not np.array_equal(images["train"], images["val"])
    assert not np.array_equal(images["val"], images["test"])
    assert not np.array_equal(images["train"], images["test"])


def test_label_variants_leave_the_images_unchanged():
    base = thin_structures(4, "train", seed=2)
    for labels in ("noisy", "pseudo"):
        other = thin_structures(4, "train", labels=labels, seed=2)
        assert other.images.tobytes() == base.images.tobytes()
        np.testing.assert_array_equal(other.accurate_masks, base.masks)


def test_ood_splits_share_the_test_structures():
    test = thin_structures(4, "test", seed=0)
    for split in OOD_SPLITS:
        ood = thin_structures(4, split, seed=0)
        np.testing.assert_array_equal(ood.accurate_masks, test.accurate_masks)
        assert not np.array_equal(ood.images, test.images)
    assert set(OOD_SHIFTS) == set(OOD_SPLITS) and len(OOD_SPLITS) >= 3


def test_multiclass_adds_blobs_as_class_two_over_the_same_structures():
    binary = thin_structures(4, "train", seed=5)
    multi = thin_structures(4, "train", multiclass=True, seed=5)
    assert set(np.unique(multi.masks)) == {0, 1, 2}
    np.testing.assert_array_equal(multi.masks == 1, binary.masks == 1)
    blobs = multi.masks == 2
    # blobs are compact: after an opening with a 3x3 square most blob pixels remain, while
    # the thin structures (often 1-2 px wide) mostly vanish
    opened_blob = ndimage.binary_opening(blobs, structure=np.ones((1, 3, 3))).sum() / blobs.sum()
    thin = binary.masks == 1
    opened_thin = ndimage.binary_opening(thin, structure=np.ones((1, 3, 3))).sum() / thin.sum()
    assert opened_blob > 0.8 and opened_thin < opened_blob - 0.3


# ------------------------------------------------------------------------ label variants


def test_noisy_labels_break_shift_and_resize_structures():
    n = 24
    params = ThinStructureParams(label_error_rate=1.0)
    accurate = thin_structures(n, "train", params=params, seed=0).masks == 1
    noisy = thin_structures(n, "train", labels="noisy", params=params, seed=0).masks == 1
    agree = [(a & b).sum() * 2 / (a.sum() + b.sum()) for a, b in zip(accurate, noisy, strict=True)]
    assert 0.3 < np.mean(agree) < 0.9  # different labels, of the same structures
    # missing stretches cut structures: more components in most images
    more = [components(b) - components(a) for a, b in zip(accurate, noisy, strict=True)]
    assert np.mean(more) >= 1.0
    # thickness errors: the per-image mean width changes by more than 20 % in most images
    ratio = np.array(
        [mean_thickness(b) / mean_thickness(a) for a, b in zip(accurate, noisy, strict=True)]
    )
    assert (np.abs(np.log(ratio)) > np.log(1.2)).mean() > 0.5
    # shifted stretches: noisy foreground pixels off the accurate foreground, beyond 1 px
    far = [
        (b & ~ndimage.binary_dilation(a, EIGHT)).sum() / b.sum()
        for a, b in zip(accurate, noisy, strict=True)
    ]
    assert np.mean(far) > 0.02


def test_noisy_rate_zero_equals_accurate_and_rate_scales_the_damage():
    clean = ThinStructureParams(label_error_rate=0.0)
    a = thin_structures(6, "train", labels="noisy", params=clean, seed=0)
    np.testing.assert_array_equal(a.masks, a.accurate_masks)

    def disagreement(rate: float) -> float:
        data = thin_structures(
            12, "train", labels="noisy", params=ThinStructureParams(label_error_rate=rate)
        )
        return float((data.masks != data.accurate_masks).mean())

    assert 0 < disagreement(0.3) < disagreement(1.0)


def test_pseudo_labels_are_imperfect_filters_of_the_image():
    data = thin_structures(16, "train", labels="pseudo", seed=0)
    a, p = data.accurate_masks == 1, data.masks == 1
    dice = 2 * (a & p).sum() / (a.sum() + p.sum())
    assert 0.4 < dice < 0.95
    assert (p & ~a).sum() > 0 and (a & ~p).sum() > 0  # both false positives and misses
    multi = thin_structures(8, "train", labels="pseudo", multiclass=True, seed=0)
    blob_true, blob_pseudo = multi.accurate_masks == 2, multi.masks == 2
    assert 2 * (blob_true & blob_pseudo).sum() / (blob_true.sum() + blob_pseudo.sum()) > 0.4


# ---------------------------------------------------------------------- OOD statistics


def test_ood_contrast_lowers_the_structure_contrast():
    test = thin_structures(16, "test", seed=0)
    low = thin_structures(16, "ood_contrast", seed=0)
    ratio = contrast(low.images, low.accurate_masks) / contrast(test.images, test.accurate_masks)
    assert 0.5 < ratio < 0.72  # 0.6 before clipping and noise


def test_ood_blur_removes_fine_detail():
    quiet = ThinStructureParams(noise=0.0)
    test = thin_structures(8, "test", params=quiet, seed=0)
    blurred = thin_structures(8, "ood_blur", params=quiet, seed=0)
    assert gradient_energy(blurred.images) < 0.5 * gradient_energy(test.images)
    # with the default noise too, the blurred structures stand out less from their background
    test = thin_structures(16, "test", seed=0)
    blurred = thin_structures(16, "ood_blur", seed=0)
    assert contrast(blurred.images, test.accurate_masks) < 0.85 * contrast(
        test.images, test.accurate_masks
    )


def test_ood_noise_raises_the_pixel_noise():
    def residual(images: np.ndarray) -> float:  # what a 3x3 median filter removes
        grey = images.mean(1)
        return float(np.std(grey - ndimage.median_filter(grey, size=(1, 3, 3))))

    test = thin_structures(8, "test", seed=0)
    noisy = thin_structures(8, "ood_noise", seed=0)
    assert residual(noisy.images) > 1.4 * residual(test.images)


def test_ood_textures_put_power_at_high_spatial_frequencies():
    # background only: no structures, distractors or noise
    bare = ThinStructureParams(contrast=0.0, noise=0.0)
    smooth = high_frequency_share(thin_structures(8, "test", params=bare).images)
    stripes = high_frequency_share(thin_structures(8, "ood_stripes", params=bare).images)
    grain = high_frequency_share(thin_structures(8, "ood_grain", params=bare).images)
    assert smooth < 0.05
    assert stripes > 0.5 and grain > 0.3


def test_split_params_changes_only_the_documented_fields():
    p = ThinStructureParams()
    assert split_params(p, "train") is p and split_params(p, "test") is p
    assert split_params(p, "ood_contrast").contrast == pytest.approx(p.contrast * 0.6)
    assert split_params(p, "ood_noise").noise == pytest.approx(p.noise * 1.75)
    assert split_params(p, "ood_blur").blur == pytest.approx(0.8)
    assert split_params(p, "ood_stripes").background == "stripes"
    assert split_params(p, "ood_grain").background == "grain"


# ------------------------------------------------------------------------------- knobs


def test_difficulty_knobs_move_the_images_as_documented():
    easy = ThinStructureParams(fade_prob=0.0, contrast=0.5, noise=0.03)
    hard = ThinStructureParams(fade_prob=1.0, fade_depth=1.0, contrast=0.2, noise=0.12)
    e, h = thin_structures(12, "train", params=easy), thin_structures(12, "train", params=hard)
    assert contrast(h.images, h.masks) < 0.6 * contrast(e.images, e.masks)
    wide = thin_structures(8, "train", params=ThinStructureParams(width=(3.0, 4.0)))
    narrow = thin_structures(8, "train", params=ThinStructureParams(width=(1.0, 1.5)))
    assert (wide.masks == 1).mean() > 1.8 * (narrow.masks == 1).mean()


def test_params_validation_names_the_field():
    with pytest.raises(ValueError, match="background"):
        ThinStructureParams(background="bricks")
    with pytest.raises(ValueError, match="width"):
        ThinStructureParams(width=(3.0, 1.0))
    with pytest.raises(ValueError, match="fade_prob"):
        ThinStructureParams(fade_prob=1.5)
    with pytest.raises(ValueError, match="noise"):
        ThinStructureParams(noise=-0.1)
    with pytest.raises(ValueError, match="curves"):
        ThinStructureParams(curves=(0, 0))
    with pytest.raises(ValueError, match="difficulty"):
        ThinStructureParams().with_overrides({"contrastt": 0.2})
    assert ThinStructureParams().with_overrides({"width": [1.0, 2.0]}).width == (1.0, 2.0)


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="split"):
        thin_structures(2, "ood_fog")
    with pytest.raises(ValueError, match="labels"):
        thin_structures(2, labels="clean")
    with pytest.raises(ValueError, match="image_size"):
        thin_structures(2, image_size=8)
    with pytest.raises(ValueError, match="in_chans"):
        thin_structures(2, in_chans=2)
    with pytest.raises(ValueError, match="seed"):
        thin_structures(2, seed=-1)
    with pytest.raises(ValueError, match="`n`"):
        thin_structures(0)


def test_generation_is_fast():
    start = time.process_time()
    thin_structures(200, "train", seed=0)
    elapsed = time.process_time() - start
    # about 3 ms of CPU per 64x64 sample on an idle core; the bound leaves room for a busy one
    assert elapsed < 4.0, f"200 samples took {elapsed:.2f} s of CPU"


# ------------------------------------------------------------------------------ dataset


def test_dataset_returns_normalised_mapping_samples():
    train = ThinStructuresDataset(16, "train", seed=0)
    sample = train[3]
    assert set(sample) == {"image", "mask", "index"} and sample["index"] == 3
    assert sample["image"].shape == (1, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.int64
    assert abs(float(train.images.mean())) < 1e-4
    assert float(train.images.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    test = ThinStructuresDataset(8, "ood_blur", mean=train.mean, std=train.std)
    assert test.mean == train.mean and len(test) == 8


def test_dataset_transforms_may_add_entries():
    def add_skeleton(sample):
        return {**sample, "skeleton": (sample["mask"] > 0).long()}

    ds = ThinStructuresDataset(4, transforms=[add_skeleton])
    assert set(ds[0]) == {"image", "mask", "index", "skeleton"}
    bad = ThinStructuresDataset(4, transforms=[lambda s: s["image"]])
    with pytest.raises(TypeError, match="mapping"):
        bad[0]


# --------------------------------------------------------------------------- datamodule


def small_dm(**kwargs) -> SegmentationDataModule:
    return SegmentationDataModule(train_size=12, val_size=4, test_size=5, batch_size=4, **kwargs)


def test_datamodule_loaders_yield_documented_batches():
    dm = small_dm()
    assert dm.num_classes == 2 and dm.in_chans == 1
    assert dm.test_split_names == ["test", *OOD_SPLITS]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 64, 64) and batch["mask"].dtype == torch.int64
    assert batch["index"].shape == (4,)
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 1, 64, 64)
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == len(dm.test_split_names)
    for loader in loaders:
        assert len(loader.dataset) == 5
        assert next(iter(loader))["mask"].shape == (4, 64, 64)


def test_datamodule_training_order_is_seeded():
    first = [b["index"].tolist() for b in small_dm(seed=1, ood_splits=[]).train_dataloader()]
    again = [b["index"].tolist() for b in small_dm(seed=1, ood_splits=[]).train_dataloader()]
    assert first == again and sorted(i for batch in first for i in batch) == list(range(12))


def test_datamodule_label_variants_apply_to_training_only():
    dm = small_dm(labels="noisy", difficulty={"label_error_rate": 1.0})
    dm.setup()
    train = dm.train_dataset
    assert not torch.equal(train.masks, train.accurate_masks)
    for ds in [dm.val_dataset, *dm.test_datasets.values()]:
        assert torch.equal(ds.masks, ds.accurate_masks)
    counts = dm.class_counts
    assert counts.dtype == torch.float32 and counts.shape == (2,)
    assert float(counts.sum()) == 12 * 64 * 64
    assert float(counts[1]) == float((train.masks == 1).sum())


def test_datamodule_multiclass_rgb_subset_of_ood_and_transforms():
    seen = []

    def augment(sample):
        seen.append("train")
        return {**sample, "image": sample["image"].flip(-1), "mask": sample["mask"].flip(-1)}

    def skeleton(sample):
        return {**sample, "skeleton": (sample["mask"] == 1).long()}

    dm = small_dm(
        multiclass=True,
        in_chans=3,
        image_size=32,
        ood_splits=["ood_blur", "ood_contrast"],
        train_transforms=[augment],
        transforms=[skeleton],
    )
    assert dm.num_classes == 3 and dm.class_counts.shape == (3,)
    assert dm.test_split_names == ["test", "ood_blur", "ood_contrast"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["skeleton"].shape == (4, 32, 32)
    assert len(seen) == 4
    test_batch = next(iter(dm.test_dataloader()[1]))
    assert "skeleton" in test_batch and len(seen) == 4  # augmentation on training only


def test_datamodule_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="labels"):
        SegmentationDataModule(labels="clean")
    with pytest.raises(ValueError, match="ood_splits"):
        SegmentationDataModule(ood_splits=["ood_fog"])
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationDataModule(multiclass=True, num_classes=2)
    with pytest.raises(ValueError, match="difficulty"):
        SegmentationDataModule(difficulty={"contrst": 0.1})
    with pytest.raises(ValueError, match="image_size"):
        SegmentationDataModule(image_size=None)
    with pytest.raises(ValueError, match="batch_size"):
        SegmentationDataModule(batch_size=0)
    with pytest.raises(TypeError, match="transforms"):
        SegmentationDataModule(transforms=[3])
