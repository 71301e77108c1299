"""Symmetric label noise of ``ClassificationDataModule``: exact, seeded, never the same class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_losses.data.datamodule import ClassificationDataModule, symmetric_label_noise
from lightning_losses.data.digits import digits_labels


def _naive_noise(labels: np.ndarray, k: int, noise: float, seed: int) -> np.ndarray:
    """The documented construction, one label at a time."""
    rng = np.random.default_rng([seed, 1])
    m = math.floor(noise * len(labels) + 0.5)
    chosen = rng.choice(len(labels), size=m, replace=False)
    shifts = rng.integers(1, k, size=m)
    out = [int(y) for y in labels]
    for i, s in zip(chosen.tolist(), shifts.tolist(), strict=True):
        out[i] = (out[i] + s) % k
    return np.array(out, dtype=np.int64)


# ------------------------------------------------------------------------- the function


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.4, 0.85])
@pytest.mark.parametrize("k", [2, 3, 10])
def test_exact_fraction_never_the_same_class(noise, k):
    labels = np.arange(997) % k
    noisy, mask = symmetric_label_noise(labels, k, noise, seed=5)
    assert noisy.dtype == np.int64 and mask.dtype == bool and noisy.shape == mask.shape
    assert int(mask.sum()) == math.floor(noise * 997 + 0.5)
    assert np.all(noisy[mask] != labels[mask])  # a flip always lands on another class
    np.testing.assert_array_equal(noisy[~mask], labels[~mask])
    assert noisy.min() >= 0 and noisy.max() < k
    np.testing.assert_array_equal(noisy, _naive_noise(labels, k, noise, 5))


def test_flips_are_uniform_over_the_other_classes():
    k, n = 5, 20000
    labels = np.zeros(n, dtype=np.int64)
    noisy, mask = symmetric_label_noise(labels, k, 0.5, seed=0)
    counts = np.bincount(noisy[mask], minlength=k)
    assert counts[0] == 0
    expected = mask.sum() / (k - 1)
    # 4 standard deviations of a multinomial cell with p = 1/4 over 10,000 draws: about 170
    assert np.all(np.abs(counts[1:] - expected) < 4 * math.sqrt(expected * 0.75))
    # which positions flip does not depend on the label
    labels = np.arange(n) % k
    _, mask = symmetric_label_noise(labels, k, 0.3, seed=1)
    rates = [mask[labels == c].mean() for c in range(k)]
    assert max(rates) - min(rates) < 0.05


def test_seeded_and_the_seed_matters():
    labels = np.arange(300) % 10
    a, mask_a = symmetric_label_noise(labels, 10, 0.4, seed=3)
    b, mask_b = symmetric_label_noise(labels, 10, 0.4, seed=3)
    c, mask_c = symmetric_label_noise(labels, 10, 0.4, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(mask_a, mask_c)
    assert not np.array_equal(a, c)


def test_input_is_not_modified_and_zero_noise_is_a_copy():
    labels = np.arange(20) % 4
    before = labels.copy()
    noisy, mask = symmetric_label_noise(labels, 4, 0.5, seed=0)
    np.testing.assert_array_equal(labels, before)
    assert mask.sum() == 10 and not np.shares_memory(noisy, labels)
    same, none = symmetric_label_noise(labels, 4, 0.0)
    np.testing.assert_array_equal(same, labels)
    assert not none.any() and same is not labels


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"noise": 1.0}, "noise"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"noise": True}, "noise"),
        ({"labels": [0, 0], "num_classes": 1}, "noise"),  # no other class to flip to
        ({"labels": [0, 3]}, "labels"),
        ({"labels": [[0, 1]]}, "labels"),
        ({"labels": [0.0, 1.0]}, "labels"),
        ({"seed": 0.5}, "seed"),
    ],
)
def test_function_errors_name_the_argument(kwargs, arg):
    args = {"labels": [0, 1, 2, 0], "num_classes": 3, "noise": 0.5, **kwargs}
    with pytest.raises((ValueError, TypeError), match=f"`{arg}`"):
        symmetric_label_noise(**args)


# ----------------------------------------------------------------------- the datamodule


@pytest.fixture(scope="module")
def clean_and_noisy() -> tuple[ClassificationDataModule, ClassificationDataModule]:
    clean = ClassificationDataModule(image_size=8, seed=2)
    noisy = ClassificationDataModule(image_size=8, seed=2, label_noise=0.4)
    clean.setup()
    noisy.setup()
    return clean, noisy


def test_datamodule_flips_exactly_the_fraction_of_training_labels(clean_and_noisy):
    clean, noisy = clean_and_noisy
    truth = clean.train_dataset.targets
    seen = noisy.train_dataset.targets
    n = len(truth)
    mask = noisy.noisy_mask
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert int(mask.sum()) == math.floor(0.4 * n + 0.5)
    assert bool((seen[mask] != truth[mask]).all())
    torch.testing.assert_close(seen[~mask], truth[~mask])
    torch.testing.assert_close(noisy.noisy_indices, torch.nonzero(mask).flatten())
    assert noisy.noisy_indices.dtype == torch.int64
    torch.testing.assert_close(noisy.clean_train_targets, truth)
    # the images are the same; only labels change
    torch.testing.assert_close(noisy.train_dataset.images, clean.train_dataset.images)
    # items and batches carry the noisy labels
    i = int(noisy.noisy_indices[0])
    assert noisy.train_dataset[i][1] == int(seen[i]) != int(truth[i])
    # class counts are those of the labels training sees
    counts = torch.bincount(seen, minlength=10).float()
    torch.testing.assert_close(noisy.class_counts, counts)


def test_validation_and_test_stay_clean(clean_and_noisy):
    clean, noisy = clean_and_noisy
    for split in ("val", "test"):
        a = getattr(clean, f"{split}_dataset")
        b = getattr(noisy, f"{split}_dataset")
        torch.testing.assert_close(b.targets, a.targets)
        torch.testing.assert_close(b.images, a.images)
    # and the clean labels are the digits' own
    assert set(noisy.val_dataset.targets.tolist()) <= set(digits_labels().tolist())


def test_datamodule_noise_is_seeded_and_planned_without_images():
    a = ClassificationDataModule(label_noise=0.3, seed=7)
    b = ClassificationDataModule(label_noise=0.3, seed=7)
    c = ClassificationDataModule(label_noise=0.3, seed=8)
    torch.testing.assert_close(a.noisy_mask, b.noisy_mask)  # no setup() needed
    assert a.train_dataset is None
    assert not torch.equal(a.noisy_mask, c.noisy_mask)
    zero = ClassificationDataModule()
    assert not zero.noisy_mask.any() and zero.noisy_indices.numel() == 0


def test_noise_after_long_tailing():
    dm = ClassificationDataModule(image_size=8, imbalance_factor=10, label_noise=0.2)
    dm.setup()
    n = len(dm.train_dataset)
    assert dm.noisy_mask.shape == (n,) and int(dm.noisy_mask.sum()) == math.floor(0.2 * n + 0.5)
    assert float(dm.class_counts.sum()) == n


def test_image_folder_training_labels_are_noisy(tmp_path):
    root = tmp_path / "images"
    for split, n in (("train", 10), ("val", 2)):
        for c in range(3):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), 20 * c + i).save(folder / f"{i}.png")
    dm = ClassificationDataModule(data_dir=str(root), image_size=8, label_noise=0.5, seed=1)
    with pytest.warns(UserWarning, match="No 'test' folder"):
        dm.setup()
    train = dm.train_dataset
    truth = torch.tensor([int(p.parent.name[-1]) for p, _ in train.samples])
    labels = torch.tensor(train.targets)
    mask = dm.noisy_mask
    assert int(mask.sum()) == 15
    assert bool((labels[mask] != truth[mask]).all())
    torch.testing.assert_close(labels[~mask], truth[~mask])
    val_truth = [int(p.parent.name[-1]) for p, _ in dm.val_dataset.samples]
    assert dm.val_dataset.targets == val_truth


@pytest.mark.parametrize("value", [1.0, -0.01, 1.5, float("nan"), True, "0.4", None])
def test_datamodule_rejects_bad_label_noise(value):
    with pytest.raises((ValueError, TypeError), match="`label_noise`"):
        ClassificationDataModule(label_noise=value)


def test_one_class_folder_cannot_be_noisy(tmp_path):
    folder = tmp_path / "one" / "train" / "only"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), i).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="`label_noise`"):
        ClassificationDataModule(data_dir=str(tmp_path / "one"), label_noise=0.2)
