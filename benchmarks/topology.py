"""Topology benchmark on the embedded thin structures, in the spirit of the TopoMortar protocol.

Four ways to train the segmentation recipe's model (``SegmentationModule``: smp U-Net on a
three-stage ``tu-resnet10t`` encoder, from scratch, AdamW with a cosine schedule, as in
``recipes/configs/segmentation.yaml``), each on the accurate and on the noisy training labels
of ``SegmentationDataModule``, over seeds:

* ``ce_dice``: cross-entropy + soft Dice (the recipe's default);
* ``ce_dice_aug``: the same with training augmentation (``augment=True``: the eight flips and
  quarter turns of the square, contrast and brightness jitter, pixel noise), the honest
  baseline of TopoMortar: a topology loss should beat this, not only the bare baseline;
* ``cldice``: cross-entropy + ``cldice`` (soft Dice and soft clDice mixed with ``alpha``);
* ``skeleton_recall``: cross-entropy + soft Dice + ``weight`` x Skeleton Recall, with the
  ground-truth skeleton tube computed per training sample by ``SkeletonTransform``.

The topology losses train without augmentation, as the bare baseline. Validation and test
always use the accurate labels. A seed draws the data (``SegmentationDataModule(seed=s)``:
images, label noise, shuffle order) and the initialisation (``seed_everything(s)``).

Tuning: before the reported runs, ``alpha`` of clDice and the weight of Skeleton Recall are
chosen on a small grid (:data:`GRID`) with the accurate labels on a seed that is not reported
(:data:`TUNING_SEED`, its own data draw); the setting with the best in-distribution clDice on
that seed's test split is kept (ties: the lower Betti matching error). Every setting tried is
listed in the results.

Reported per test split group, mean +- standard deviation over the seeds: Dice, clDice
(hard skeletons) and the Betti matching error (the sum of the unmatched persistence bars
of dimensions 0 and 1, as the recipe's ``BettiMatchingError`` reports them per dimension), and
the Betti number errors |b0| + |b1|. "ID" is the in-distribution test split; "OOD" is the
mean over the out-of-distribution splits (other background textures, lower contrast, blur,
stronger noise), each run's OOD value first averaged over those splits.

    .venv/bin/python benchmarks/topology.py                   # results file and docs table
    .venv/bin/python benchmarks/topology.py --jobs 1 --threads 2
    .venv/bin/python benchmarks/topology.py --smoke   # seconds; the table goes to a temp folder

Runs are appended as they finish to a JSON-lines file next to ``--out``
(``topology_runs.jsonl``); a rerun with the same sizes skips the runs already there, so an
interrupted benchmark resumes. ``--update-docs`` (on by default for the full run) writes the
tables into ``docs/benchmark_topology.md`` between its generated-section markers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_losses._progress import ProgressBar

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmark_topology.md"
RECIPE_CONFIG = ROOT / "recipes" / "configs" / "segmentation.yaml"
BEGIN, END = "<!-- topology.py: begin generated -->", "<!-- topology.py: end generated -->"

LABELS = ("accurate", "noisy")
SEEDS = (0, 1, 2, 3, 4)
TUNING_SEED = 100

#: The tuning grid: method -> the values of its knob tried on TUNING_SEED.
GRID: dict[str, tuple[float, ...]] = {
    "cldice": (0.3, 0.5, 0.7),  # alpha of the cldice loss: (1 - a)(1 - Dice) + a (1 - clDice)
    "skeleton_recall": (0.5, 1.0, 2.0),  # weight of the Skeleton Recall term
}
#: Used by ``--no-tune`` (and by the smoke run): the defaults of the paper and reference code.
DEFAULT_KNOB = {"cldice": 0.5, "skeleton_recall": 1.0}

METHOD_LABELS = {
    "ce_dice": "CE + Dice",
    "ce_dice_aug": "CE + Dice + augmentation",
    "cldice": "CE + clDice",
    "skeleton_recall": "CE + Dice + Skeleton Recall",
}
METHODS = tuple(METHOD_LABELS)


@dataclass(frozen=True)
class Sizes:
    """What one run trains and tests on; the same for every method, label variant and seed."""

    image_size: int = 48
    train_size: int = 96
    val_size: int = 16
    test_size: int = 16
    batch_size: int = 8
    epochs: int = 4
    limit_batches: int | None = None  # smoke only: batches per epoch and per evaluation


FULL = Sizes()
SMOKE = Sizes(image_size=32, train_size=8, val_size=4, test_size=4, batch_size=4, epochs=1,
              limit_batches=2)  # fmt: skip


@dataclass(frozen=True)
class Run:
    phase: str  # "tune" or "main"
    method: str
    labels: str
    seed: int
    knob: float | None  # alpha of clDice or the weight of Skeleton Recall; None for the others
    sizes: Sizes = field(default_factory=Sizes)

    def key(self) -> str:
        return json.dumps([self.phase, self.method, self.labels, self.seed, self.knob,
                           asdict(self.sizes)])  # fmt: skip


def recipe_model_options() -> dict[str, Any]:
    """The model section of the recipe's default config, minus the loss (set per method)."""
    import yaml

    model = dict(yaml.safe_load(RECIPE_CONFIG.read_text())["model"])
    for key in ("loss", "loss_weights", "loss_kwargs", "panel_images"):
        model.pop(key, None)
    return model


def loss_options(method: str, knob: float | None) -> dict[str, Any]:
    """``loss``, ``loss_weights`` and ``loss_kwargs`` of ``SegmentationModule`` for a method."""
    if method in ("ce_dice", "ce_dice_aug"):
        return {"loss": ["cross_entropy", "dice"], "loss_weights": [1.0, 1.0]}
    if method == "cldice":
        return {
            "loss": ["cross_entropy", "cldice"],
            "loss_weights": [1.0, 1.0],
            "loss_kwargs": {"cldice": {"alpha": float(knob), "num_iter": 3}},
        }
    if method == "skeleton_recall":
        return {
            "loss": ["cross_entropy", "dice", "skeleton_recall"],
            "loss_weights": [1.0, 1.0, float(knob)],
        }
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def train_and_test(run: Run, threads: int) -> dict[str, Any]:
    """Train one model and return its per-split test report, with its times."""
    import lightning as L
    import torch

    from lightning_losses.data import SegmentationDataModule
    from lightning_losses.tasks.segmentation import SegmentationModule
    from lightning_losses.topology.transforms import SkeletonTransform

    torch.set_num_threads(threads)
    sizes = run.sizes
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    L.seed_everything(run.seed, verbose=False)
    skeleton = [SkeletonTransform(mode="multiclass", tube_iterations=2)]
    data = SegmentationDataModule(
        image_size=sizes.image_size,
        labels=run.labels,
        batch_size=sizes.batch_size,
        train_size=sizes.train_size,
        val_size=sizes.val_size,
        test_size=sizes.test_size,
        augment=run.method == "ce_dice_aug",
        train_transforms=skeleton if run.method == "skeleton_recall" else None,
        seed=run.seed,
    )
    model = SegmentationModule(
        **recipe_model_options(),
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        panel_images=0,
        **loss_options(run.method, run.knob),
    )
    limits = {}
    if sizes.limit_batches is not None:
        limits = {
            f"limit_{stage}_batches": sizes.limit_batches for stage in ("train", "val", "test")
        }
    with tempfile.TemporaryDirectory() as out:
        trainer = L.Trainer(
            max_epochs=sizes.epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            **limits,
        )
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data, verbose=False)
    splits = {name: dict(model.reports[name]) for name in data.test_split_names}
    return {
        "run": {**asdict(run), "sizes": asdict(sizes)},
        "splits": splits,
        "val_dice": model.reports.get("val", {}).get("dice", math.nan),
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_seconds() - cpu_start,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------ summaries


def group_values(splits: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A run's metrics for "ID" (the ``test`` split) and "OOD" (mean over the others)."""

    def derived(split: Mapping[str, float]) -> dict[str, float]:
        return {
            "dice": split["dice"],
            "cldice": split["cldice"],
            "betti_matching": split["betti_matching_0"] + split["betti_matching_1"],
            "betti_matching_0": split["betti_matching_0"],
            "betti_matching_1": split["betti_matching_1"],
            "betti": split["betti_0"] + split["betti_1"],
        }

    ood = [derived(v) for k, v in splits.items() if k != "test"]
    return {
        "ID": derived(splits["test"]),
        "OOD": {key: statistics.fmean(d[key] for d in ood) for key in ood[0]},
    }


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def main_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Methods x label variants as rows; ID and OOD Dice, clDice, Betti matching and Betti."""
    columns = (("dice", 3), ("cldice", 3), ("betti_matching", 2), ("betti", 2))
    header = ["labels", "method", "seeds"]
    for group in ("ID", "OOD"):
        header += [f"{group} Dice ↑", f"{group} clDice ↑", f"{group} BM err ↓", f"{group} β err ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for labels in LABELS:
        for method in METHODS:
            runs = [
                r
                for r in results
                if r["run"]["phase"] == "main"
                and r["run"]["method"] == method
                and r["run"]["labels"] == labels
            ]
            if not runs:
                continue
            groups = [group_values(r["splits"]) for r in runs]
            cells = [labels, _method_cell(method, runs[0]["run"]["knob"]), str(len(runs))]
            for group in ("ID", "OOD"):
                for key, decimals in columns:
                    values = [g[group][key] for g in groups]
                    cells.append(_mean_std(values, decimals))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float], decimals: int) -> str:
    if len(values) == 1:
        return _fmt(values[0], decimals)
    return (
        f"{_fmt(statistics.fmean(values), decimals)} ± {_fmt(statistics.stdev(values), decimals)}"
    )


def _method_cell(method: str, knob: float | None) -> str:
    label = METHOD_LABELS[method]
    if method == "cldice":
        return f"{label} (α = {knob:g})"
    if method == "skeleton_recall":
        return f"{label} (weight {knob:g})"
    return label


def split_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Dice / clDice / Betti matching error per test split, mean over seeds (main runs)."""
    main = [r for r in results if r["run"]["phase"] == "main"]
    if not main:
        return ""
    names = list(main[0]["splits"])
    header = ["labels", "method", *names]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(names)]
    for labels in LABELS:
        for method in METHODS:
            runs = [
                r for r in main if r["run"]["method"] == method and r["run"]["labels"] == labels
            ]
            if not runs:
                continue
            cells = [labels, METHOD_LABELS[method]]
            for name in names:
                dice = statistics.fmean(r["splits"][name]["dice"] for r in runs)
                cl = statistics.fmean(r["splits"][name]["cldice"] for r in runs)
                bm = statistics.fmean(
                    r["splits"][name]["betti_matching_0"] + r["splits"][name]["betti_matching_1"]
                    for r in runs
                )
                cells.append(f"{dice:.3f} / {cl:.3f} / {bm:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tuning_table(results: Sequence[Mapping[str, Any]], chosen: Mapping[str, float]) -> str:
    rows = [r for r in results if r["run"]["phase"] == "tune"]
    lines = [
        "| method | setting | ID Dice | ID clDice | ID BM err | OOD Dice | OOD clDice "
        "| OOD BM err | kept |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["run"]["method"], r["run"]["knob"])):
        method, knob = r["run"]["method"], r["run"]["knob"]
        g = group_values(r["splits"])
        setting = f"α = {knob:g}" if method == "cldice" else f"weight {knob:g}"
        kept = "yes" if chosen.get(method) == knob else ""
        lines.append(
            f"| {METHOD_LABELS[method]} | {setting} | {g['ID']['dice']:.3f} | "
            f"{g['ID']['cldice']:.3f} | {g['ID']['betti_matching']:.2f} | {g['OOD']['dice']:.3f} | "
            f"{g['OOD']['cldice']:.3f} | {g['OOD']['betti_matching']:.2f} | {kept} |"
        )
    return "\n".join(lines) + "\n"


def choose(results: Iterable[Mapping[str, Any]], method: str) -> float:
    """The grid value with the best ID clDice on the tuning seed (ties: lower BM error)."""
    rows = [r for r in results if r["run"]["phase"] == "tune" and r["run"]["method"] == method]
    if not rows:
        raise ValueError(f"no tuning run of {method!r}")

    def score(r: Mapping[str, Any]) -> tuple[float, float]:
        g = group_values(r["splits"])["ID"]
        return (g["cldice"], -g["betti_matching"])

    return float(max(rows, key=score)["run"]["knob"])


def report(
    results: Sequence[Mapping[str, Any]],
    sizes: Sizes,
    chosen: Mapping[str, float],
    tuned: bool,
    seeds: Sequence[int],
    environment: Mapping[str, str],
) -> str:
    """The markdown of the results file (and of the docs page's generated section)."""
    main = [r for r in results if r["run"]["phase"] == "main"]
    ood = [n for n in (main[0]["splits"] if main else {}) if n != "test"]
    lines = [
        f"- sizes per run (every method, label variant and seed): {sizes.image_size}x"
        f"{sizes.image_size} images, {sizes.train_size} training, {sizes.val_size} validation "
        f"and {sizes.test_size} test images per split (ID + {len(ood)} OOD: "
        f"{', '.join(ood)}), batch {sizes.batch_size}, {sizes.epochs} epochs"
        + (f", {sizes.limit_batches} batches per stage (smoke)" if sizes.limit_batches else ""),
        f"- seeds {', '.join(map(str, seeds))} (data draw and initialisation); "
        + (
            f"clDice α and Skeleton Recall weight tuned on seed {TUNING_SEED} "
            "(accurate labels, best ID clDice), kept: "
            if tuned
            else "no tuning (defaults): "
        )
        + f"α = {chosen['cldice']:g}, weight {chosen['skeleton_recall']:g}",
        f"- {len(results)} runs ({environment['torch']}, {environment['threads']}; "
        f"{environment['cpu']}); each run's wall and CPU time are in the JSON lines",
        "",
        "Mean ± standard deviation over seeds. BM err: Betti matching error, dimensions 0 and 1 "
        "summed; β err: Betti number errors |Δβ0| + |Δβ1|; per image, lower is better. OOD: "
        "mean over the OOD splits.",
        "",
        main_table(results),
    ]
    if main:
        lines += [
            "Per test split, mean over seeds: Dice / clDice / Betti matching error.",
            "",
            split_table(results),
        ]
    if tuned:
        lines += [
            f"Tuning runs (seed {TUNING_SEED}, accurate labels, one run per setting; every "
            "setting tried):",
            "",
            tuning_table(results, chosen),
        ]
    return "\n".join(lines)


def with_generated_section(page: str, text: str) -> str:
    """``page`` with the text between the BEGIN and END markers replaced by ``text``."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"{DOCS} has no generated section ({BEGIN} ... {END})")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{text}{END}{tail}"


def generated_section(page: str) -> str:
    return page.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


# ---------------------------------------------------------------------------------- running


def load_runs(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            done[record["key"]] = record
    return done


def execute(
    runs: Sequence[Run], jobs: int, threads: int, log: Path | None, bar: ProgressBar
) -> list[dict]:
    """Run what ``log`` does not hold yet (``jobs`` processes), appending each result to it."""
    done = load_runs(log) if log is not None else {}
    todo = [r for r in runs if r.key() not in done]
    bar.advance(len(runs) - len(todo))  # already in the log

    def record(run: Run, result: dict[str, Any]) -> None:
        result = {"key": run.key(), **result}
        done[run.key()] = result
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps(result) + "\n")
        g = group_values(result["splits"])
        bar.write(
            f"{run.phase} {run.method} {run.labels} seed {run.seed} knob {run.knob}: "
            f"ID dice {g['ID']['dice']:.3f} cldice {g['ID']['cldice']:.3f} "
            f"BM {g['ID']['betti_matching']:.2f}; OOD dice {g['OOD']['dice']:.3f}; "
            f"{result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU"
        )
        bar.advance()

    if jobs <= 1:
        for run in todo:
            record(run, train_and_test(run, threads))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {pool.submit(train_and_test, run, threads): run for run in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    return [done[r.key()] for r in runs]


def environment(threads: int, jobs: int) -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": f"torch {torch.__version__}",
        "threads": f"{jobs} process(es) x {threads} torch thread(s)",
        "cpu": f"{cpu}, {os.cpu_count()} cores",
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one seed: seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--no-tune", action="store_true", help="use the default α and weight")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--out",
        type=Path,
        help="default: benchmarks/results/topology.md; with --smoke a file in a new temporary "
        "folder (the committed results are never overwritten by a smoke run)",
    )
    parser.add_argument("--update-docs", action=argparse.BooleanOptionalAction, default=None,
                        help=f"write the tables into {DOCS.relative_to(ROOT)} (default: "
                        "on unless --smoke)")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    seeds = args.seeds[:1] if args.smoke else args.seeds
    tune = not (args.no_tune or args.smoke)
    update_docs = (not args.smoke) if args.update_docs is None else args.update_docs
    jobs = 1 if args.smoke else args.jobs
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="topology_smoke_")) / "topology.md"
            if args.smoke
            else ROOT / "benchmarks/results/topology.md"
        )
    log = None if args.smoke else args.out.with_name(args.out.stem + "_runs.jsonl")
    start = time.perf_counter()

    chosen = dict(DEFAULT_KNOB)
    results: list[dict[str, Any]] = []
    grid = [
        Run("tune", m, "accurate", TUNING_SEED, knob, sizes)
        for m, values in GRID.items()
        if tune and m in args.methods
        for knob in values
    ]
    planned = len(grid) + len(LABELS) * len(seeds) * len(args.methods)
    with ProgressBar(planned, "Topology benchmark", unit="runs") as bar:
        if grid:
            results += execute(grid, jobs, args.threads, log, bar)
            chosen.update({m: choose(results, m) for m in GRID if m in args.methods})
        runs = [
            Run("main", m, labels, seed, chosen.get(m), sizes)
            for labels in LABELS
            for seed in seeds
            for m in args.methods
        ]
        results += execute(runs, jobs, args.threads, log, bar)
    text = report(results, sizes, chosen, tune, seeds, environment(args.threads, jobs))
    if args.smoke:
        text = "Smoke run: tiny sizes and one seed, not a measurement.\n\n" + text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if update_docs:
        DOCS.write_text(with_generated_section(DOCS.read_text(), text))
        print(f"updated {DOCS}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
