"""The segmentation task: any smp architecture and encoder, a weighted sum of registered losses
(:class:`~lightning_losses.losses.compound.CompoundLoss`).

``SegmentationModule`` is a plain ``LightningModule`` with :class:`~lightning_losses.LossMixin`;
``cli_main`` runs it through ``LightningCLI`` (the recipe ``recipes/segmentation.py``) with
:class:`~lightning_losses.data.SegmentationDataModule` by default. Validation reports Dice. At the
end of test it reports, for every test split of the datamodule (``test_split_names``: the
in-distribution split and the out-of-distribution ones), Dice, IoU, the 95th-percentile
Hausdorff distance (:class:`~lightning_losses.tasks.hausdorff.HausdorffDistance95`), clDice, the
Betti number errors and the Betti matching error, printed as one table and written as
``test_metrics.json`` to the run's log directory, with ``test_panel.png``: a few test images,
their ground truth, the prediction and its errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore, MeanIoU

from ..callbacks.infobatch import estimated_stepping_batches
from ..losses._base import BATCH_CONTEXT
from ..losses.compound import CompoundLoss
from ..metrics.topology import BettiMatchingError, BettiNumberError, ClDiceScore
from ..mixins import LossMixin
from ..registry import build_loss
from .hausdorff import HausdorffDistance95
from .recipe_cli import RecipeCLI, run_recipe_cli
from .report import print_report, write_report

#: The name this module used for its weighted sum before :class:`CompoundLoss`; kept importable.
WeightedLossSum = CompoundLoss


def _build_criterion(
    loss: str | Sequence[str],
    weights: Sequence[float] | None,
    kwargs: Mapping[str, Mapping[str, Any]] | None,
    schedules: Mapping[str, Any] | None = None,
    activate_when: Mapping[str, float] | None = None,
) -> CompoundLoss:
    names = [loss] if isinstance(loss, str) else list(loss)
    if not names:
        raise ValueError("`loss` must name at least one registered loss; got an empty list.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`loss` names each loss once (give it a weight); got {duplicates} twice.")
    kwargs = dict(kwargs or {})
    stray = [k for k in kwargs if k not in names]
    if stray:
        raise ValueError(
            f"`loss_kwargs` is keyed by the names in `loss` {names}; got unknown key(s) {stray}."
        )
    terms = {name: build_loss(name, **dict(kwargs.get(name, {}))) for name in names}
    for name, term in terms.items():
        if term.target_kind != "index":
            raise ValueError(
                f"`loss` term {name!r} expects {term.target_kind!r} targets; the segmentation "
                "task trains with class-index masks (N, H, W): choose a multiclass loss."
            )
    return CompoundLoss(
        terms,
        [1.0] * len(names) if weights is None else list(weights),
        schedules=schedules,
        activate_when=activate_when,
    )


class SegmentationModule(LossMixin, L.LightningModule):
    """Semantic segmentation: ``smp.create_model(arch, encoder_name)`` trained with registered
    losses.

    Batches are mappings ``{"image": (N, C, H, W), "mask": (N, H, W) class indices, ...}``, as
    :class:`~lightning_losses.data.SegmentationDataModule` gives them; extra entries
    (``"skeleton"``, ``"distance"``) reach the losses that declare them through ``LossMixin``.

    Args:
        arch: any ``segmentation_models_pytorch`` architecture (``"Unet"``, ``"FPN"``,
            ``"DeepLabV3Plus"``, ...).
        encoder_name: any smp encoder, including timm's through the ``"tu-"`` prefix. The
            default ``"tu-resnet10t"`` with ``arch_kwargs`` of the recipe's config (three
            stages) is small enough to train in minutes on a CPU at 64x64.
        encoder_weights: ``None`` (from scratch; nothing can be downloaded at run time).
        arch_kwargs: further arguments of the architecture (``encoder_depth``,
            ``decoder_channels``, ...).
        num_classes, in_chans: filled from the datamodule by the recipe's CLI.
        loss: registered loss names (``lightning-losses list``), summed per image; each term is
            logged as ``{stage}/loss/{name}``. Default cross-entropy + Dice.
        loss_weights: one weight per term (default all 1).
        loss_kwargs: options per term, keyed by name (``{"dice": {"include_background":
            false}}``).
        loss_schedules: term name -> weight schedule, a mapping of
            :class:`~lightning_losses.losses.compound.LinearSchedule` arguments (``{"boundary":
            {"start": 0.0, "end": 0.99, "epochs": 99}}``); the factor multiplies the term's
            weight at each epoch.
        loss_activate_when: term name -> the fraction of training after which the term is
            computed (an expensive topology loss late in training); fractions of the trainer's
            ``max_epochs``.
        lr, weight_decay: AdamW, with a cosine schedule over all training steps.
        panel_images: how many images of the first test split ``test_panel.png`` shows.
    """

    def __init__(
        self,
        arch: str = "Unet",
        encoder_name: str = "tu-resnet10t",
        encoder_weights: str | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        num_classes: int = 2,
        in_chans: int = 1,
        loss: list[str] | str = ("cross_entropy", "dice"),  # type: ignore[assignment]
        loss_weights: list[float] | None = None,
        loss_kwargs: dict[str, dict[str, Any]] | None = None,
        loss_schedules: dict[str, dict[str, float]] | None = None,
        loss_activate_when: dict[str, float] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        panel_images: int = 4,
    ) -> None:
        super().__init__()
        # Kept out of the logger: the datamodule's own `num_classes` argument may be None (a
        # folder infers it), which Lightning's hparam merge would report as a conflict with
        # the linked value. The checkpoint and the report still hold every hparam.
        self.save_hyperparameters(logger=False)
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_chans,
            classes=num_classes,
            **(arch_kwargs or {}),
        )
        self.criterion = _build_criterion(
            loss, loss_weights, loss_kwargs, loss_schedules, loss_activate_when
        )
        self.num_classes = num_classes
        self.val_dice = DiceScore(num_classes, include_background=False, input_format="index")
        self.test_metrics = nn.ModuleDict()
        self.split_names: list[str] = []
        self.reports: dict[str, dict[str, float]] = {}
        self._panel: dict[str, list[Tensor]] = {"image": [], "mask": [], "pred": []}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        # `activate_when` fractions refer to the trainer's training length
        if self.criterion.max_epochs is None and self.trainer.max_epochs is not None:
            self.criterion.max_epochs = int(self.trainer.max_epochs)

    def _log_terms(self, stage: str, batch_size: int) -> None:
        for name, value in self.criterion.last_terms.items():
            # epoch means only, as LossMixin logs its terms: no per-step logging cost
            self.log(
                f"{stage}/loss/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size
            )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        loss = self.compute_loss(logits, batch["mask"], batch=batch)
        self._log_terms("train", logits.shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits = self(batch["image"])
        # Context entries added by training-only transforms (a skeleton) are absent here: the
        # validation loss is then left out, the Dice is not.
        if all(c in batch for c in self.criterion.context if c in BATCH_CONTEXT):
            self.compute_loss(logits, batch["mask"], batch=batch, stage="val")
            self._log_terms("val", logits.shape[0])
        self.val_dice.update(logits.argmax(1), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        dice = self.val_dice.compute()
        self.log("val/dice", dice, prog_bar=True)
        self.reports["val"] = {"dice": float(dice)}
        self.val_dice.reset()

    def _split_metrics(self) -> MetricCollection:
        k = self.num_classes
        topology = {"mode": "multiclass", "num_classes": k}
        return MetricCollection(
            {
                "dice": DiceScore(k, include_background=False, input_format="index"),
                "iou": MeanIoU(k, include_background=False, input_format="index"),
                "hd95": HausdorffDistance95(k),
                "cldice": ClDiceScore(**topology),
                "betti": BettiNumberError(**topology),
                "betti_matching": BettiMatchingError(**topology),
            },
            compute_groups=False,
        )

    def on_test_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        names = list(getattr(datamodule, "test_split_names", None) or ["test"])
        self.split_names = names
        self.test_metrics = nn.ModuleDict({n: self._split_metrics() for n in names}).to(self.device)
        self._panel = {"image": [], "mask": [], "pred": []}

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        pred = self(batch["image"]).argmax(1)
        self.test_metrics[self.split_names[dataloader_idx]].update(pred, batch["mask"])
        wanted = self.hparams.panel_images - sum(len(p) for p in self._panel["pred"])
        if dataloader_idx == 0 and wanted > 0:
            for key, value in (("image", batch["image"]), ("mask", batch["mask"]), ("pred", pred)):
                self._panel[key].append(value[:wanted].detach().cpu())

    def on_test_epoch_end(self) -> None:
        for name in self.split_names:
            values: dict[str, float] = {}
            for key, value in self.test_metrics[name].compute().items():
                values[key] = float(value)
                self.log(f"test/{name}/{key}", float(value), add_dataloader_idx=False)
            self.reports[name] = values
            self.test_metrics[name].reset()
        self._publish()

    def on_fit_end(self) -> None:
        if "val" in self.reports and self.trainer.is_global_zero:
            out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            write_report(out, "val", self.reports["val"], extra={"epoch": self.current_epoch})

    def _publish(self) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        splits = {n: self.reports[n] for n in self.split_names}
        title = f"test report ({self.hparams.arch}/{self.hparams.encoder_name}, loss=" + (
            "+".join(self.criterion.terms) + ")"
        )
        print_report("", format_split_table(title, splits))
        payload = {
            "stage": "test",
            "splits": splits,
            "hparams": dict(self.hparams),
            "epoch": self.current_epoch,
        }
        json_path = out / "test_metrics.json"
        json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        written = [json_path]
        if self._panel["pred"]:
            panel = {k: torch.cat(v) for k, v in self._panel.items()}
            written.append(
                plot_segmentation_panel(
                    panel["image"],
                    panel["mask"],
                    panel["pred"],
                    out / "test_panel.png",
                    title=f"{self.split_names[0]}: errors red = false positive, blue = false "
                    "negative, grey = correct foreground",
                )
            )
        print_report(f"test report written to {', '.join(str(p) for p in written)}")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        steps = max(1, estimated_stepping_batches(self.trainer))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


#: Rows of the report table: (key, label).
REPORT_ROWS = (
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("hd95", "HD95 (px)"),
    ("hd95_undefined", "HD95 undefined (share)"),
    ("cldice", "clDice"),
    ("betti_0", "Betti error b0"),
    ("betti_1", "Betti error b1"),
    ("betti_matching_0", "Betti matching err 0"),
    ("betti_matching_1", "Betti matching err 1"),
)


def format_split_table(title: str, splits: Mapping[str, Mapping[str, float]]) -> str:
    """Metrics as rows, test splits as columns."""
    names = list(splits)
    keys = [k for k, _ in REPORT_ROWS if any(k in s for s in splits.values())]
    extra = [k for s in splits.values() for k in s if k not in keys]
    labels = dict(REPORT_ROWS)
    rows = [(labels.get(k, k), k) for k in [*keys, *dict.fromkeys(extra)]]
    width = max(len(label) for label, _ in rows)
    cols = [max(12, len(n)) for n in names]
    header = " " * width + "".join(f"  {n:>{c}}" for n, c in zip(names, cols, strict=True))
    rule = "-" * len(header)
    lines = [rule, title, rule, header]
    for label, key in rows:
        cells = "".join(
            f"  {splits[n].get(key, math.nan):>{c}.4f}" for n, c in zip(names, cols, strict=True)
        )
        lines.append(f"{label:<{width}}{cells}")
    return "\n".join([*lines, rule])


def plot_segmentation_panel(
    images: Tensor, masks: Tensor, preds: Tensor, path: str | Path, title: str = ""
) -> Path:
    """One row per image: the image, the ground truth, the prediction and the errors.

    Errors: a pixel predicted as a foreground class it is not is a false positive (red); a
    foreground pixel of the ground truth predicted as background is a false negative (blue);
    correct foreground is grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
    k = max(int(masks.max()), int(preds.max()), 1)
    for i in range(n):
        image = images[i].float()
        image = image[0] if image.shape[0] == 1 else image[:3].permute(1, 2, 0)
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
        gt, pr = masks[i].numpy(), preds[i].numpy()
        errors = np.ones((*gt.shape, 3))
        errors[(pr == gt) & (gt > 0)] = (0.6, 0.6, 0.6)
        errors[(pr > 0) & (pr != gt)] = (0.85, 0.1, 0.1)
        errors[(gt > 0) & (pr == 0)] = (0.1, 0.3, 0.9)
        panels = (image.numpy(), gt, pr, errors)
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            if j == 0:
                ax.imshow(panel, cmap="gray")
            elif j in (1, 2):
                ax.imshow(panel, cmap="viridis", vmin=0, vmax=k, interpolation="nearest")
            else:
                ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(("image", "ground truth", "prediction", "errors")[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class SegmentationCLI(RecipeCLI):
    """LightningCLI that fills model sizes from the data and tests right after ``fit``.

    The datamodule is any ``LightningDataModule`` with ``num_classes`` and ``in_chans``
    attributes giving mapping batches (``"image"``, ``"mask"``); a config whose ``data``
    section has no ``class_path`` gets :class:`~lightning_losses.data.SegmentationDataModule`.
    """

    default_data = "lightning_losses.data.SegmentationDataModule"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")


def cli_main(args: list[str] | None = None, **kwargs: Any) -> SegmentationCLI:
    return run_recipe_cli(
        SegmentationCLI,
        SegmentationModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )
