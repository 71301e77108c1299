"""Diffusion objectives on the embedded digits: does the weighting or the robust loss pay off?

Two comparisons, each over seeds and at fixed step budgets, scored by the recipe's digits-FID
(:class:`~lightning_losses.metrics.sample_quality.SampleQuality`: FID in the features of a
small digit classifier trained once on the clean training images):

* **Min-SNR**: ε-prediction with the constant weight against v-prediction with the Min-SNR-5
  weight (Hang et al., ICCV 2023, claim: about 3.4x faster convergence), clean data.
* **Robust loss**: L2 against the scheduled pseudo-Huber loss (c0 = 0.1, SNR schedule;
  Khrapov et al. 2024) with 20 % of the training images replaced by uniform noise.

Every run trains the recipe's default model (:class:`~lightning_losses.tasks.diffusion.
DiffusionModule`, class-conditional U-Net of 0.65 M parameters at 8x8, AdamW 2e-3, warm-up
and cosine decay over the largest budget) and, when it passes each budget, samples with DDIM
(25 steps, no guidance) from its current weights (no weight averaging, so that every budget is
scored the same way) and records the FID and the fraction of samples classified with
confidence > 0.9.
Reported per setting and budget: mean ± std over seeds.

    python benchmarks/diffusion_objectives.py                 # 3 seeds, budgets 400/800/1600
    python benchmarks/diffusion_objectives.py --seeds 0 --budgets 200 400
    python benchmarks/diffusion_objectives.py --smoke         # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_losses.data.diffusion_datamodule import DiffusionImagesDataModule
from lightning_losses.tasks.diffusion import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]

#: setting name -> (comparison, module options, datamodule options)
SETTINGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "ε, constant": ("min_snr", {"prediction_type": "epsilon"}, {}),
    "v, Min-SNR-5": (
        "min_snr",
        {"prediction_type": "v_prediction", "loss_kwargs": {"weighting": "min_snr"}},
        {},
    ),
    "L2, 20% corrupted": ("robust", {}, {"corrupt_fraction": 0.2}),
    "pseudo-Huber, 20% corrupted": (
        "robust",
        {"loss": "diffusion_pseudo_huber", "loss_kwargs": {"c": 0.1, "c_schedule": "snr"}},
        {"corrupt_fraction": 0.2},
    ),
}
#: ``--smoke``: a tiny network, two tiny budgets, few samples; seconds per run
SMOKE = dict(
    seeds=[0],
    budgets=[2, 4],
    model={
        "block_out_channels": (8, 16),
        "num_samples": 16,
        "sampler_steps": 3,
        "classifier_epochs": 1,
    },
)


class BudgetScorer(L.Callback):
    """Samples and scores the model when training passes each step budget."""

    def __init__(self, budgets: list[int], num_samples: int) -> None:
        self.budgets = sorted(budgets)
        self.num_samples = num_samples
        self.scores: dict[int, dict[str, float]] = {}

    def on_fit_start(self, trainer: L.Trainer, module: DiffusionModule) -> None:
        module.quality()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.budgets and step not in self.scores:
            module.eval()
            with torch.no_grad():
                row = module._score(self.num_samples, steps=None)
            module.train()
            self.scores[step] = {k: row[k] for k in ("fid", "confident_fraction")}


def run_one(
    name: str, seed: int, budgets: list[int], model_extra: dict[str, Any], root: Path
) -> dict[int, dict[str, float]]:
    _, options, data_options = SETTINGS[name]
    L.seed_everything(seed, verbose=False)
    data = DiffusionImagesDataModule(seed=seed, **data_options)
    model = DiffusionModule(
        **{
            "ema_decay": None,
            "val_samples": 0,
            "quality_cache_dir": str(root),
            **model_extra,
            **options,
        }
    )
    scorer = BudgetScorer(budgets, model.hparams.num_samples)
    trainer = L.Trainer(
        max_steps=max(budgets),
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[scorer],
        default_root_dir=str(root),
    )
    trainer.fit(model, datamodule=data)
    return scorer.scores


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_results(
    results: dict[str, dict[int, list[dict[str, float]]]], budgets: list[int], seeds: list[int]
) -> str:
    """Markdown: one table per comparison, settings as rows, budgets as columns."""
    lines = [
        "# Diffusion objectives on the embedded digits",
        "",
        f"Seeds {seeds}; digits-FID (lower is better) and, in brackets, the fraction of samples "
        "classified with confidence > 0.9, mean ± std over seeds, after each step budget "
        "(batch 64). Produced by `benchmarks/diffusion_objectives.py`.",
    ]
    for comparison, title in (
        ("min_snr", "ε constant vs v Min-SNR-5 (clean data)"),
        ("robust", "L2 vs scheduled pseudo-Huber (20% of training images replaced by noise)"),
    ):
        names = [n for n in results if SETTINGS[n][0] == comparison]
        if not names:
            continue
        lines += ["", f"## {title}", ""]
        lines.append("| setting | " + " | ".join(f"{b} steps" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for name in names:
            cells = []
            for b in budgets:
                runs = results[name][b]
                fid = _mean_std([r["fid"] for r in runs])
                conf = statistics.mean(r["confident_fraction"] for r in runs)
                cells.append(f"{fid} ({conf:.2f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[400, 800, 1600])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--smoke", action="store_true", help="a check that it runs (seconds)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "diffusion_objectives.md"
    )
    args = parser.parse_args(argv)
    seeds, budgets, model_extra = args.seeds, sorted(args.budgets), {}
    if args.smoke:
        seeds, budgets, model_extra = SMOKE["seeds"], SMOKE["budgets"], SMOKE["model"]
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            results[name] = {b: [] for b in budgets}
            for seed in seeds:
                start = time.perf_counter()
                scores = run_one(name, seed, budgets, model_extra, Path(tmp))
                for b in budgets:
                    results[name][b].append(scores[b])
                fids = ", ".join(f"{b}: {scores[b]['fid']:.2f}" for b in budgets)
                print(f"{name}, seed {seed}: FID {fids} ({time.perf_counter() - start:.0f} s)")
    text = format_results(results, budgets, seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
