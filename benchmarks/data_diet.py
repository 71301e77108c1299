"""Static data pruning with EL2N on the embedded digits: all data, EL2N-kept, random-kept.

The training split of ``ClassificationDataModule`` (digits, 8x8, fixed split seed 0) is scored
with EL2N: ``--runs`` small CNNs, each trained ``--score-epochs`` epochs (a tenth of the final
run, the paper's 20 of 200), scored with ``score_dataset`` and averaged with
``average_scores``. Then a fresh CNN trains ``--epochs`` epochs on all of it, on the
``--keep`` fraction with the highest EL2N (``prune_by_score``), and on a random subset of the
same size, and reports test accuracy, mean ± std over seeds. Pruned runs train the same number
of epochs, so they take proportionally fewer steps.

    python benchmarks/data_diet.py                        # 3 seeds, keep 0.7
    python benchmarks/data_diet.py --keep 0.7 0.5 --seeds 0
    python benchmarks/data_diet.py --smoke                # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_losses._progress import ProgressBar
from lightning_losses.data import ClassificationDataModule
from lightning_losses.weighting.data_diet import (
    DEFAULT_NUM_RUNS,
    average_scores,
    num_pruned,
    prune_by_score,
    score_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
#: ``--smoke``: one seed, two scoring CNNs and the final runs of one epoch each, keep 0.5
#: (one intra-op thread: two stall for seconds per step on a busy machine)
SMOKE = dict(seeds=[0], epochs=1, score_epochs=1, runs=2, keep=[0.5], threads=1)


def batches(size: int, batch_size: int = 64) -> int:
    return -(-size // batch_size)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def train(x: Tensor, y: Tensor, seed: int, epochs: int, batch_size: int = 64) -> nn.Module:
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * batches(len(y), batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--score-epochs", type=int, default=None, help="default: epochs // 10")
    parser.add_argument("--runs", type=int, default=DEFAULT_NUM_RUNS)
    parser.add_argument("--keep", nargs="+", type=float, default=[0.7])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/data_diet.md")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny sizes, seconds ({SMOKE}; flags given still win); the table goes to a "
        "temporary folder unless --out is given",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="data_diet_smoke_")) / "data_diet.md"
            if args.smoke
            else ROOT / "benchmarks/results/data_diet.md"
        )
    torch.set_num_threads(args.threads)
    score_epochs = args.epochs // 10 if args.score_epochs is None else args.score_epochs

    dm = ClassificationDataModule(image_size=8, in_chans=1, seed=0)
    dm.setup()
    train_x, train_y = dm.train_dataset.images, dm.train_dataset.targets
    test_x, test_y = dm.test_dataset.images, dm.test_dataset.targets
    train_set = TensorDataset(train_x, train_y)
    n = len(train_y)

    rows: dict[str, list[float]] = {"all data": []}
    steps: dict[str, int] = {"all data": args.epochs * batches(n)}
    overlap = []
    for keep in args.keep:
        m = n - num_pruned(n, 1.0 - keep)
        for name in (f"EL2N, keep {keep:.0%}", f"random, keep {keep:.0%}"):
            rows[name], steps[name] = [], args.epochs * batches(m)
    scoring_steps = args.runs * score_epochs * batches(n)
    begin = time.perf_counter()

    # trainings: the scoring CNNs, all data, and EL2N-kept and random-kept per keep fraction
    trainings = len(args.seeds) * (args.runs + 1 + 2 * len(args.keep))
    progress = ProgressBar(trainings, "data diet", unit="trainings")
    for seed in args.seeds:
        runs = []
        for r in range(args.runs):
            progress.set_description(f"data diet, seed {seed}: EL2N scoring run {r}")
            model = train(train_x, train_y, 1000 * seed + r, score_epochs)
            runs.append(score_dataset(model, train_set))
            progress.advance()
        el2n = average_scores(runs)
        progress.set_description(f"data diet, seed {seed}: all data")
        full = train(train_x, train_y, seed, args.epochs)
        rows["all data"].append(accuracy(full, test_x, test_y))
        progress.advance()
        for keep in args.keep:
            kept = prune_by_score(el2n, 1.0 - keep)
            g = torch.Generator().manual_seed(seed)
            rand = torch.sort(torch.randperm(n, generator=g)[: len(kept)]).values
            overlap.append(len(set(kept.tolist()) & set(rand.tolist())) / len(kept))
            for name, idx in ((f"EL2N, keep {keep:.0%}", kept), (f"random, keep {keep:.0%}", rand)):
                progress.set_description(f"data diet, seed {seed}: {name}")
                model = train(train_x[idx], train_y[idx], seed, args.epochs)
                rows[name].append(accuracy(model, test_x, test_y))
                progress.advance()
        progress.write(
            f"seed {seed}: " + ", ".join(f"{k} {100 * v[-1]:.1f}" for k, v in rows.items())
        )
    progress.close()

    def fmt(values: list[float]) -> str:
        mean = 100 * statistics.fmean(values)
        if len(values) < 2:
            return f"{mean:.1f}"
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"

    minutes = (time.perf_counter() - begin) / 60
    command = [
        f"--seeds {' '.join(map(str, args.seeds))}",
        f"--epochs {args.epochs}",
        f"--runs {args.runs}",
        f"--keep {' '.join(map(str, args.keep))}",
    ]
    lines = [
        f"Embedded digits (8x8, {n} training / {len(test_y)} test images, split seed 0), small "
        f"CNN (2 conv layers), SGD momentum 0.9, lr 0.05 cosine, weight decay 5e-4, batch 64, "
        f"{args.epochs} epochs for every row. EL2N: mean over {args.runs} CNNs trained "
        f"{score_epochs} epochs each (the paper's 20 of 200, scaled), {scoring_steps} SGD steps "
        f"in all, plus one forward pass per sample and run. Test accuracy in percent, seeds "
        f"{', '.join(map(str, args.seeds))}, mean ± std.",
        "",
        "| training data | test accuracy | SGD steps of the final run |",
        "| --- | --- | --- |",
    ]
    for name, values in rows.items():
        lines.append(f"| {name} | {fmt(values)} | {steps[name]} |")
    lines.append("")
    for keep in args.keep:
        el2n_acc, rand_acc = rows[f"EL2N, keep {keep:.0%}"], rows[f"random, keep {keep:.0%}"]
        diff = [a - b for a, b in zip(el2n_acc, rand_acc, strict=True)]
        lines.append(
            f"EL2N minus random at keep {keep:.0%}, paired by seed: {fmt(diff)} points "
            f"(one test image is {100 / len(test_y):.2f} points)."
        )
    lines += [
        f"Share of the EL2N-kept samples that the random subset also holds: "
        f"{statistics.fmean(overlap):.2f} (chance: the keep fraction).",
        "",
        f"Command: `python benchmarks/data_diet.py {' '.join(command)}` "
        f"({minutes:.1f} min on {args.threads} shared CPU thread(s)).",
    ]
    if args.smoke:
        lines.append(
            "\nSmoke run (`--smoke`, tiny sizes): a check that the script runs, not a result."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
