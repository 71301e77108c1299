"""Cost and effect of the ``Distillation`` callback, on embedded data.

**Step time** (always), in the setting of a large teacher and a mid-size student: the embedded
digits (1,259 training images upsampled to 32x32, grey), a timm ``resnet10t`` student (4.9 M
parameters) and a timm ``resnet34`` teacher (21.3 M), in the recipe's ``ClassificationModule``
(cross-entropy, AdamW lr 2e-3, weight decay 0.05, cosine schedule), batch 64, CPU. The same
student, data and seed trained three ways, one after the other, ``--rounds`` times in
alternation: alone; with ``Distillation`` (KD, T = 4) from a teacher that runs on every batch;
with ``cache=True`` (the teacher's logits kept per sample index, so after the first epoch the
teacher does not run). The teacher is a freshly initialised resnet34 (a forward costs the same
whatever its weights). A step is timed from the first ``on_train_batch_start`` hook (before the
teacher's forward) to ``on_train_batch_end`` (after the optimizer step). Epoch 0 is warm-up and
excluded for all three (it also fills the cache); the median step time of epochs 1 and later is
reported, with the ratios to the student alone.

**Accuracy** (``--accuracy``), in the setting of ``recipes/configs/distill_*.yaml``: the digit
variants (``DigitVariantsDataModule``, 8 seeded affine variants of each digit, 10,060 training
and 2,880 test images at 32x32), a timm ``resnet10t`` teacher trained ``--teacher-epochs`` (4)
epochs and a timm ``test_vit`` student (0.27 M parameters, 4 tokens per image) trained
``--epochs`` (16) epochs, batch 128 (``--acc-data digits`` uses the embedded digits instead).
Per seed: the teacher is trained, then the student alone and with KD (T = 4), DKD (alpha 1,
beta 8, T 4) and DIST (beta = gamma = tau = 1), each with the callback's weight 1 next to
cross-entropy, all from the same initialisation (``seed_everything(seed)``). The inputs are fixed,
so the teacher's logits are cached after epoch 0. DKD's warm-up is scaled to the run, 20 of 240
epochs in the paper: ``max(1, round(epochs * 20 / 240))`` epochs. The seed also sets the data
split and the shuffling. Test accuracy on the final weights, mean ± std over seeds, and the gap
to the student alone paired by seed.

    python benchmarks/distillation.py                          # step times, 2 rounds
    python benchmarks/distillation.py --accuracy               # + accuracy, 3 seeds
    python benchmarks/distillation.py --smoke                  # seconds: a check that it runs

The results are written as Markdown to ``--out`` (``benchmarks/results/distillation.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from lightning_losses._progress import ProgressBar
from lightning_losses.callbacks import Distillation
from lightning_losses.data import ClassificationDataModule, DigitVariantsDataModule
from lightning_losses.tasks.classification import ClassificationModule

ROOT = Path(__file__).resolve().parents[1]
#: ``--smoke``: step time and accuracy, one round and one seed, 3 batches of 16 per epoch, 2
#: timing epochs (epoch 0 is warm-up), students and teacher 1 epoch
SMOKE = dict(
    accuracy=True,
    seeds=[0],
    epochs=1,
    teacher_epochs=1,
    limit_batches=3,
    batch_size=16,
    acc_batch_size=16,
    timing_epochs=2,
    rounds=1,
)


class _Indexed(Dataset):
    """``(image, label, index)``: the sample index for the teacher-output cache."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.base[i][:2]
        return x, y, i


class IndexedDigits(ClassificationDataModule):
    """The recipe's digits, with the training sample's index at batch position 2."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        super().setup(stage)
        self.train_dataset = _Indexed(self.train_dataset)


class IndexedVariants(DigitVariantsDataModule):
    """The digit variants (10,060 training images), sample index at batch position 2."""

    def setup(self, stage: str | None = None) -> None:
        built = self._built
        super().setup(stage)
        if not built:
            self.train_dataset = _Indexed(self.train_dataset)


def accuracy_data(args: argparse.Namespace, seed: int) -> L.LightningDataModule:
    if args.acc_data == "digits":
        return IndexedDigits(batch_size=args.batch_size, seed=seed)
    return IndexedVariants(image_size=32, batch_size=args.acc_batch_size, seed=seed)


class StepTimer(L.Callback):
    """Wall-clock time of each training step, from the first callback hook to the last.

    It must come first in the callbacks so that its ``on_train_batch_start`` runs before the
    teacher's forward (Lightning calls the callbacks' hooks in list order).
    """

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.current_epoch, time.perf_counter() - self._start))


def _trainer(args: argparse.Namespace, epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        limit_train_batches=args.limit_batches,
        limit_val_batches=0,
        limit_test_batches=args.limit_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=args.runs,
    )


def _student(
    args: argparse.Namespace, dm: Any, backbone: str | None = None
) -> ClassificationModule:
    return ClassificationModule(
        backbone=backbone or args.student,
        num_classes=dm.num_classes,
        in_chans=dm.in_chans,
        temperature_scaling=False,
    )


# -- step time ----------------------------------------------------------------------------------

TIMING_SETTINGS = ("student alone", "with teacher", "with teacher, cached")


def time_setting(setting: str, args: argparse.Namespace) -> dict[str, Any]:
    args.progress.set_description(f"distillation benchmark: step time, {setting}")
    L.seed_everything(args.timing_seed, verbose=False)
    dm = IndexedDigits(batch_size=args.batch_size, seed=args.timing_seed)
    model = _student(args, dm)
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer]
    distill = None
    if setting != "student alone":
        distill = Distillation(
            teacher=args.teacher,
            num_classes=dm.num_classes,
            timm_kwargs={"in_chans": dm.in_chans},
            loss="kd",
            loss_kwargs={"temperature": 4.0},
            cache=setting.endswith("cached"),
            index_key=2,
        )
        callbacks.append(distill)
    _trainer(args, args.timing_epochs, callbacks).fit(model, datamodule=dm)
    timed = [s for epoch, s in timer.steps if epoch >= 1]
    if not timed:
        raise SystemExit("--timing-epochs must be at least 2: epoch 0 is warm-up.")
    return {
        "median_ms": 1000 * statistics.median(timed),
        "steps": len(timed),
        "teacher_forwards": distill.teacher_forwards if distill is not None else 0,
        "epoch0_steps": sum(1 for epoch, _ in timer.steps if epoch == 0),
    }


def timing(args: argparse.Namespace) -> list[str]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in TIMING_SETTINGS}
    for r in range(args.rounds):
        for setting in TIMING_SETTINGS:
            result = time_setting(setting, args)
            runs[setting].append(result)
            args.progress.advance()
            args.progress.write(f"round {r} {setting}: {result}")
    alone = [r["median_ms"] for r in runs["student alone"]]
    lines = [
        "## Step time",
        "",
        f"Student {args.student}, teacher {args.teacher} (KD, T = 4), batch {args.batch_size}, "
        f"{args.timing_epochs} epochs per run (epoch 0 excluded as warm-up; the cached run fills "
        f"its cache there), {args.rounds} round(s) of the three runs in alternation, "
        f"{torch.get_num_threads()} intra-op thread(s). Median step time over the timed steps of "
        "a run; mean ± std over rounds. The ratio is to the student alone of the same round.",
        "",
        "| setting | step time (ms) | ratio to student alone | teacher forwards (epoch-0 steps) |",
        "| --- | --- | --- | --- |",
    ]
    for setting, results in runs.items():
        ms = [r["median_ms"] for r in results]
        ratio = [m / a for m, a in zip(ms, alone, strict=True)]
        forwards = f"{results[0]['teacher_forwards']} ({results[0]['epoch0_steps']})"
        lines.append(
            f"| {setting} | {fmt(ms, scale=1.0, digits=1)} | {fmt(ratio, scale=1.0)} | "
            f"{forwards if setting != 'student alone' else ''} |"
        )
    return [*lines, ""]


# -- accuracy -----------------------------------------------------------------------------------


def distill_losses(epochs: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "KD": ("kd", {"temperature": 4.0}),
        "DKD": (
            "dkd",
            {
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "warmup": max(1, round(epochs * 20 / 240)),
            },
        ),
        "DIST": ("dist", {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}),
    }


def fit_and_test(
    model: ClassificationModule,
    dm: ClassificationDataModule,
    args: argparse.Namespace,
    callbacks: list[L.Callback],
    epochs: int,
) -> dict[str, float]:
    trainer = _trainer(args, epochs, callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    trainer.test(model, datamodule=dm, verbose=False)
    args.progress.advance()
    return {"accuracy": model.reports["test"]["accuracy"], "seconds": seconds}


def accuracy(args: argparse.Namespace) -> list[str]:
    losses = distill_losses(args.epochs)
    names = ["teacher", "student alone", *losses]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for seed in args.seeds:
        dm = accuracy_data(args, seed)
        L.seed_everything(seed, verbose=False)
        teacher = ClassificationModule(
            backbone=args.acc_teacher,
            num_classes=dm.num_classes,
            in_chans=dm.in_chans,
            temperature_scaling=False,
        )
        args.progress.set_description(f"distillation benchmark: seed {seed}, teacher")
        results["teacher"].append(fit_and_test(teacher, dm, args, [], args.teacher_epochs))
        args.progress.write(f"seed {seed} teacher: {results['teacher'][-1]}")
        for name in names[1:]:
            args.progress.set_description(f"distillation benchmark: seed {seed}, {name}")
            L.seed_everything(seed, verbose=False)
            student = _student(args, dm, args.acc_student)
            callbacks: list[L.Callback] = []
            if name in losses:
                loss, kwargs = losses[name]
                # the trained network itself (the callback freezes it: eval, no grad); the inputs
                # are fixed, so the cached logits are the teacher's and it runs in epoch 0 only
                callbacks.append(
                    Distillation(
                        teacher=teacher.net, loss=loss, loss_kwargs=kwargs, cache=True, index_key=2
                    )
                )
            results[name].append(fit_and_test(student, dm, args, callbacks, args.epochs))
            args.progress.write(f"seed {seed} {name}: {results[name][-1]}")

    alone = [r["accuracy"] for r in results["student alone"]]
    dkd = losses["DKD"][1]
    if args.acc_data == "digits":
        data_text = "the embedded digits (1,259 training, 359 test images, 32x32)"
        batch = args.batch_size
    else:
        data_text = (
            "digit variants (DigitVariantsDataModule, 8 seeded affine variants per digit: 10,060 "
            "training, 2,880 test images, 32x32)"
        )
        batch = args.acc_batch_size
    lines = [
        "## Test accuracy",
        "",
        f"Data: {data_text}. Teacher {args.acc_teacher} ({args.teacher_epochs} epochs), student "
        f"{args.acc_student} ({args.epochs} epochs), both from scratch, batch {batch}; seeds "
        f"{', '.join(map(str, args.seeds))} (the seed sets the split, the initialisation and the "
        "shuffling). Distillation weight 1 next to cross-entropy, teacher logits cached after "
        "epoch 0 (the inputs are fixed); KD T 4; DKD alpha 1, beta 8, T 4, warm-up "
        f"{dkd['warmup']} epoch(s); DIST beta = gamma = tau = 1. Test accuracy of the final "
        "weights, mean ± std over seeds, percent; the gap to the student alone is paired by seed.",
        "",
        "| model | test accuracy | minus student alone | seeds above / equal / below | "
        "fit time (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in results.items():
        acc = [r["accuracy"] for r in runs]
        gap, count = "", ""
        if name in losses:
            diffs = [a - b for a, b in zip(acc, alone, strict=True)]
            gap = fmt(diffs)
            count = (
                f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / "
                f"{sum(d < 0 for d in diffs)}"
            )
        label = (
            f"{args.acc_teacher} (teacher)" if name == "teacher" else f"{args.acc_student}, {name}"
        )
        lines.append(
            f"| {label} | {fmt(acc)} | {gap} | {count} | "
            f"{fmt([r['seconds'] for r in runs], scale=1.0, digits=0)} |"
        )
    return [*lines, ""]


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    mean = scale * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--acc-teacher", default="resnet10t", help="teacher of the accuracy runs")
    parser.add_argument("--acc-student", default="test_vit", help="student of the accuracy runs")
    parser.add_argument("--acc-data", choices=("variants", "digits"), default="variants")
    parser.add_argument("--acc-batch-size", type=int, default=128, help="batch of the variants")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing-epochs", type=int, default=3)
    parser.add_argument("--timing-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true", help="also train for test accuracy")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=16, help="epochs of the students")
    parser.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="training and test batches per epoch (smoke runs only; None = all)",
    )
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/distillation.md")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny sizes, seconds ({SMOKE}; flags given still win); the results go to a "
        "temporary folder unless --out is given",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="distillation_smoke_")) if args.smoke else None
    if args.out is None:
        args.out = tmp / "distillation.md" if tmp else ROOT / "benchmarks/results/distillation.md"
    args.runs = tmp or ROOT / "runs" / "benchmarks" / "distillation"
    # One intra-op thread by default: on a small shared CPU machine more threads measure the
    # scheduler rather than the models.
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    lines = [
        "# Distillation: step time and accuracy",
        "",
        f"- torch {torch.__version__}, Python {platform.python_version()}, CPU "
        f"({os.cpu_count()} cores), {torch.get_num_threads()} intra-op thread(s)",
    ]
    if args.limit_batches is not None:
        lines.append(f"- smoke run: {args.limit_batches} batch(es) per epoch, not a measurement")
    lines.append("")
    # runs: the three timing settings per round; per seed the teacher, the student alone and
    # one student per distillation loss
    planned = 3 * args.rounds
    if args.accuracy:
        planned += len(args.seeds) * (2 + len(distill_losses(args.epochs)))
    with ProgressBar(planned, "distillation benchmark", unit="runs") as args.progress:
        lines += timing(args)
        if args.accuracy:
            lines += accuracy(args)
    lines.append(f"Benchmark wall time: {time.perf_counter() - start:.0f} s.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
