"""Tests for the classification data: digits, image folders, long-tail subsets, datamodule."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from lightning_losses.data import (
    ClassificationDataModule,
    DigitsDataset,
    ImageFolderDataset,
    folder_classes,
    list_images,
    long_tail_counts,
    long_tail_indices,
    stratified_split,
)

# --------------------------------------------------------------------------------- digits


def test_digits_shapes_dtype_and_labels():
    ds = DigitsDataset()
    assert len(ds) == 1797
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int)
    np.testing.assert_array_equal(ds.targets.numpy(), load_digits().target)
    assert ds.classes == [str(d) for d in range(10)]


def test_digits_normalised_with_own_stats_and_range():
    ds = DigitsDataset(image_size=16)
    assert ds.images.shape == (1797, 1, 16, 16)
    assert abs(float(ds.images.mean())) < 1e-4
    assert float(ds.images.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    raw = ds.images * ds.std[0] + ds.mean[0]
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_digits_native_size_is_raw_over_16():
    ds = DigitsDataset(image_size=8)
    raw = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16
    expected = (raw - raw.mean()) / raw.std(unbiased=False)
    torch.testing.assert_close(ds.images, expected, atol=1e-5, rtol=1e-5)


def test_digits_given_stats_and_three_channels():
    train = DigitsDataset(indices=range(1000))
    val = DigitsDataset(indices=range(1000, 1797), mean=train.mean, std=train.std)
    assert val.mean == train.mean and val.std == train.std
    assert abs(float(val.images.mean())) < 0.1  # same distribution, not exactly centred
    rgb = DigitsDataset(indices=range(1000), in_chans=3)
    assert rgb[0][0].shape == (3, 32, 32)
    torch.testing.assert_close(rgb.images[:, 0], rgb.images[:, 2])
    torch.testing.assert_close(rgb.images[:, :1], train.images)


# --------------------------------------------------------------------------- splits


def test_stratified_split_disjoint_cover_stratified_deterministic():
    labels = load_digits().target
    rest, test, val = stratified_split(labels, [0.2, 0.1], seed=3)
    assert set(rest).isdisjoint(test) and set(rest).isdisjoint(val) and set(test).isdisjoint(val)
    assert sorted(rest + test + val) == list(range(len(labels)))
    counts = Counter(labels.tolist())
    for part, frac in ((test, 0.2), (val, 0.1)):
        part_counts = Counter(labels[part].tolist())
        for c, n in counts.items():
            assert part_counts[c] == math.floor(frac * n + 0.5)
    assert stratified_split(labels, [0.2, 0.1], seed=3) == [rest, test, val]
    assert stratified_split(labels, [0.2, 0.1], seed=4) != [rest, test, val]


@pytest.mark.parametrize("fractions", [[0.0], [1.0], [0.6, 0.5], [-0.1]])
def test_stratified_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        stratified_split([0, 1, 0, 1], fractions)


# ------------------------------------------------------------------------------ long tail


def test_long_tail_counts_follow_exponential_profile():
    labels = np.repeat(np.arange(5), 100)
    kept = long_tail_indices(labels, imbalance_factor=10, seed=0)
    counts = np.bincount(labels[kept], minlength=5).tolist()
    assert counts == [100, 56, 31, 17, 10]
    assert counts == [math.floor(100 * 10 ** (-c / 4)) for c in range(5)]
    assert kept == sorted(set(kept))
    assert long_tail_indices(labels, 10, seed=0) == kept
    assert long_tail_indices(labels, 10, seed=1) != kept


def test_long_tail_uses_largest_class_and_keeps_at_least_one():
    # n_max is the largest class (class 1 here); class 0 is smaller and keeps everything.
    assert long_tail_counts([80, 100, 100], imbalance_factor=100) == [80, 10, 1]
    assert long_tail_counts([5, 5, 5], imbalance_factor=1000) == [5, 1, 1]
    assert long_tail_counts([3, 4], imbalance_factor=1) == [3, 4]


def test_long_tail_factor_one_is_identity():
    labels = [2, 0, 1, 1, 0, 2]
    assert long_tail_indices(labels, imbalance_factor=1.0, seed=5) == list(range(6))


@pytest.mark.parametrize("factor", [0.5, 0, -3, float("nan"), float("inf"), "x"])
def test_long_tail_rejects_bad_factor(factor):
    with pytest.raises(ValueError, match="imbalance_factor"):
        long_tail_indices([0, 1, 1], factor, seed=0)


# ---------------------------------------------------------------------- image folder tree

COLOURS = {"zebra": (250, 250, 250), "ant": (10, 200, 30), "cat": (120, 40, 220)}


def _write_images(split_dir: Path, per_class: dict[str, int]) -> None:
    for name, n in per_class.items():
        class_dir = split_dir / name
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (10, 12), COLOURS[name]).save(class_dir / f"{i}.png")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    _write_images(root / "train", {"zebra": 6, "ant": 5, "cat": 4})
    _write_images(root / "val", {"zebra": 2, "ant": 2, "cat": 1})
    _write_images(root / "test", {"zebra": 1, "cat": 2})  # a split may lack a class
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


def test_folder_classes_sorted(tree: Path):
    assert folder_classes(tree) == ["ant", "cat", "zebra"]


@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_folder_dataset_labels_and_shapes(tree: Path, in_chans: int):
    classes = folder_classes(tree)
    samples = list_images(tree / "train", classes)
    assert [y for _, y in samples] == [0] * 5 + [1] * 4 + [2] * 6
    assert all(p.parent.name == classes[y] for p, y in samples)
    ds = ImageFolderDataset(samples, classes, image_size=16, in_chans=in_chans)
    for i in (0, 5, 14):
        x, y = ds[i]
        assert x.shape == (in_chans, 16, 16) and x.dtype == torch.float32
        colour = torch.tensor(COLOURS[classes[y]], dtype=torch.float32) / 255
        expected = colour if in_chans == 3 else (colour * torch.tensor([0.299, 0.587, 0.114])).sum()
        torch.testing.assert_close(
            x.mean(dim=(1, 2)).flatten(), expected.flatten(), atol=3e-3, rtol=0
        )


@pytest.mark.parametrize("in_chans", [1, 3])
def test_datamodule_image_folder_full_cycle(tree: Path, in_chans: int):
    dm = ClassificationDataModule(
        data_dir=str(tree), image_size=16, in_chans=in_chans, batch_size=4
    )
    assert dm.num_classes == 3 and dm.class_names == ["ant", "cat", "zebra"]
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (15, 5, 3)
    assert not dm.test_is_val
    assert dm.class_counts.tolist() == [5.0, 4.0, 6.0]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, in_chans, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Normalised with the training statistics: the training set is centred per channel.
    train_x = torch.stack([dm.train_dataset[i][0] for i in range(15)])
    assert train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4


def test_datamodule_train_only_tree_carves_val_and_reuses_it_for_test(tmp_path: Path):
    root = tmp_path / "only_train"
    _write_images(root / "train", {"ant": 10, "cat": 10, "zebra": 20})
    dm = ClassificationDataModule(data_dir=str(root), image_size=8, val_fraction=0.2)
    with pytest.warns(UserWarning, match="No 'test' folder"):
        dm.setup("fit")
    assert dm.test_is_val
    train = dm.train_dataset.samples
    val = dm.val_dataset.samples
    assert Counter(y for _, y in val) == {0: 2, 1: 2, 2: 4}
    assert set(train).isdisjoint(val) and len(train) + len(val) == 40
    assert dm.test_dataset.samples == val
    assert dm.class_counts.tolist() == [8.0, 8.0, 16.0]


def test_image_folder_errors(tmp_path: Path, tree: Path):
    with pytest.raises(ValueError, match="does not exist"):
        ClassificationDataModule(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "no_train").mkdir()
    with pytest.raises(ValueError, match="'train' folder"):
        ClassificationDataModule(data_dir=str(tmp_path / "no_train"))
    (tmp_path / "no_class" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="No class folders"):
        ClassificationDataModule(data_dir=str(tmp_path / "no_class"))

    (tree / "train" / "empty").mkdir()
    dm = ClassificationDataModule(data_dir=str(tree))
    with pytest.raises(ValueError, match=r"empty.*holds no image"):
        dm.setup("fit")
    (tree / "train" / "empty").rmdir()

    _write_images(tree / "val", {"cat": 1})
    (tree / "val" / "dog").mkdir()
    Image.new("L", (4, 4)).save(tree / "val" / "dog" / "a.png")
    with pytest.raises(ValueError, match=r"\['dog'\].*no counterpart in 'train'"):
        ClassificationDataModule(data_dir=str(tree))
    with pytest.raises(ValueError, match="not among the training classes"):
        list_images(tree / "val", ["ant", "cat", "zebra"])


# ---------------------------------------------------------------------------- datamodule


def test_datamodule_digits_splits_disjoint_stratified_deterministic():
    dm = ClassificationDataModule(seed=7)
    assert (dm.num_classes, dm.in_chans, dm.class_names) == (10, 1, [str(d) for d in range(10)])
    dm.setup("fit")
    train = set(dm._plan.train)
    val, test = set(dm._plan.val), set(dm._plan.test)
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert len(train | val | test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(val) == pytest.approx(0.1 * 1797, abs=10)
    labels = load_digits().target
    for c, n in Counter(labels.tolist()).items():
        assert Counter(labels[list(test)].tolist())[c] == math.floor(0.2 * n + 0.5)
    again = ClassificationDataModule(seed=7)
    assert (again._plan.train, again._plan.val) == (dm._plan.train, dm._plan.val)
    assert ClassificationDataModule(seed=8)._plan.train != dm._plan.train


def test_datamodule_digits_full_cycle_and_reproducible_shuffle():
    dm = ClassificationDataModule(batch_size=32, in_chans=3, image_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert dm.class_counts.dtype == torch.float32 and dm.class_counts.shape == (10,)
    assert dm.class_counts.sum() == len(dm.train_dataset)
    other = ClassificationDataModule(batch_size=32, in_chans=3, image_size=16)
    other.setup("fit")
    torch.testing.assert_close(next(iter(other.train_dataloader()))[1], y)
    assert len(dm.val_dataloader().dataset) == len(dm.val_dataset)


def test_datamodule_long_tail_only_touches_train():
    balanced = ClassificationDataModule(seed=1)
    tailed = ClassificationDataModule(seed=1, imbalance_factor=10)
    counts = tailed.class_counts
    full = balanced.class_counts
    n_max = int(full.max())
    assert counts[0] == full[0]
    assert counts[-1] == math.floor(n_max / 10)
    expected = [min(int(full[c]), math.floor(n_max * 10 ** (-c / 9) + 1e-9)) for c in range(10)]
    assert counts.tolist() == expected
    assert set(tailed._plan.train) <= set(balanced._plan.train)
    assert (tailed._plan.val, tailed._plan.test) == (balanced._plan.val, balanced._plan.test)
    tailed.setup("fit")
    assert counts.sum() == len(tailed.train_dataset)
    assert Counter(tailed.train_dataset.targets.tolist()) == {
        c: int(n) for c, n in enumerate(counts)
    }


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"image_size": 4}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"imbalance_factor": 0.5}, "imbalance_factor"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        ClassificationDataModule(**kwargs)
