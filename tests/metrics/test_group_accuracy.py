"""GroupAccuracy against a naive loop, and the classification task reporting it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_losses.callbacks import GroupDRO
from lightning_losses.data import SpuriousDigitsDataModule
from lightning_losses.metrics import GroupAccuracy
from lightning_losses.tasks.classification import ClassificationModule


def test_matches_a_naive_loop_over_batches():
    g = torch.Generator().manual_seed(0)
    metric = GroupAccuracy(num_groups=4)
    all_logits, all_labels, all_groups = [], [], []
    for _ in range(3):
        logits = torch.randn(10, 3, generator=g)
        labels = torch.randint(0, 3, (10,), generator=g)
        groups = torch.randint(0, 3, (10,), generator=g)  # group 3 never appears
        metric.update(logits, labels, groups)
        all_logits.append(logits), all_labels.append(labels), all_groups.append(groups)
    logits, labels, groups = map(torch.cat, (all_logits, all_labels, all_groups))
    expected = []
    for k in range(3):
        hits = [int(logits[i].argmax() == labels[i]) for i in range(len(labels)) if groups[i] == k]
        expected.append(sum(hits) / len(hits))
    out = metric.compute()
    torch.testing.assert_close(out["per_group"][:3], torch.tensor(expected, dtype=torch.float64))
    assert torch.isnan(out["per_group"][3])
    assert float(out["worst"]) == pytest.approx(min(expected))
    assert float(out["mean"]) == pytest.approx(sum(expected) / 3)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="num_groups"):
        GroupAccuracy(num_groups=0)
    metric = GroupAccuracy(num_groups=2)
    with pytest.raises(ValueError, match="groups"):
        metric.update(torch.randn(3, 2), torch.tensor([0, 1, 1]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.randn(3, 2), torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_task_reports_worst_group_accuracy_with_group_dro(tmp_path):
    dm = SpuriousDigitsDataModule(batch_size=32)
    model = ClassificationModule(
        backbone="resnet10t", num_classes=2, in_chans=1, num_groups=4, temperature_scaling=False
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        accelerator="cpu",
        callbacks=[GroupDRO(num_groups=4, group_key=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert any(k.startswith("train/group_dro/q_") for k in trainer.callback_metrics)
    trainer.test(model, datamodule=dm, verbose=False)
    report = model.reports["test"]
    assert 0.0 <= report["worst_group_accuracy"] <= report["mean_group_accuracy"] <= 1.0
