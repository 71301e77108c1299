"""Side-by-side quality of re-ID losses in the re-ID recipe, over seeds, in one run.

Each row trains the recipe (``recipes/configs/reid.yaml``, the embedded synthetic identities)
with one loss setting for every seed (the seed sets the identities, the initialisation and the
P x K batches), reads the test report and writes mean and standard deviation of R1, mAP and
mINP, without and with k-reciprocal re-ranking, as a Markdown table:

* ``ce``: cross-entropy with label smoothing 0.1 alone (BNNeck, no metric term);
* ``ce_triplet``: + batch-hard triplet, margin 0.3 (the recipe's default);
* ``ce_triplet_center``: + center loss (``reid_center.yaml``);
* ``ce_circle``: circle loss in place of the triplet term (``reid_circle.yaml``);
* ``arcface_triplet``: an ArcFace head in place of the classifier (``reid_arcface.yaml``).

    python benchmarks/reid_losses.py                        # every row, seeds 0 1 2
    python benchmarks/reid_losses.py --rows ce ce_triplet --seeds 0 1 2 3
    python benchmarks/reid_losses.py --smoke                # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
sys.path.insert(0, str(ROOT))

#: row -> (description, extra command-line arguments of the recipe)
ROWS: dict[str, tuple[str, list[str]]] = {
    "ce": (
        "CE-LS",
        [
            "--model.loss",
            "[cross_entropy]",
            "--model.loss_weights",
            "[1.0]",
            "--model.loss_kwargs",
            '{"cross_entropy": {"label_smoothing": 0.1}}',
        ],
    ),
    "ce_triplet": ("CE-LS + triplet", []),
    "ce_triplet_center": (
        "CE-LS + triplet + center",
        ["--config", str(CONFIGS / "reid_center.yaml")],
    ),
    "ce_circle": ("CE-LS + circle", ["--config", str(CONFIGS / "reid_circle.yaml")]),
    "arcface_triplet": ("ArcFace + triplet", ["--config", str(CONFIGS / "reid_arcface.yaml")]),
}
METRICS = ("rank1", "map", "minp")
#: ``--smoke``: tiny identities, a narrow network, one epoch of two batches.
SMOKE = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--model.backbone_kwargs",
    '{"channels": [8, 16, 32, 64], "stem_width": 8}',
    "--model.panel_queries",
    "0",
    "--data.p",
    "4",
    "--data.k",
    "2",
    "--data.identities",
    '{"num_identities": 16, "num_distractors": 4, "image_size": [32, 16]}',
]


def run_one(row: str, seed: int, out_root: Path, extra: list[str]) -> dict[str, float]:
    """Train and test one row with one seed (in this process); its plain and re-ranked
    metrics and the wall-clock seconds."""
    from lightning_losses.tasks.reid import cli_main

    run_dir = out_root / row / f"seed{seed}"
    args = [
        "fit",
        "--config",
        str(CONFIGS / "reid.yaml"),
        *ROWS[row][1],
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
        *extra,
    ]
    start = time.perf_counter()
    cli = cli_main(args)
    seconds = time.perf_counter() - start
    report = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())["metrics"]
    values = {k: report["plain"][k] for k in METRICS}
    values |= {f"{k}_reranked": report["reranked"][k] for k in METRICS}
    return {**values, "seconds": seconds}


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def table(results: dict[str, list[dict[str, float]]], seeds: list[int], smoke: bool) -> str:
    lines = [
        f"Re-ID recipe (`recipes/configs/reid.yaml`) on the embedded synthetic identities, "
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}); mean ± std in percent "
        "(Market-1501 protocol, cosine distance on the BNNeck features).",
        "",
        "| loss | R1 | mAP | mINP | R1 re-ranked | mAP re-ranked | mINP re-ranked | "
        "seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, runs in results.items():
        cells = [fmt([r[k] for r in runs]) for k in METRICS]
        cells += [fmt([r[f"{k}_reranked"] for r in runs]) for k in METRICS]
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    if smoke:
        lines += [
            "",
            "Smoke run (`--smoke`, tiny sizes): a check that the script runs, not a result.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="the Markdown table's path")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks" / "reid")
    parser.add_argument("--smoke", action="store_true", help="tiny runs: a check that it runs")
    args = parser.parse_args(argv)
    extra = SMOKE if args.smoke else []
    if args.smoke:
        args.runs = Path(tempfile.mkdtemp(prefix="reid_losses_smoke_"))
    out = args.out or (
        args.runs / "reid_losses.md"
        if args.smoke
        else ROOT / "benchmarks" / "results" / "reid_losses.md"
    )

    results: dict[str, list[dict[str, float]]] = {}
    for row in args.rows:
        results[row] = [run_one(row, seed, args.runs, extra) for seed in args.seeds]
        summary = {k: fmt([r[k] for r in results[row]]) for k in METRICS}
        print(row, summary, flush=True)
    text = table(results, args.seeds, args.smoke)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
