"""ERM, group-balanced ERM and GroupDRO on the spurious-correlation digits, over seeds, in one run.

The training split's frame attribute agrees with the label 95% of the time; validation and test
are balanced over the four (label, frame) groups (``docs/data_spurious.md``). Every run trains
the classification task (timm resnet18 from scratch, cross-entropy, AdamW with a cosine
schedule) for the same number of optimiser steps and, as in Sagawa et al. (ICLR 2020), keeps
the checkpoint with the best **worst-group validation accuracy** (``ModelCheckpoint`` on
``val/worst_group_accuracy``); the test split is only read at the end, on that checkpoint and on
the last one. Methods:

* ``erm``: every training image once per epoch, shuffled.
* ``balanced``: ERM on group-balanced draws (``SpuriousDigitsDataModule(group_balanced=
  "reweight")``, the reference code's ``--reweight_groups``).
* ``subsample``: ERM on group-balanced subsets (``group_balanced="subsample"``, 4 x 25 images
  per epoch; epochs are shorter, so there are more of them and validation runs every
  ``ceil(N / B) / ceil(4 m / B)`` epochs: the same steps and validation points as the others).
* ``group_dro``: the ``GroupDRO`` callback on group-balanced draws, the reference code's group
  DRO runs (``--reweight_groups --robust``), step size 0.01, adjustment C = 0.
* ``group_dro_shuffled``: the ``GroupDRO`` callback on the plain shuffled loader.

    python benchmarks/group_dro.py                               # default methods, 3 seeds
    python benchmarks/group_dro.py --methods erm group_dro --seeds 0 --epochs 4  # a quick look
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_losses.callbacks import GroupDRO
from lightning_losses.data import SpuriousDigitsDataModule
from lightning_losses.tasks.classification import ClassificationModule

ROOT = Path(__file__).resolve().parents[1]

#: method -> (label in the table, group_balanced mode of the datamodule, GroupDRO on or off)
METHODS: dict[str, tuple[str, str | None, bool]] = {
    "erm": ("ERM", None, False),
    "balanced": ("ERM + group-balanced sampling (reweight)", "reweight", False),
    "subsample": ("ERM + group-balanced subsampling", "subsample", False),
    "group_dro": ("GroupDRO (+ group-balanced sampling, as the reference)", "reweight", True),
    "group_dro_shuffled": ("GroupDRO on shuffled batches", None, True),
}
DEFAULT_METHODS = ["erm", "balanced", "subsample", "group_dro"]


def run(method: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    _, balanced, robust = METHODS[method]
    L.seed_everything(seed, verbose=False)
    dm = SpuriousDigitsDataModule(
        seed=seed, correlation=args.correlation, batch_size=args.batch_size, group_balanced=balanced
    )
    model = ClassificationModule(
        num_classes=dm.num_classes,
        in_chans=dm.in_chans,
        num_groups=dm.num_groups,
        lr=args.lr,
        weight_decay=args.weight_decay,
        temperature_scaling=False,
    )
    # Same optimiser steps and validation points for every method: a subsampled epoch is
    # shorter, so it gets proportionally more epochs and validates proportionally less often.
    full = math.ceil(int(dm.group_counts.sum()) / args.batch_size)
    dm.setup()
    per_epoch = len(dm.train_dataloader())
    every = max(1, full // per_epoch)
    # Two selections from the same run: on worst-group validation accuracy (needs group labels
    # on validation) and on average validation accuracy (needs none; the reference code selects
    # its ERM runs this way). Test is read only on the selected checkpoints and the last one.
    selectors = {
        key: ModelCheckpoint(
            dirpath=workdir / f"{method}-{seed}-{key}",
            monitor=monitor,
            mode="max",
            save_last=key == "worst",
            save_weights_only=True,
        )
        for key, monitor in (("worst", "val/worst_group_accuracy"), ("average", "val/accuracy"))
    }
    callbacks: list[L.Callback] = list(selectors.values())
    if robust:
        callbacks.append(
            GroupDRO(
                num_groups=dm.num_groups,
                group_key=2,
                step_size=args.step_size,
                adjustment=args.adjustment,
                group_sizes=dm.group_counts,
            )
        )
    trainer = L.Trainer(
        max_steps=args.epochs * full,
        max_epochs=-1,
        check_val_every_n_epoch=every,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    out = {"seconds": seconds}
    for key, path in (
        ("worst", selectors["worst"].best_model_path),
        ("average", selectors["average"].best_model_path),
        ("last", selectors["worst"].last_model_path),
    ):
        trainer.test(model, datamodule=dm, ckpt_path=path, verbose=False)
        out[f"{key}_worst"] = model.reports["test"]["worst_group_accuracy"]
        out[f"{key}_accuracy"] = model.reports["test"]["accuracy"]
        step = torch.load(path, map_location="cpu", weights_only=False)["global_step"]
        out[f"{key}_epoch"] = step / full
    out["val_worst"] = float(selectors["worst"].best_model_score)
    return out


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = scale * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {scale * statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="in full passes' worth of steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--adjustment", type=float, default=0.0)
    parser.add_argument("--correlation", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/group_dro.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="group_dro_") as tmp:
        for method in args.methods:
            runs = [run(method, s, args, Path(tmp)) for s in args.seeds]
            results[method] = runs
            print(method, [round(r["worst_worst"], 3) for r in runs], flush=True)

    lines = [
        f"Spurious-correlation digits (frame agrees with the label for "
        f"{100 * args.correlation:g}% of training images; validation and test balanced over the "
        f"four groups), resnet18 from scratch, {args.epochs} epochs' worth of steps "
        f"({args.epochs} x ceil(N / {args.batch_size})), AdamW lr {args.lr:g}, weight decay "
        f"{args.weight_decay:g}, cosine schedule; GroupDRO step size {args.step_size:g}, "
        f"adjustment C = {args.adjustment:g}. Test accuracy of the checkpoint selected on "
        "worst-group validation accuracy, on average validation accuracy, and of the last one. "
        f"Seeds {', '.join(map(str, args.seeds))} (split, attributes, initialisation, order); "
        "mean ± std in percent; epochs in full passes' worth of steps.",
        "",
        "| method | worst-group, selected on val worst-group | average accuracy (same "
        "checkpoint) | selected epoch | worst-group, selected on val average | worst-group, "
        "last checkpoint | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, runs in results.items():
        lines.append(
            f"| {METHODS[method][0]} | {fmt([r['worst_worst'] for r in runs])} | "
            f"{fmt([r['worst_accuracy'] for r in runs])} | "
            f"{fmt([r['worst_epoch'] for r in runs], scale=1.0)} | "
            f"{fmt([r['average_worst'] for r in runs])} | "
            f"{fmt([r['last_worst'] for r in runs])} | "
            f"{statistics.fmean(r['seconds'] for r in runs):.0f} |"
        )
    if "erm" in results:
        lines += [
            "",
            "Worst-group test accuracy (selected on val worst-group) minus ERM's, paired by seed, "
            "in points; ERM selected on val worst-group / on val average (the reference code's "
            "ERM selection, which needs no group labels):",
            "",
        ]
        erm = results["erm"]
        for method, runs in results.items():
            if method == "erm":
                continue
            pairs = list(zip(erm, runs, strict=True))
            vs_worst = [r["worst_worst"] - e["worst_worst"] for e, r in pairs]
            vs_average = [r["worst_worst"] - e["average_worst"] for e, r in pairs]
            lines.append(f"- {METHODS[method][0]}: {fmt(vs_worst)} / {fmt(vs_average)}")
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
