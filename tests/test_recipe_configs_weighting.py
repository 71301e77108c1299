"""The group-shift and noisy-label recipe configs through the classification CLI (short runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_losses.callbacks import GroupDRO
from lightning_losses.data import ClassificationDataModule, SpuriousDigitsDataModule
from lightning_losses.data.group_balanced import GroupBalancedSampler
from lightning_losses.tasks.classification import cli_main

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"


def _run(tmp_path: Path, *configs: str):
    args = ["fit"]
    for name in configs:
        args += ["--config", str(CONFIGS / name)]
    args += [
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
    ]
    cli = cli_main(args)
    return cli, Path(cli.trainer.log_dir)


def _check_spurious_run(cli, run_dir: Path) -> None:
    dm = cli.datamodule
    assert type(dm) is SpuriousDigitsDataModule  # picked by data.class_path
    # the config sets every argument: nothing carried over from ClassificationDataModule
    assert (dm.val_fraction, dm.test_fraction, dm.correlation) == (0.15, 0.3, 0.98)
    assert cli.model.net.num_classes == 2  # linked from the datamodule
    report = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= report["worst_group_accuracy"] <= report["mean_group_accuracy"] <= 1.0
    # model selection: the test ran on the best checkpoint by worst-group validation accuracy
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/worst_group_accuracy" and checkpoint.mode == "max"
    assert cli.trainer.ckpt_path == checkpoint.best_model_path
    assert Path(checkpoint.best_model_path).is_file()


def test_spurious_group_dro_config(tmp_path):
    cli, run_dir = _run(tmp_path, "spurious_group_dro.yaml")
    _check_spurious_run(cli, run_dir)
    dro = [c for c in cli.trainer.callbacks if isinstance(c, GroupDRO)]
    assert len(dro) == 1 and dro[0].group_key == 2 and dro[0].num_groups == 4
    q = dro[0].q
    assert float(q.sum()) == pytest.approx(1.0)
    assert not torch.allclose(q, torch.full((4,), 0.25, dtype=q.dtype))  # it took steps
    assert int(dro[0].samples_seen.sum()) == 3 * cli.datamodule.batch_size
    assert cli.model.hparams.num_groups == 4
    sampler = cli.datamodule.train_dataloader().sampler
    assert isinstance(sampler, GroupBalancedSampler)
    assert sampler.mode == cli.datamodule.group_balanced


def test_spurious_erm_config(tmp_path):
    cli, run_dir = _run(tmp_path, "spurious_erm.yaml")
    _check_spurious_run(cli, run_dir)
    assert not any(isinstance(c, GroupDRO) for c in cli.trainer.callbacks)
    assert cli.datamodule.group_balanced is None
    assert isinstance(cli.datamodule.train_dataloader().sampler, torch.utils.data.RandomSampler)


@pytest.mark.parametrize(
    ("overlay", "loss"),
    [("noisy_labels.yaml", "GCELoss"), ("noisy_labels_ce.yaml", "CrossEntropyLoss")],
)
def test_noisy_label_configs(tmp_path, overlay, loss):
    cli, run_dir = _run(tmp_path, "classification.yaml", overlay)
    dm = cli.datamodule
    assert type(dm) is ClassificationDataModule and dm.label_noise == 0.4
    n = len(dm.train_dataset)
    assert int(dm.noisy_mask.sum()) == int(0.4 * n + 0.5)
    assert type(cli.model.criterion).__name__ == loss
    report = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= report["accuracy"] <= 1.0
