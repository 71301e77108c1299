"""The segmentation recipe end to end through LightningCLI (short runs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_losses.registry import build_loss
from lightning_losses.tasks.segmentation import (
    SegmentationModule,
    WeightedLossSum,
    cli_main,
    format_split_table,
)

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
CONFIG = CONFIGS / "segmentation.yaml"
REPORT_KEYS = {
    "dice",
    "iou",
    "hd95",
    "hd95_undefined",
    "cldice",
    "betti_0",
    "betti_1",
    "betti_matching_0",
    "betti_matching_1",
}


def _run(tmp_path: Path, *extra: str):
    args = [
        "fit",
        "--config",
        str(CONFIG),
        *extra,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--data.batch_size",
        "4",
        "--data.train_size",
        "8",
        "--data.val_size",
        "4",
        "--data.test_size",
        "4",
        "--model.panel_images",
        "2",
    ]
    cli = cli_main(args)
    return cli, Path(cli.trainer.log_dir)


def _logged_tags(run_dir: Path) -> set[str]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        reader = accumulator.EventAccumulator(str(events))
        reader.Reload()
        tags.update(reader.Tags()["scalars"])
    return tags


def _check_report(run_dir: Path, splits: list[str]) -> dict:
    report = json.loads((run_dir / "test_metrics.json").read_text())
    assert list(report["splits"]) == splits
    for name in splits:
        metrics = report["splits"][name]
        assert set(metrics) == REPORT_KEYS, name
        assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["cldice"] <= 1.0
        assert metrics["betti_0"] >= 0 and metrics["betti_matching_1"] >= 0
    png = run_dir / "test_panel.png"
    with Image.open(png) as image:
        assert image.size[0] > 200 and image.size[1] > 100
    return report


@pytest.mark.slow
@pytest.mark.parametrize(
    "overlay, terms",
    [
        (None, ["cross_entropy", "dice"]),
        ("segmentation_cldice.yaml", ["cross_entropy", "cldice"]),
        ("segmentation_skeleton_recall.yaml", ["cross_entropy", "dice", "skeleton_recall"]),
        ("segmentation_lovasz.yaml", ["cross_entropy", "lovasz_softmax"]),
        ("segmentation_noisy.yaml", ["cross_entropy", "dice"]),
        ("segmentation_boundary.yaml", ["cross_entropy", "dice", "boundary"]),
    ],
)
def test_default_and_overlays_write_the_report_per_test_split(tmp_path, capsys, overlay, terms):
    extra = ["--config", str(CONFIGS / overlay)] if overlay else []
    cli, run_dir = _run(tmp_path, *extra)
    out = capsys.readouterr().out  # one table, the recipe's own, on stdout
    assert out.count("test report written to") == 1 and "Test metric" not in out
    dm = cli.datamodule
    report = _check_report(run_dir, dm.test_split_names)
    assert dm.test_split_names[0] == "test" and len(dm.test_split_names) > 1  # ID + OOD splits
    assert list(cli.model.criterion.terms) == terms
    assert report["hparams"]["loss"] == terms
    for name in terms:  # every term logged by name
        assert f"train/loss/{name}" in _logged_tags(run_dir)
    assert cli.model.net.segmentation_head[0].out_channels == 2  # linked from the datamodule
    if overlay == "segmentation_skeleton_recall.yaml":
        sample = dm.train_dataset[0]
        assert "skeleton" in sample and "skeleton" not in dm.val_dataset[0]
    if overlay == "segmentation_noisy.yaml":
        assert dm.labels == "noisy"
    if overlay == "segmentation_boundary.yaml":
        assert dm.train_dataset[0]["distance"].shape == (2, 64, 64)
        criterion = cli.model.criterion
        assert criterion.context == ("epoch", "distance")
        assert (
            criterion.term_weight("dice", 0) == 1.0 and criterion.term_weight("boundary", 5) == 0.99
        )


def _write_tree(root: Path, n: int, size: int = 24) -> None:
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, rng.integers(2, size - 4) :][:, :3] = 1  # a vertical bar
        image = (rng.random((size, size, 3)) * 60 + mask[..., None] * 150).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:02d}.png")


@pytest.mark.slow
def test_image_mask_folder_tree_trains(tmp_path):
    root = tmp_path / "tree"
    _write_tree(root, 12)
    cli, run_dir = _run(
        tmp_path / "run",
        "--data.data_dir",
        str(root),
        "--data.in_chans",
        "3",
        "--data.image_size",
        "32",
    )
    assert cli.model.net.encoder.model.conv1[0].in_channels == 3
    _check_report(run_dir, ["test"])


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model.loss", '["cross_entropy", "dcie"]', r"unknown loss name 'dcie'.*'dice'"),
        ("--model.loss_weights", "[1.0]", r"`loss_weights` must have one weight per loss term"),
        ("--model.loss_kwargs", '{"dice": {"smoth_nr": 1}}', r"unknown option\(s\) 'smoth_nr'"),
        ("--model.loss_kwargs", '{"focal": {}}', r"`loss_kwargs` is keyed by the names"),
        ("--data.data_dir", "/no/such/folder", r"`data_dir` must be an existing folder"),
        ("--model.lr", "abc", r'Parser key "model.lr".*Got value: abc'),
    ],
)
def test_a_wrong_option_is_one_readable_line(tmp_path, capsys, option, value, expected):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(expected, lines[0]), err
    assert "Traceback" not in err and "usage:" not in err


def test_weighted_sum_is_the_weighted_sum_of_its_terms_per_image():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (3, 8, 8))
    ce, dice = build_loss("cross_entropy", reduction="none"), build_loss("dice", reduction="none")
    total = WeightedLossSum({"cross_entropy": ce, "dice": dice}, [1.0, 0.5], reduction="none")
    expected = ce(logits, target) + 0.5 * dice(logits, target)
    torch.testing.assert_close(total(logits, target), expected)
    assert set(total.last_terms) == {"cross_entropy", "dice"}
    torch.testing.assert_close(total.last_terms["dice"], dice(logits, target).mean())


def test_weighted_sum_reads_nothing_back_to_the_host():
    from lightning_losses.testing import no_host_sync

    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    terms = {"cross_entropy": build_loss("cross_entropy"), "dice": build_loss("dice")}
    total = WeightedLossSum(terms, [1.0, 1.0])
    with no_host_sync():
        total(logits, target).backward()
    assert logits.grad is not None


def test_weighted_sum_passes_context_only_to_the_terms_that_declare_it():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 3:5] = 1
    skeleton = torch.zeros_like(target)
    skeleton[:, 4] = 1
    recall = build_loss("skeleton_recall")
    total = WeightedLossSum({"dice": build_loss("dice"), "skeleton_recall": recall}, [1.0, 2.0])
    assert total.context == ("skeleton",)
    expected = build_loss("dice")(logits, target) + 2.0 * recall(logits, target, skeleton=skeleton)
    torch.testing.assert_close(total(logits, target, skeleton=skeleton), expected)
    with pytest.raises(TypeError, match="skeleton"):
        total(logits, target)


def test_weighted_loss_sum_is_the_compound_loss():
    from lightning_losses.losses import CompoundLoss

    assert WeightedLossSum is CompoundLoss
    assert isinstance(SegmentationModule().criterion, CompoundLoss)


def test_module_passes_schedules_and_late_terms_to_its_loss():
    model = SegmentationModule(
        loss=["cross_entropy", "dice", "cldice"],
        loss_schedules={"dice": {"start": 1.0, "end": 0.0, "epochs": 10}},
        loss_activate_when={"cldice": 0.7},
    )
    criterion = model.criterion
    assert criterion.term_weight("dice", 5) == 0.5
    assert criterion.activate_when == {"cldice": 0.7} and criterion.max_epochs is None
    with pytest.raises(ValueError, match=r"`activate_when` is keyed by the term names"):
        SegmentationModule(loss=["dice"], loss_activate_when={"cldice": 0.7})


def test_module_rejects_a_loss_without_index_targets_and_duplicate_terms():
    with pytest.raises(ValueError, match="'lovasz_hinge' expects 'multilabel' targets"):
        SegmentationModule(loss=["cross_entropy", "lovasz_hinge"])
    with pytest.raises(ValueError, match="each loss once"):
        SegmentationModule(loss=["dice", "dice"])
    with pytest.raises(ValueError, match="at least one"):
        SegmentationModule(loss=[])


def test_report_table_has_one_column_per_split():
    table = format_split_table(
        "t", {"test": {"dice": 0.9, "betti_0": 1.0}, "ood_blur": {"dice": 0.5, "betti_0": 2.0}}
    )
    header = next(line for line in table.splitlines() if "ood_blur" in line)
    assert header.split() == ["test", "ood_blur"]
    assert re.search(r"Dice\s+0\.9000\s+0\.5000", table)
    assert re.search(r"Betti error b0\s+1\.0000\s+2\.0000", table)
