"""Tests for the image/mask folder loader and ``SegmentationDataModule`` on folder trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_losses.data import (
    SegmentationDataModule,
    SegmentationFolderDataset,
    folder_splits,
    list_pairs,
)
from lightning_losses.data.segmentation_folder import mask_statistics, read_mask


def write_pair(
    split_dir: Path,
    stem: str,
    size: tuple[int, int] = (12, 10),
    mask_size: tuple[int, int] | None = None,
    classes: int = 2,
    void: bool = False,
    image_ext: str = ".png",
    rgb: bool = False,
) -> None:
    """One image (a gradient plus the stem's hash) and its mask (vertical bands of classes)."""
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    seed = sum(map(ord, stem))
    pixels = (np.add.outer(np.arange(h), np.arange(w)) * 7 + seed) % 256
    image = np.stack([pixels, 255 - pixels, pixels // 2], -1) if rgb else pixels
    Image.fromarray(image.astype(np.uint8)).save(split_dir / "images" / f"{stem}{image_ext}")
    mw, mh = mask_size or size
    mask = (np.arange(mw)[None, :] * classes // mw).repeat(mh, 0)
    if void:
        mask[0, :] = 255
    Image.fromarray(mask.astype(np.uint8), mode="L").save(split_dir / "masks" / f"{stem}.png")


def make_tree(root: Path, n: int = 10, **kwargs) -> Path:
    for i in range(n):
        write_pair(root, f"img{i:02d}", **kwargs)
    return root


# -------------------------------------------------------------------------------- pairs


def test_list_pairs_matches_stems_across_extensions(tmp_path):
    write_pair(tmp_path, "a", image_ext=".jpg")
    write_pair(tmp_path, "b")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".hidden.png").write_bytes(b"")
    pairs = list_pairs(tmp_path)
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpg", "a.png"), ("b.png", "b.png")]


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_folder_is_named(tmp_path, missing):
    make_tree(tmp_path, 2)
    for f in (tmp_path / missing).iterdir():
        f.unlink()
    (tmp_path / missing).rmdir()
    with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
        list_pairs(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        list_pairs(tmp_path / "nowhere")


def test_image_without_mask_is_named(tmp_path):
    make_tree(tmp_path, 3)
    (tmp_path / "masks" / "img01.png").unlink()
    with pytest.raises(ValueError, match=r"img01\.png.* has no mask"):
        list_pairs(tmp_path)


def test_mask_without_image_is_named(tmp_path):
    make_tree(tmp_path, 3)
    (tmp_path / "images" / "img02.png").unlink()
    with pytest.raises(ValueError, match=r"Mask .*img02\.png.* has no image"):
        list_pairs(tmp_path)


def test_mis_sized_mask_is_named(tmp_path):
    make_tree(tmp_path, 2)
    write_pair(tmp_path, "odd", size=(12, 10), mask_size=(10, 10))
    with pytest.raises(ValueError, match=r"odd\.png.* is 10x10 .* is 12x10"):
        list_pairs(tmp_path)


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="No images in"):
        list_pairs(tmp_path)


def test_duplicate_stems_are_an_error(tmp_path):
    make_tree(tmp_path, 2)
    write_pair(tmp_path, "img00", image_ext=".jpg")
    with pytest.raises(ValueError, match="img00"):
        list_pairs(tmp_path)


# ------------------------------------------------------------------------------- splits


def test_seeded_split_when_val_and_test_are_missing(tmp_path):
    make_tree(tmp_path, 20)
    splits = folder_splits(tmp_path, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert list(splits) == ["train", "val", "test"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    stems = [{i.stem for i, _ in splits[k]} for k in ("train", "val", "test")]
    assert set.union(*stems) == {f"img{i:02d}" for i in range(20)}
    assert sum(map(len, stems)) == 20  # disjoint
    assert folder_splits(tmp_path, 0.2, 0.1, seed=0) == splits
    assert folder_splits(tmp_path, 0.2, 0.1, seed=1) != splits


def test_val_test_and_extra_test_folders_are_used(tmp_path):
    make_tree(tmp_path, 6)
    make_tree(tmp_path / "val", 2)
    make_tree(tmp_path / "test", 3)
    make_tree(tmp_path / "test_dark", 2)
    splits = folder_splits(tmp_path)
    assert list(splits) == ["train", "val", "test", "test_dark"]
    assert [len(v) for v in splits.values()] == [6, 2, 3, 2]
    assert splits["test"][0][0].parent.parent.name == "test"


def test_a_split_folder_with_a_bad_layout_is_named(tmp_path):
    make_tree(tmp_path, 6)
    (tmp_path / "val" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"val.*masks.*does not exist"):
        folder_splits(tmp_path)


def test_too_few_pairs_to_carve_is_an_error(tmp_path):
    make_tree(tmp_path, 2)
    with pytest.raises(ValueError, match="val"):
        folder_splits(tmp_path, val_fraction=0.1, test_fraction=0.5)


# ------------------------------------------------------------------------------ samples


def test_dataset_samples_and_resizing(tmp_path):
    make_tree(tmp_path, 2, classes=3, rgb=True)
    pairs = list_pairs(tmp_path)
    native = SegmentationFolderDataset(pairs, in_chans=3, num_classes=3)
    sample = native[1]
    assert set(sample) == {"image", "mask", "index"} and sample["index"] == 1
    assert sample["image"].shape == (3, 10, 12) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (10, 12) and sample["mask"].dtype == torch.int64
    assert sample["image"].min() >= 0 and sample["image"].max() <= 1
    assert sorted(sample["mask"].unique().tolist()) == [0, 1, 2]
    resized = SegmentationFolderDataset(pairs, image_size=8, in_chans=1, num_classes=3)[0]
    assert resized["image"].shape == (1, 8, 8) and resized["mask"].shape == (8, 8)
    # nearest-neighbour resizing keeps class indices (no blended values)
    assert set(resized["mask"].unique().tolist()) <= {0, 1, 2}
    normed = SegmentationFolderDataset(pairs, mean=[0.5], std=[0.25])[0]["image"]
    raw = SegmentationFolderDataset(pairs)[0]["image"]
    torch.testing.assert_close(normed, (raw - 0.5) / 0.25)


def test_void_maps_to_ignore_index_and_range_is_checked(tmp_path):
    make_tree(tmp_path, 1, void=True)
    _, mask = list_pairs(tmp_path)[0]
    mapped = read_mask(mask, ignore_index=-100, num_classes=2)
    assert (mapped[0] == -100).all() and set(mapped[1:].unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"img00\.png.*\[255\].*ignore_index"):
        read_mask(mask, num_classes=2)
    with pytest.raises(ValueError, match=r"values \[1\] outside the classes \[0, 1\)"):
        read_mask(mask, ignore_index=255, num_classes=1)
    signed = tmp_path / "signed.tif"  # 32-bit signed pixels: TIFF, not PNG
    Image.fromarray(np.array([[0, -3], [1, 1]], dtype=np.int32), mode="I").save(signed)
    with pytest.raises(ValueError, match=r"signed\.tif.*negative value -3"):
        mask_statistics([(signed, signed)])
    rgb_mask = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(rgb_mask)
    with pytest.raises(ValueError, match="single-channel"):
        read_mask(rgb_mask)


# --------------------------------------------------------------------------- datamodule


def test_datamodule_on_a_folder_tree(tmp_path):
    make_tree(tmp_path, 12, classes=3)
    make_tree(tmp_path / "test_bright", 3, classes=3)
    dm = SegmentationDataModule(data_dir=str(tmp_path), image_size=16, batch_size=4)
    assert dm.num_classes == 3
    assert dm.test_split_names == ["test", "test_bright"]
    counts = dm.class_counts
    assert counts.shape == (3,) and counts.dtype == torch.float32
    dm.setup()
    assert float(counts.sum()) == len(dm.train_dataset) * 16 * 16
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert batch["mask"].dtype == torch.int64
    loaders = dm.test_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [2, 3]
    # images are normalised with the training split's statistics
    train_images = torch.stack([dm.train_dataset[i]["image"] for i in range(len(dm.train_dataset))])
    assert abs(float(train_images.mean())) < 1e-4


def test_datamodule_folder_void_and_num_classes(tmp_path):
    make_tree(tmp_path, 8, void=True)
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationDataModule(data_dir=str(tmp_path), image_size=None)
    dm = SegmentationDataModule(data_dir=str(tmp_path), image_size=None, ignore_index=-100)
    assert dm.num_classes == 2
    assert float(dm.class_counts.sum()) == len(dm._folder["train"]) * 9 * 12  # void row left out
    batch = next(iter(dm.val_dataloader()))
    assert batch["mask"].shape[1:] == (10, 12) and int(batch["mask"].min()) == -100
    wide = SegmentationDataModule(data_dir=str(tmp_path), ignore_index=255, num_classes=4)
    assert wide.num_classes == 4 and wide.class_counts[2:].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationDataModule(data_dir=str(tmp_path), ignore_index=255, num_classes=1)


def test_datamodule_folder_only_accepts_accurate_labels(tmp_path):
    make_tree(tmp_path, 8)
    with pytest.raises(ValueError, match="labels"):
        SegmentationDataModule(data_dir=str(tmp_path), labels="noisy")
    with pytest.raises(ValueError, match="does not exist"):
        SegmentationDataModule(data_dir=str(tmp_path / "missing"))
