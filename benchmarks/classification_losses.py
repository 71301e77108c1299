"""Side-by-side quality of losses in the classification recipe, over seeds, in one run.

Each row trains the recipe (``recipes/configs/classification.yaml``, the 12-epoch schedule of
``classification_long.yaml``, plus one overlay) for every seed (the seed sets the split, the
initialisation and the shuffling), reads the test report and prints mean and standard deviation
of accuracy, macro-F1 and ECE as a Markdown table.

    python benchmarks/classification_losses.py                     # all overlays, 3 seeds
    python benchmarks/classification_losses.py --overlays longtail longtail_ldam_drw --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def run_one(overlay: str, seed: int, out_root: Path) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overlays", nargs="+", default=DEFAULT_OVERLAYS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/classification_losses.md"
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks")
    args = parser.parse_args()

    rows = []
    for overlay in args.overlays:
        results = [run_one(overlay, s, args.runs) for s in args.seeds]
        row = {k: [r[k] for r in results] for k in (*METRICS, "seconds")}
        rows.append((overlay, row))
        print(overlay, {k: fmt(v) for k, v in row.items() if k != "seconds"}, flush=True)

    lines = [
        f"Classification recipe on the embedded digits, test split, {len(args.seeds)} seeds "
        f"({', '.join(map(str, args.seeds))}); mean ± std in percent.",
        "",
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
