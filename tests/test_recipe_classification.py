"""The classification recipe end to end through LightningCLI (short runs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from lightning_losses.tasks.classification import cli_main

CONFIG = Path(__file__).parents[1] / "recipes" / "configs" / "classification.yaml"


def _run(tmp_path: Path, *extra: str):
    args = [
        "fit",
        "--config",
        str(CONFIG),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.limit_test_batches",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    cli = cli_main(args)
    run_dir = Path(cli.trainer.log_dir)
    return cli, run_dir


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_fit_then_test_writes_the_report(tmp_path, capsys):
    # Lightning's info messages, read where they are logged (what passes the logger's filters
    # reaches its own handlers, whatever another test did to propagation or the root logger)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        cli, run_dir = _run(tmp_path)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    out = capsys.readouterr().out
    # one metrics table per report, the recipe's own, on stdout: not Lightning's test table too
    assert out.count("test report (resnet18, loss=cross_entropy)") == 1
    assert out.count("val report (resnet18, loss=cross_entropy)") == 1
    assert "Test metric" not in out and "DataLoader 0" not in out
    assert "test report written to" in out
    # Lightning's product tips are dropped; its own messages about the run are kept
    assert not any("Tip:" in m for m in records.messages)
    assert any("`Trainer.fit` stopped" in m for m in records.messages)
    report = json.loads((run_dir / "test_metrics.json").read_text())
    assert set(report["metrics"]) >= {"accuracy", "macro_f1", "ece", "mce", "nll", "brier"}
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    # post-hoc temperature scaling, fitted on the validation split, reported next to the raw
    # figures and the validation NLL it was fitted on
    assert report["temperature_scaling"]["status"] == "fitted"
    assert report["metrics"]["temperature"] > 0
    assert {"ece_temperature_scaled", "nll_temperature_scaled"} <= set(report["metrics"])
    assert report["metrics"]["val_nll_after_scaling"] < report["metrics"]["val_nll_before_scaling"]
    png = run_dir / "test_reliability.png"
    assert png.stat().st_size > 0 and Image.open(png).size[0] > 100
    assert (run_dir / "val_metrics.json").exists()
    assert cli.model.net.num_classes == 10  # linked from the datamodule


def test_a_perfectly_separated_validation_split_skips_temperature_scaling(tmp_path):
    """Validation labels equal to the model's own predictions: no finite temperature minimises
    their NLL. The report says scaling was skipped and shows no post-scaling figures."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    cli, run_dir = _run(tmp_path)
    model, datamodule = cli.model, cli.datamodule
    x = torch.cat([batch[0] for batch in datamodule.val_dataloader()])
    with torch.no_grad():
        y = model(x).argmax(1)
    datamodule.val_dataloader = lambda: DataLoader(TensorDataset(x, y), batch_size=64)
    with pytest.warns(UserWarning, match="temperature scaling skipped"):
        cli.trainer.test(model, datamodule=datamodule)
    report = json.loads((run_dir / "test_metrics.json").read_text())
    note = report["temperature_scaling"]
    assert note["status"].startswith("skipped") and note["temperature"] == 1.0
    assert not any(key.endswith("_temperature_scaled") for key in report["metrics"])
    assert "temperature" not in report["metrics"]


@pytest.mark.parametrize(
    "loss, kwargs",
    [("ldam", '{"drw_epoch": 0}'), ("asl", "{}"), ("class_balanced", '{"base": "focal"}')],
)
def test_count_aware_and_multilabel_losses_train_on_long_tailed_digits(tmp_path, loss, kwargs):
    cli, _ = _run(
        tmp_path,
        "--model.loss",
        loss,
        "--model.loss_kwargs",
        kwargs,
        "--model.head",
        "cosine" if loss == "ldam" else "linear",
        "--data.imbalance_factor",
        "10",
    )
    counts = cli.datamodule.class_counts
    assert counts[0] > counts[-1]
    for module in cli.model.criterion.modules():
        if hasattr(module, "class_counts") and module.class_counts.numel():
            assert module.class_counts.tolist() == counts.tolist()  # from the datamodule


def test_image_folder_tree(tmp_path):
    root = tmp_path / "images"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c, color in enumerate(((250, 10, 10), (10, 250, 10), (10, 10, 250))):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 10), tuple(max(0, v - 7 * i) for v in color)).save(
                    folder / f"{i}.png"
                )
    cli, run_dir = _run(
        tmp_path / "run",
        "--data.data_dir",
        str(root),
        "--data.in_chans",
        "3",
        "--data.batch_size",
        "4",
        "--model.backbone",
        "resnet10t",
    )
    assert cli.model.net.num_classes == 3
    assert (run_dir / "test_metrics.json").exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--model.loss", "focl", r"unknown loss name 'focl'\. Did you mean 'focal'"),
        ("--model.backbone", "resnet19", r"'resnet19' is not a timm architecture.*'resnet18'"),
        ("--data.data_dir", "/no/such/folder", r"`data_dir` must be an existing folder"),
        ("--model.lr", "abc", r'Parser key "model.lr".*Got value: abc'),
        ("--model.loss_kwargs", '{"gama": 2}', r"unknown option\(s\) 'gama'"),
    ],
)
def test_a_wrong_option_is_one_readable_line(tmp_path, capsys, option, value, expected):
    import re

    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(expected, lines[0]), err
    assert "Traceback" not in err and "usage:" not in err
