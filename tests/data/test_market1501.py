"""The Market-1501 loader on small trees written with PIL."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_losses.data.market1501 import market1501_splits, parse_market_name
from lightning_losses.data.reid_datamodule import ReIDDataModule

TREE = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c1s1_000101_01.jpg",
        "0007_c3s1_000201_02.jpg",
        "0011_c4s2_001001_01.jpg",
        "0011_c5s2_001101_01.jpg",
        "0011_c6s2_001201_01.jpg",
    ],
    "query": ["0003_c1s1_000020_00.jpg", "0005_c2s1_000030_00.jpg"],
    "bounding_box_test": [
        "-1_c1s1_000010_01.jpg",
        "0000_c3s1_000011_01.jpg",
        "0003_c1s1_000021_01.jpg",
        "0003_c4s1_000022_01.jpg",
        "0005_c2s1_000031_01.jpg",
        "0005_c6s1_000032_01.jpg",
    ],
}


def write_tree(root, tree=TREE, size=(20, 40)):
    for folder, names in tree.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            colour = (10 * i, 100, 255 - 10 * i)
            Image.new("RGB", size, colour).save(root / folder / name)
    return root


def test_parse_names():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("/x/y/-1_c3s2_012345_01.jpg") == (-1, 3)
    assert parse_market_name("0000_c6s4_002202_05.png") == (0, 6)
    for bad in ("2_c1s1_000451_03.jpg", "0002_c1_000451_03.jpg", "0002_c1s1.jpg", "abcd.jpg"):
        with pytest.raises(ValueError, match=bad.split(".")[0]):
            parse_market_name(bad)


def test_splits_ids_cameras_and_images(tmp_path):
    root = write_tree(tmp_path)
    (root / "query" / "Thumbs.db").write_bytes(b"not an image")  # skipped, as in Market itself
    train, query, gallery = market1501_splits(root, image_size=(32, 16), augment_train=False)
    assert len(train) == 7 and len(query) == 2 and len(gallery) == 6
    assert train.ids.tolist() == [0, 0, 1, 1, 2, 2, 2]  # relabelled in order of the numbers
    assert train.pids.tolist() == [2, 2, 7, 7, 11, 11, 11]
    assert train.cameras.tolist() == [1, 2, 1, 3, 4, 5, 6]
    assert query.ids.tolist() == [3, 5] and query.cameras.tolist() == [1, 2]
    assert gallery.ids.tolist() == [-1, 0, 3, 3, 5, 5]  # junk and distractors kept for the metric
    sample = gallery[2]
    assert set(sample) == {"image", "id", "camera", "index"}
    assert sample["image"].shape == (3, 32, 16) and (sample["id"], sample["camera"]) == (3, 1)
    # a uniform image (as the JPEG decodes) normalised with ImageNet's statistics
    with Image.open(gallery.paths[2]) as img:
        pixel = torch.tensor(img.convert("RGB").getpixel((10, 20)), dtype=torch.float32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(sample["image"][:, 16, 8], (pixel / 255 - mean) / std)


def test_train_drops_junk_and_distractors(tmp_path):
    tree = dict(TREE)
    tree["bounding_box_train"] = TREE["bounding_box_train"] + [
        "-1_c1s1_000001_01.jpg",
        "0000_c2s1_000002_01.jpg",
    ]
    train, _, _ = market1501_splits(write_tree(tmp_path, tree))
    assert len(train) == 7 and int(train.pids.min()) == 2


def test_malformed_name_is_named(tmp_path):
    root = write_tree(tmp_path)
    Image.new("RGB", (4, 8)).save(root / "bounding_box_test" / "0003-c1s1-000021-01.jpg")
    with pytest.raises(ValueError, match=r"0003-c1s1-000021-01\.jpg"):
        market1501_splits(root)


def test_missing_folders_and_empty_train(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        market1501_splits(tmp_path / "nowhere")
    root = write_tree(tmp_path, {"bounding_box_train": TREE["bounding_box_train"]})
    with pytest.raises(ValueError, match="query"):
        market1501_splits(root)
    only_junk = {
        "bounding_box_train": ["-1_c1s1_000001_01.jpg"],
        "query": [],
        "bounding_box_test": [],
    }
    other = write_tree(tmp_path / "junk", TREE | only_junk)
    with pytest.raises(ValueError, match=r"no \.jpg"):
        market1501_splits(other)


def test_datamodule_reads_a_market_tree(tmp_path):
    root = write_tree(tmp_path)
    dm = ReIDDataModule(data_dir=root, p=2, k=2, image_size=(32, 16), eval_batch_size=4)
    assert dm.num_classes == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 16)
    batches = list(dm.val_dataloader())
    assert torch.cat([b["is_query"] for b in batches]).tolist() == [True] * 2 + [False] * 6
    assert torch.cat([b["id"] for b in batches]).tolist() == [3, 5, -1, 0, 3, 3, 5, 5]
