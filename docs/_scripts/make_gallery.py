"""Draw the figures of docs/gallery.md from one small run, with the library's own plot functions.

    uv run python docs/_scripts/make_gallery.py            # writes docs/gallery/*.png
    uv run python docs/_scripts/make_gallery.py --out DIR  # somewhere else

The run: a two-layer MLP trained for 12 epochs on scikit-learn's embedded digits (1,797 real
8x8 images, no download) on the CPU, with a ``LossMixin`` module and the ``InfoBatch`` callback
(prune ratio 0.5). Then:

- ``infobatch_saving.png``: the fraction of the training set InfoBatch skipped in each epoch,
  read from ``InfoBatch.history``;
- ``reliability_diagram.png``: ``CalibrationReport`` over the held-out digits, drawn by
  ``plot_reliability_diagram``;
- ``spectral_density.png``, ``landscape_line.png``, ``landscape_plane.png``: the Hessian
  eigenvalue density (SLQ, with the top Lanczos eigenvalues), and 1-D and 2-D
  filter-normalised slices of the training loss around the trained weights, computed by
  ``lightning_losses.diagnostics`` on a fixed probe set and drawn by its plot functions.

A second small run trains the segmentation recipe's model (``SegmentationModule``: smp U-Net,
three-stage ``tu-resnet10t`` encoder from scratch, cross-entropy + Dice) for a few epochs on the
embedded thin structures (``SegmentationDataModule``), then:

- ``segmentation_panel.png``: in-distribution test images, their ground truth, the prediction
  and its errors, drawn by ``plot_segmentation_panel``.

Everything is seeded; the figures are small PNGs (80 dpi). The segmentation run is the longest
part.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossMixin, build_loss
from lightning_losses.calibration import CalibrationReport, plot_reliability_diagram
from lightning_losses.callbacks import InfoBatch
from lightning_losses.diagnostics import (
    LossFunction,
    lanczos,
    line_slice,
    plane_slice,
    random_direction,
    spectral_density,
)
from lightning_losses.diagnostics.plots import (
    plot_line_slice,
    plot_plane_slice,
    plot_spectral_density,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "gallery"
DPI = 80
EPOCHS = 12
SEED = 0
#: The segmentation run of the panel: training images, epochs, images shown.
SEG_TRAIN, SEG_EPOCHS, SEG_PANEL = 128, 4, 4


class DigitsMLP(LossMixin, L.LightningModule):
    """64 pixels -> 64 hidden units -> 10 classes, cross-entropy through the loss pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        self.criterion = build_loss("cross_entropy")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.compute_loss(self(x), y, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def digits_splits() -> tuple[TensorDataset, TensorDataset]:
    """Training (first 1,200 of a seeded permutation) and held-out digits, pixels in [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    train, test = order[:1200], order[1200:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def train(train_set: TensorDataset) -> tuple[DigitsMLP, InfoBatch]:
    L.seed_everything(SEED, verbose=False)
    model = DigitsMLP()
    infobatch = InfoBatch(prune_ratio=0.5, seed=SEED)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        callbacks=[infobatch],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(train_set, batch_size=64, shuffle=True))
    return model.eval(), infobatch


def plot_infobatch_saving(history: list[dict[str, float]], path: Path) -> None:
    """Bars of the pruned fraction per epoch (InfoBatch has no plot function of its own)."""
    epochs = np.array([h["epoch"] for h in history])
    saving = np.array([h["saving"] for h in history])
    fig = Figure(figsize=(5.0, 3.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(epochs, 100 * saving, color="#4c72b0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("samples skipped (%)")
    ax.set_xticks(epochs)
    total = 100 * saving.mean()
    ax.set_title(f"InfoBatch, prune ratio 0.5: {total:.0f} % fewer samples overall")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)


def reliability(model: DigitsMLP, test_set: TensorDataset, path: Path) -> None:
    x, y = test_set.tensors
    report = CalibrationReport(num_classes=10, n_bins=10)
    with torch.no_grad():
        report.update(model(x), y)
    result = report.compute()
    title = f"Digits MLP, {100 * float(result['accuracy']):.1f} % accurate"
    plot_reliability_diagram(result["reliability"], path, title, figsize=(4.5, 5.0), dpi=DPI)


def landscape(model: DigitsMLP, train_set: TensorDataset, out: Path) -> None:
    x, y = train_set.tensors
    probe = [(x[:512], y[:512])]

    def loss_fn(net: nn.Module, batch) -> torch.Tensor:
        return nn.functional.cross_entropy(net(batch[0]), batch[1])

    fn = LossFunction(model.net, loss_fn, probe)
    top = lanczos(fn, k=3, seed=SEED)
    density = spectral_density(fn, num_runs=2, num_steps=60, seed=SEED)
    grid = density.grid()
    plot_spectral_density(
        grid,
        density.density(grid),
        out / "spectral_density.png",
        eigenvalues=top.eigenvalues,
        figsize=(5.0, 3.4),
        dpi=DPI,
    )
    generator = torch.Generator().manual_seed(SEED)
    first = random_direction(model.net, seed=generator)
    second = random_direction(model.net, seed=generator)
    line = line_slice(fn, first, distance=1.0, num_points=41)
    plot_line_slice(
        line.alphas, line.losses, out / "landscape_line.png", figsize=(4.5, 3.4), dpi=DPI
    )
    plane = plane_slice(fn, first, second, distance=1.0, num_points=21)
    plot_plane_slice(
        plane.alphas,
        plane.betas,
        plane.losses,
        out / "landscape_plane.png",
        log_scale=True,
        figsize=(5.0, 4.0),
        dpi=DPI,
    )


def segmentation_panel(path: Path) -> dict[str, float]:
    """Train the segmentation recipe's model briefly on the thin structures; draw test images.

    The model options are the recipe's default config (``recipes/configs/segmentation.yaml``);
    only the training length is shorter. Returns the in-distribution test Dice and clDice of
    the images shown.
    """
    import yaml

    from lightning_losses.data import SegmentationDataModule
    from lightning_losses.metrics.topology import ClDiceScore
    from lightning_losses.tasks.segmentation import SegmentationModule, plot_segmentation_panel

    config = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "segmentation.yaml"
    options = yaml.safe_load(config.read_text())["model"]
    L.seed_everything(SEED, verbose=False)
    data = SegmentationDataModule(
        train_size=SEG_TRAIN, val_size=8, test_size=SEG_PANEL, ood_splits=[], batch_size=8
    )
    model = SegmentationModule(
        **{**options, "panel_images": 0}, num_classes=data.num_classes, in_chans=data.in_chans
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=SEG_EPOCHS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    test = data.test_dataset
    images = test.images[:SEG_PANEL]
    masks = test.masks[:SEG_PANEL]
    with torch.no_grad():
        preds = model.eval()(images).argmax(1)
    dice = float(
        2 * ((preds == 1) & (masks == 1)).sum() / ((preds == 1).sum() + (masks == 1).sum())
    )
    cldice = ClDiceScore("multiclass", num_classes=2)
    cldice.update(preds, masks)
    title = (
        f"CE + Dice, {SEG_EPOCHS} epochs on {SEG_TRAIN} images. Errors: red = false positive, "
        "blue = false negative"
    )
    plot_segmentation_panel(images, masks, preds, path, title=title)
    return {"dice": dice, "cldice": float(cldice.compute())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    train_set, test_set = digits_splits()
    model, infobatch = train(train_set)
    plot_infobatch_saving(infobatch.history, args.out / "infobatch_saving.png")
    reliability(model, test_set, args.out / "reliability_diagram.png")
    landscape(model, train_set, args.out)
    scores = segmentation_panel(args.out / "segmentation_panel.png")
    print(f"segmentation panel: Dice {scores['dice']:.3f}, clDice {scores['cldice']:.3f}")
    for path in sorted(args.out.glob("*.png")):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
