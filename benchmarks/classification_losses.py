"""Side-by-side quality of losses in the classification recipe, over seeds, in one run.

Each row trains the recipe (``recipes/configs/classification.yaml``, the 12-epoch schedule of
``classification_long.yaml``, plus one overlay) for every seed (the seed sets the split, the
initialisation and the shuffling), reads the test report and prints mean and standard deviation
of accuracy, macro-F1 and ECE as a Markdown table.

    python benchmarks/classification_losses.py                     # all overlays, 3 seeds
    python benchmarks/classification_losses.py --overlays longtail longtail_ldam_drw --seeds 0
    python benchmarks/classification_losses.py --smoke              # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning_losses._progress import ProgressBar

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
DEFAULT_OVERLAYS = [
    "none",
    "focal",
    "mdca",
    "longtail",
    "longtail_ldam_drw",
    "longtail_balanced_softmax",
    "longtail_class_balanced_focal",
]
METRICS = ("accuracy", "macro_f1", "ece", "ece_temperature_scaled")
#: ``--smoke``: one overlay (the focal loss), one seed, one epoch of 2 batches, 2 validation and
#: 2 test batches
SMOKE = dict(overlays=["focal"], seeds=[0], max_epochs=1, limit_batches=2)


def run_one(
    overlay: str,
    seed: int,
    out_root: Path,
    max_epochs: int | None = None,
    limit_batches: int | None = None,
) -> dict[str, float]:
    run_dir = out_root / overlay / f"seed{seed}"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "classification.py"),
        "fit",
        "--config",
        str(CONFIGS / "classification.yaml"),
        "--config",
        str(CONFIGS / "classification_long.yaml"),
    ]
    if overlay != "none":
        cmd += ["--config", str(CONFIGS / f"{overlay}.yaml")]
    cmd += [
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    if max_epochs is not None:
        cmd += ["--trainer.max_epochs", str(max_epochs)]
    if limit_batches is not None:
        for split in ("train", "val", "test"):
            cmd += [f"--trainer.limit_{split}_batches", str(limit_batches)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report = max(
        run_dir.glob("lightning_logs/version_*/test_metrics.json"), key=lambda p: p.stat().st_mtime
    )
    metrics = json.loads(report.read_text())["metrics"]
    return {**{k: metrics[k] for k in METRICS}, "seconds": seconds}


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values) * scale:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overlays", nargs="+", default=DEFAULT_OVERLAYS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/classification_losses.md"
    )
    parser.add_argument("--runs", type=Path, help="the runs' folder; default: runs/benchmarks")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="default: classification_long.yaml's 12"
    )
    parser.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="training, validation and test batches per epoch (smoke runs only; None = all)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny sizes, seconds ({SMOKE}; flags given still win); the table and the runs go "
        "to a temporary folder unless --out / --runs are given",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="classification_losses_smoke_")) if args.smoke else None
    if args.out is None:
        args.out = (
            tmp / "classification_losses.md"
            if tmp
            else ROOT / "benchmarks/results/classification_losses.md"
        )
    if args.runs is None:
        args.runs = tmp / "runs" if tmp else ROOT / "runs" / "benchmarks"

    rows = []
    planned = len(args.overlays) * len(args.seeds)
    with ProgressBar(planned, "classification losses", unit="runs") as progress:
        for overlay in args.overlays:
            results = []
            for seed in args.seeds:
                progress.set_description(f"classification losses: {overlay}, seed {seed}")
                results.append(
                    run_one(overlay, seed, args.runs, args.max_epochs, args.limit_batches)
                )
                progress.advance()
            row = {k: [r[k] for r in results] for k in (*METRICS, "seconds")}
            rows.append((overlay, row))
            summary = {k: fmt(v) for k, v in row.items() if k != "seconds"}
            progress.write(f"{overlay} {summary}")

    lines = [
        f"Classification recipe on the embedded digits, test split, {len(args.seeds)} seeds "
        f"({', '.join(map(str, args.seeds))}); mean ± std in percent.",
        "",
    ]
    if args.max_epochs is not None or args.limit_batches is not None:
        lines[0:0] = [
            f"Smoke run: {args.max_epochs or 12} epoch(s) of "
            f"{args.limit_batches or 'all'} batch(es), not a measurement.",
            "",
        ]
    lines += [
        "| overlay | loss | train split | accuracy | macro-F1 | ECE | ECE after T-scaling | "
        "seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for overlay, row in rows:
        text = (CONFIGS / f"{overlay}.yaml").read_text() if overlay != "none" else ""
        loss = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in text.splitlines()
                if ln.strip().startswith("loss:")
            ),
            "cross_entropy",
        )
        split = "long-tailed (IF 20)" if "imbalance_factor" in text else "balanced"
        lines.append(
            f"| {overlay} | {loss} | {split} | {fmt(row['accuracy'])} | {fmt(row['macro_f1'])} | "
            f"{fmt(row['ece'])} | {fmt(row['ece_temperature_scaled'])} | "
            f"{statistics.fmean(row['seconds']):.0f} |"
        )
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
