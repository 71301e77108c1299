"""The classification task: any timm backbone, any registered loss, torchmetrics reports.

``ClassificationModule`` is a plain ``LightningModule`` with :class:`~lightning_losses.LossMixin`;
``cli_main`` runs it through ``LightningCLI`` (the recipe ``recipes/classification.py``) with
:class:`~lightning_losses.data.ClassificationDataModule` by default, or any
``LightningDataModule`` named by ``data.class_path`` (for example
:class:`~lightning_losses.data.SpuriousDigitsDataModule`). At the end of fit (last validation)
and of test it prints accuracy, macro-F1 and calibration (ECE, MCE, NLL, Brier) as a table, and
writes them as JSON with a reliability diagram (PNG) to the run's log directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from .._checks import check_choice
from ..calibration import CalibrationReport, TemperatureScaler
from ..callbacks.infobatch import estimated_stepping_batches
from ..metrics import GroupAccuracy
from ..mixins import LossMixin
from ..registry import build_loss
from .backbones import check_timm_backbone
from .recipe_cli import RecipeCLI, run_recipe_cli
from .report import format_table, print_report, write_report


class CosineClassifier(nn.Module):
    r"""Cosine-similarity head: :math:`z_k = \cos(x, w_k)`, logits in [-1, 1].

    The normalised linear layer that margin losses on a fixed logit scale (LDAM with
    ``scale=30``) are designed for.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class ClassificationModule(LossMixin, L.LightningModule):
    """Image classifier: ``timm.create_model(backbone)`` trained with a registered loss.

    Args:
        backbone: any ``timm.list_models()`` name.
        num_classes, in_chans: filled from the datamodule by the recipe's CLI.
        pretrained: load timm weights (needs them in the local cache; False by default because
            no weights can be downloaded at run time). ``checkpoint_path`` loads a local file.
        loss: a registered loss name (``lightning-losses list``); ``loss_kwargs`` its options.
            Multi-label losses (``binary_focal``, ``asl``, ...) get one-hot targets.
        head: ``"linear"`` (timm's own classifier) or ``"cosine"`` (:class:`CosineClassifier`,
            for margin losses with a fixed scale such as LDAM).
        lr, weight_decay: AdamW, with a cosine schedule over all training steps.
        n_bins: calibration bins for ECE and the reliability diagram (15, Guo et al. 2017).
        temperature_scaling: before testing, fit a temperature on the validation split (Guo et
            al. 2017) and report the test calibration after scaling too (``*_temperature_scaled``
            keys next to the validation NLL before and after; accuracy does not change). When
            the validation split gives no signal (all correct, or the optimum out of bounds) the
            temperature stays 1, the report says why and shows no post-scaling figures.
        num_groups: when batches are ``(image, label, group)``, also report accuracy per group,
            the worst group's and their mean (``worst_group_accuracy``, ``mean_group_accuracy``).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 1,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        loss: str = "cross_entropy",
        loss_kwargs: dict[str, Any] | None = None,
        head: str = "linear",
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        n_bins: int = 15,
        temperature_scaling: bool = True,
        num_groups: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice(head, ("linear", "cosine"), "head")
        self.net = timm.create_model(
            check_timm_backbone(backbone),
            pretrained=pretrained or checkpoint_path is not None,
            pretrained_cfg_overlay={"file": checkpoint_path} if checkpoint_path else None,
            num_classes=num_classes if head == "linear" else 0,
            in_chans=in_chans,
        )
        self.head = (
            CosineClassifier(self.net.num_features, num_classes) if head == "cosine" else None
        )
        self.criterion = build_loss(loss, **(loss_kwargs or {}))
        self._multilabel_loss = self.criterion.target_kind == "multilabel"
        metrics = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.val_metrics = metrics.clone()
        self.test_metrics = metrics.clone()
        self.val_calibration = CalibrationReport(num_classes=num_classes, n_bins=n_bins)
        self.test_calibration = CalibrationReport(num_classes=num_classes, n_bins=n_bins)
        self.test_calibration_scaled = CalibrationReport(num_classes=num_classes, n_bins=n_bins)
        self.temperature = TemperatureScaler()
        if num_groups is not None:
            self.val_groups = GroupAccuracy(num_groups)
            self.test_groups = GroupAccuracy(num_groups)
        self.reports: dict[str, dict[str, float]] = {}
        self._reliability: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        features_or_logits = self.net(x)
        return features_or_logits if self.head is None else self.head(features_or_logits)

    def _loss_target(self, y: Tensor, logits: Tensor) -> Tensor:
        if self._multilabel_loss:
            return F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return y

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        return self.compute_loss(logits, self._loss_target(y, logits), batch=batch)

    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.compute_loss(logits, self._loss_target(y, logits), batch=batch, stage=stage)
        getattr(self, f"{stage}_metrics").update(logits, y)
        getattr(self, f"{stage}_calibration").update(logits, y)
        if stage == "test" and self.hparams.temperature_scaling:
            self.test_calibration_scaled.update(self.temperature(logits), y)
        if self.hparams.num_groups is not None:
            getattr(self, f"{stage}_groups").update(logits, y, batch[2])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_report(self, stage: str) -> None:
        metrics = {k: float(v) for k, v in getattr(self, f"{stage}_metrics").compute().items()}
        calibration = getattr(self, f"{stage}_calibration").compute()
        for key in ("ece", "mce", "nll", "brier"):
            metrics[key] = float(calibration[key])
        if self.hparams.num_groups is not None:
            groups = getattr(self, f"{stage}_groups").compute()
            metrics["worst_group_accuracy"] = float(groups["worst"])
            metrics["mean_group_accuracy"] = float(groups["mean"])
            getattr(self, f"{stage}_groups").reset()
        if stage == "test" and self.hparams.temperature_scaling:
            scaled = self.test_calibration_scaled.compute()
            fit = self.temperature.last_fit
            if fit is not None and fit.status == "fitted":
                # post-scaling figures only next to the validation NLL the fit was judged on
                metrics["temperature"] = float(fit.temperature)
                metrics["val_nll_before_scaling"] = fit.nll_before
                metrics["val_nll_after_scaling"] = fit.nll_after
                for key in ("ece", "nll", "brier"):
                    metrics[f"{key}_temperature_scaled"] = float(scaled[key])
            self.test_calibration_scaled.reset()
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "accuracy")
        self.reports[stage] = metrics
        self._reliability[stage] = calibration["reliability"]
        getattr(self, f"{stage}_metrics").reset()
        getattr(self, f"{stage}_calibration").reset()

    def on_validation_epoch_end(self) -> None:
        self._epoch_report("val")

    def on_test_start(self) -> None:
        if not self.hparams.temperature_scaling:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "`temperature_scaling=True` fits the temperature on the validation split and "
                "needs a datamodule; pass `datamodule=` to `trainer.test` or set it to False."
            )
        logits, labels = [], []
        with torch.no_grad():
            for x, y, *_ in datamodule.val_dataloader():
                logits.append(self(x.to(self.device)).float())
                labels.append(y.to(self.device))
        logits = self.all_gather(torch.cat(logits)).flatten(0, -2)
        labels = self.all_gather(torch.cat(labels)).flatten()
        # The test loop runs under inference mode; the fit needs autograd on ordinary tensors.
        with torch.inference_mode(False), torch.enable_grad():
            self.temperature.fit(logits.clone(), labels.clone())
        fit = self.temperature.last_fit
        if fit is not None and fit.skipped:
            rank_zero_warn(
                f"temperature scaling {fit.status} (validation NLL {fit.nll_before:.4f}); the "
                "report shows no post-scaling figures."
            )

    def on_test_epoch_end(self) -> None:
        self._epoch_report("test")
        self._publish("test")

    def on_fit_end(self) -> None:
        if "val" in self.reports:
            self._publish("val")

    def _publish(self, stage: str) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        title = f"{stage} report ({self.hparams.backbone}, loss={self.hparams.loss})"
        print_report("", format_table(title, self.reports[stage]))
        paths = write_report(
            out,
            stage,
            self.reports[stage],
            self._reliability.get(stage),
            extra={
                "hparams": dict(self.hparams),
                "epoch": self.current_epoch,
                **self._temperature_note(stage),
            },
        )
        print_report(f"{stage} report written to {', '.join(str(p) for p in paths.values())}")

    def _temperature_note(self, stage: str) -> dict[str, Any]:
        fit = self.temperature.last_fit if self.hparams.temperature_scaling else None
        if stage != "test" or fit is None:
            return {}
        return {"temperature_scaling": fit._asdict()}

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        # InfoBatch shortens epochs: count its pruned steps so the cosine ends at the end.
        steps = max(1, estimated_stepping_batches(self.trainer))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ClassificationCLI(RecipeCLI):
    """LightningCLI that fills model sizes from the data and tests right after ``fit``.

    The datamodule is any ``LightningDataModule`` with ``num_classes`` and ``in_chans``
    attributes (``subclass_mode_data``): ``data.class_path`` picks it, and a config whose
    ``data`` section has no ``class_path`` gets
    :class:`~lightning_losses.data.ClassificationDataModule`. Switching the class keeps the
    values of arguments with the same name (jsonargparse carries them over, defaults
    included), so a config for another datamodule should set each of its arguments.
    """

    default_data = "lightning_losses.data.ClassificationDataModule"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")


def cli_main(args: list[str] | None = None, **kwargs: Any) -> ClassificationCLI:
    return run_recipe_cli(
        ClassificationCLI,
        ClassificationModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )
