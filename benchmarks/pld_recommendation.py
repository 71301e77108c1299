"""PLD next to plain BPR on synthetic implicit feedback with 20% noisy training interactions.

Matrix factorisation (``lightning_losses.tasks.recommendation``) on 1000 users × 1000 items with
35 training interactions per user (28 clean, 7 injected noise). As in the reference
(Kaike-Zhang/PLD, ``utls/trainer.py``), an epoch holds as many training rows as there are
training interactions: each user appears 35 times per epoch, and each appearance is a pool of
k = 5 of the user's training positives, each with its own sampled negative. Methods:

* **BPR**: plain BPR as the reference trains it, one uniformly drawn positive per user row
  (``PLD`` with an endless warm-up: the draw never looks at the losses). Every training
  interaction is trained on once per epoch in expectation.
* **PLD, τ = 0.1**: the reference's defaults (5 uniform warm-up epochs, then one candidate per
  pool drawn with probability softmax(−loss/τ)). The same rows, steps and gradient rows as
  BPR; only *which* positive is trained on differs.
* **BPR, all k candidates**: every candidate weighted 1 (5× BPR's gradient rows on the same
  steps), for scale.

Each method's AdamW weight decay is chosen from ``--weight-decays`` on the **validation**
NDCG@10 of the first seed; the other seeds run at that value. Every run keeps the weights of
its best validation NDCG@10 (checked every ``--val-every`` epochs) and reports the test metrics
of those weights; nothing is chosen on the test split. The noisy share is the fraction of
injected noisy interactions among the rows the loss trained on after the warm-up (0.2: no
denoising). An oracle row (noisy rows dropped, BPR's weight decay, first seed) and the ceiling
(ranking by the true affinity) bound what denoising can give.

    python benchmarks/pld_recommendation.py                      # ~25 min on 2 cores
    python benchmarks/pld_recommendation.py --seeds 0 --epochs 10 --weight-decays 0.2
    python benchmarks/pld_recommendation.py --smoke              # seconds: a check that it runs
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_losses._progress import ProgressBar
from lightning_losses.callbacks.pld import PLD
from lightning_losses.tasks.recommendation import (
    MatrixFactorization,
    SyntheticImplicitFeedback,
    ranking_inputs,
)
from lightning_losses.weighting.pld import pld_probabilities

ROOT = Path(__file__).resolve().parents[1]
#: ``--smoke``: one seed, one weight decay, 2 epochs of 5 rows per user (validated after the
#: second), a 1-epoch warm-up
SMOKE = dict(seeds=[0], epochs=2, val_every=2, weight_decays=[0.2], warmup=1, examples_per_user=5)


class KeepBest(L.Callback):
    """Remembers the weights of the best validation NDCG@10 (in memory, no checkpoint files)."""

    def __init__(self) -> None:
        self.best, self.state, self.epoch = -1.0, None, -1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = float(trainer.callback_metrics["val/ndcg@10"])
        if not trainer.sanity_checking and value > self.best:
            self.best, self.epoch = value, trainer.current_epoch
            self.state = copy.deepcopy(pl_module.state_dict())


class Trace(L.Callback):
    """Per epoch, from the losses the mixin hands to observers: the noisy share of the trained
    rows (weight > 0), the mean drawn and mean pool loss, PLD's effective candidates at ``tau``,
    and the validation NDCG@10 of that epoch."""

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.sums: dict[int, dict[str, float]] = {}
        self.rows: dict[int, dict[str, float]] = {}

    def observe_losses(self, pl_module, batch, losses, sample_weight) -> None:
        (values,) = losses.values()
        values = values.detach().double()
        used = torch.ones_like(batch["noisy"]) if sample_weight is None else sample_weight > 0
        p = pld_probabilities(values, batch["pool"], self.tau)
        _, inverse = torch.unique(batch["pool"], return_inverse=True)
        concentration = torch.zeros(int(inverse.max()) + 1, dtype=p.dtype).index_add(
            0, inverse, p.square()
        )
        acc = self.sums.setdefault(
            pl_module.current_epoch,
            dict.fromkeys(
                ("trained", "noisy", "drawn_loss", "rows", "pool_loss", "pools", "effective"), 0.0
            ),
        )
        acc["trained"] += int(used.sum())
        acc["noisy"] += int((used & batch["noisy"]).sum())
        acc["drawn_loss"] += float(values[used].sum())
        acc["rows"] += values.numel()
        acc["pool_loss"] += float(values.sum())
        acc["pools"] += concentration.numel()
        acc["effective"] += float((1.0 / concentration).sum())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.rows[trainer.current_epoch] = {
            "val/ndcg@10": float(trainer.callback_metrics["val/ndcg@10"])
        }

    def epoch_table(self) -> dict[int, dict[str, float]]:
        """Validated epochs with the training statistics of the same epoch."""
        out = {}
        for epoch, row in self.rows.items():
            acc = self.sums[epoch]
            out[epoch] = {
                **row,
                "drawn_loss": acc["drawn_loss"] / max(acc["trained"], 1),
                "pool_loss": acc["pool_loss"] / max(acc["rows"], 1),
                "effective": acc["effective"] / max(acc["pools"], 1),
                "noisy_share": acc["noisy"] / max(acc["trained"], 1),
            }
        return out

    def noisy_share(self, from_epoch: int) -> float:
        kept = [acc for epoch, acc in self.sums.items() if epoch >= from_epoch]
        return sum(a["noisy"] for a in kept) / max(sum(a["trained"] for a in kept), 1)


class DropNoisy(L.Callback):
    """Oracle: weight 0 for the injected noisy rows, 1/(1 - noise) for the others."""

    def __init__(self, noise: float) -> None:
        self.scale = 1.0 / (1.0 - noise)

    def sample_weights(self, pl_module, batch, losses) -> torch.Tensor:
        return (~batch["noisy"]).to(losses.dtype) * self.scale


def run(
    seed: int,
    args: argparse.Namespace,
    *,
    method: str = "bpr",
    tau: float = 0.1,
    num_selected: int = 1,
    noise: float | None = None,
    shared_negative: bool | None = None,
    warmup: int | None = None,
    weight_decay: float = 0.2,
    test: bool = True,
) -> dict[str, Any]:
    """One training run; ``method`` is "bpr", "uniform", "pld" or "drop_noisy"."""
    L.seed_everything(seed, verbose=False)
    noise = args.noise if noise is None else noise
    warmup = args.warmup if warmup is None else warmup
    shared_negative = args.shared_negative if shared_negative is None else shared_negative
    dm = SyntheticImplicitFeedback(
        noise=noise,
        examples_per_user=args.examples_per_user,
        shared_negative=shared_negative,
        seed=seed,
    )
    model = MatrixFactorization(
        dm.num_users, dm.num_items, dim=64, lr=1e-2, weight_decay=weight_decay
    )
    keep, trace = KeepBest(), Trace(tau)
    callbacks: list[L.Callback] = [keep, trace]
    if method == "uniform":
        callbacks.insert(0, PLD(warmup_epochs=10**9, seed=seed))
    elif method == "pld":
        pld = PLD(temperature=tau, warmup_epochs=warmup, num_selected=num_selected, seed=seed)
        callbacks.insert(0, pld)
    elif method == "drop_noisy":
        callbacks.insert(0, DropNoisy(dm.noise_fraction))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        check_val_every_n_epoch=args.val_every,
        num_sanity_val_steps=0,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    args.progress.set_description(f"PLD benchmark: {method}, seed {seed}, wd {weight_decay:g}")
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    result = {
        "val/ndcg@10": keep.best,
        "best_epoch": keep.epoch,
        "noisy_share": trace.noisy_share(warmup),
        "trace": trace.epoch_table(),
    }
    if test:
        model.load_state_dict(keep.state)
        result.update(trainer.test(model, datamodule=dm, verbose=False)[0])
    result["seconds"] = time.perf_counter() - start
    args.progress.advance()
    return result


def ceiling(seed: int, noise: float) -> dict[str, float]:
    """Ranking by the true affinity: the best any model can do on this data."""
    dm = SyntheticImplicitFeedback(noise=noise, seed=seed)
    model = MatrixFactorization(dm.num_users, dm.num_items)
    users = torch.arange(dm.num_users)
    out = {}
    for metrics, target, exclude in (
        (model.val_metrics, dm.val_matrix, dm.train_matrix),
        (model.test_metrics, dm.test_matrix, dm.train_matrix | dm.val_matrix),
    ):
        preds, relevant, indexes = ranking_inputs(dm.affinity, target, exclude, users)
        metrics.update(preds, relevant, indexes=indexes)
        out.update({k: float(v) for k, v in metrics.compute().items()})
    return out


def fmt(values: list[float], scale: float = 100.0) -> str:
    mean = scale * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {scale * statistics.stdev(values):.2f}"


METHODS = {
    "bpr": "BPR (one uniform positive per user row)",
    "pld": "PLD, τ = {tau:g}",
    "all": "BPR, all k candidates (5x the gradient rows)",
}


def tuned_runs(method: str, args: argparse.Namespace, **kwargs: Any) -> tuple[float, list, list]:
    """Weight decay chosen on the first seed's validation NDCG@10, then the other seeds."""
    first, *others = args.seeds
    sweep = {
        wd: run(first, args, method=_kind(method), weight_decay=wd, **kwargs)
        for wd in args.weight_decays
    }
    for wd, r in sweep.items():
        args.progress.write(f"{method} wd {wd} val {round(r['val/ndcg@10'], 4)}")
    wd = max(sweep, key=lambda w: sweep[w]["val/ndcg@10"])
    runs = [sweep[wd]] + [
        run(s, args, method=_kind(method), weight_decay=wd, **kwargs) for s in others
    ]
    return wd, runs, [(w, r["val/ndcg@10"]) for w, r in sweep.items()]


def _kind(method: str) -> str:
    return {"bpr": "uniform", "pld": "pld", "all": "bpr"}[method]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val-every", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--examples-per-user", type=int, default=35)
    parser.add_argument("--weight-decays", nargs="+", type=float, default=[0.05, 0.2, 0.5])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--shared-negative",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="one sampled negative for all k candidates of a pool (the reference's layout) "
        "instead of one per candidate, for every method",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 1 because the retrieval metrics' per-user loop of small "
        "ops is many times slower with 2 threads on a busy 2-core machine",
    )
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/pld_recommendation.md"
    )
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
            Path(tempfile.mkdtemp(prefix="pld_smoke_")) / "pld_recommendation.md"
            if args.smoke
            else ROOT / "benchmarks/results/pld_recommendation.md"
        )
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    # per method: the weight-decay sweep on the first seed, then the other seeds; the oracle
    planned = len(args.methods) * (len(args.weight_decays) + len(args.seeds) - 1)
    planned += "bpr" in args.methods
    rows: dict[str, tuple[float, list[dict[str, Any]]]] = {}
    sweeps: dict[str, list[tuple[float, float]]] = {}
    bpr_name = METHODS["bpr"]
    oracle = None
    with ProgressBar(planned, "PLD benchmark", unit="runs") as args.progress:
        for method in args.methods:
            name = METHODS[method].format(tau=args.tau)
            wd, runs, sweeps[name] = tuned_runs(method, args, tau=args.tau)
            rows[name] = (wd, runs)
        best = [ceiling(s, args.noise) for s in args.seeds]
        if bpr_name in rows:
            oracle = run(
                args.seeds[0], args, method="drop_noisy", weight_decay=rows[bpr_name][0], test=False
            )
    total = time.perf_counter() - start

    layout = "one shared negative per pool" if args.shared_negative else "own negative per row"
    lines = [
        f"Synthetic implicit feedback, 1000 users × 1000 items, {100 * args.noise:.0f}% noisy "
        f"training interactions; matrix factorisation (dim 64, AdamW lr 1e-2), {args.epochs} "
        f"epochs of {args.examples_per_user} rows per user, pools of k = 5 candidates ({layout}). "
        f"Weight decay per method chosen from {args.weight_decays} on seed {args.seeds[0]}'s "
        f"validation NDCG@10; weights of the best validation NDCG@10 (every {args.val_every} "
        f"epoch(s)); seeds {', '.join(map(str, args.seeds))}; mean ± std in percent. PLD "
        f"warm-up {args.warmup} epochs.",
        "",
        "| method | weight decay | val NDCG@10 | test Recall@10 | test NDCG@10 | noisy share "
        "trained | best epoch | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (wd, runs) in rows.items():
        lines.append(
            f"| {name} | {wd:g} | {fmt([r['val/ndcg@10'] for r in runs])} | "
            f"{fmt([r['test/recall@10'] for r in runs])} | "
            f"{fmt([r['test/ndcg@10'] for r in runs])} | "
            f"{statistics.fmean(r['noisy_share'] for r in runs):.3f} | "
            f"{statistics.fmean(r['best_epoch'] for r in runs):.0f} | "
            f"{statistics.fmean(r['seconds'] for r in runs):.0f} |"
        )
    lines.append(
        f"| ranking by the true affinity (ceiling) | – | {fmt([c['val/ndcg@10'] for c in best])} | "
        f"{fmt([c['test/recall@10'] for c in best])} | "
        f"{fmt([c['test/ndcg@10'] for c in best])} | – | – | – |"
    )
    pld_name = METHODS["pld"].format(tau=args.tau)
    if bpr_name in rows and pld_name in rows:
        pairs = zip(rows[bpr_name][1], rows[pld_name][1], strict=True)
        gap = [p["test/ndcg@10"] - b["test/ndcg@10"] for b, p in pairs]
        lines += [
            "",
            f"Test NDCG@10 of PLD minus BPR, paired by seed: {fmt(gap)} points "
            f"({sum(g > 0 for g in gap)} of {len(gap)} seeds above).",
        ]
    lines += [
        "",
        f"Weight-decay sweep, seed {args.seeds[0]}, best validation NDCG@10 (percent):",
        "",
        "| method | " + " | ".join(f"wd {w:g}" for w in args.weight_decays) + " |",
        "| --- | " + " | ".join("---" for _ in args.weight_decays) + " |",
    ]
    for name, sweep in sweeps.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for _, v in sweep) + " |")
    if oracle is not None:
        lines += [
            "",
            f"Oracle, seed {args.seeds[0]}: BPR with the injected noisy rows dropped (weight "
            f"decay {rows[bpr_name][0]:g}) reaches validation NDCG@10 "
            f"{100 * oracle['val/ndcg@10']:.2f}.",
        ]
    if bpr_name in rows and pld_name in rows:
        bpr_trace, pld_trace = rows[bpr_name][1][0]["trace"], rows[pld_name][1][0]["trace"]
        lines += [
            "",
            f"Validation trajectory, seed {args.seeds[0]} (each at its chosen weight decay). "
            "PLD's drawn loss, mean pool loss, effective candidates (of 5, at τ) and noisy "
            "share are means over the rows and pools of that epoch's training steps.",
            "",
            "| epoch | BPR val NDCG@10 | PLD val NDCG@10 | PLD drawn loss | PLD mean pool loss | "
            "PLD effective candidates | PLD noisy share |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for epoch, row in pld_trace.items():
            other = bpr_trace.get(epoch, {})
            lines.append(
                f"| {epoch} | {100 * other.get('val/ndcg@10', float('nan')):.2f} | "
                f"{100 * row['val/ndcg@10']:.2f} | {row['drawn_loss']:.3f} | "
                f"{row['pool_loss']:.3f} | {row['effective']:.2f} | {row['noisy_share']:.3f} |"
            )
    lines += ["", f"Whole benchmark: {total / 60:.1f} min with {args.threads} thread(s)."]
    if args.smoke:
        lines += [
            "",
            "Smoke run (`--smoke`, tiny sizes): a check that the script runs, not a result.",
        ]
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
