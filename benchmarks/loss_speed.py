"""Forward + backward speed of lightning_losses next to established implementations.

Each row times one loss of this library and a reference implementation of the same definition
(PyTorch, torchvision, kornia, timm) on the same inputs, after checking that both give the same
value and the same input gradient. The time per call is the median over ``--repeats`` blocks of
``torch.autograd.grad(loss(x, t), x)``; ours and the reference are timed in alternating blocks so
that drift of the machine affects both alike. Every pair runs at a small shape, where the fixed
cost per call dominates (256x100), and a large one (256x1000; 8x21x64x64 dense logits where the
reference takes them), in float32 and under bf16 autocast.

A second table times a whole training step of a small timm model in a Lightning ``Trainer``.
In every fit the steps alternate between returning ``F.cross_entropy`` directly and going
through ``LossMixin.compute_loss``, so that both kinds of step see the same state of the machine;
the fits run with no callback, with ``LossLandscape`` (idle until its first analysis at epoch
100) and with ``InfoBatch`` (which weights and records scores in its first epoch).

    python benchmarks/loss_speed.py                 # CPU, 2 threads, both tables
    python benchmarks/loss_speed.py --device cuda   # on the GPU
    python benchmarks/loss_speed.py --sync-debug    # on the GPU, under set_sync_debug_mode("error")
    python benchmarks/loss_speed.py --quick         # tiny sizes, a smoke run (seconds)

The tables are printed and written as Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils import benchmark

from lightning_losses import build_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
#: The part of DOCS that this script writes (the tables and their summary), so that the page's
#: numbers are the last run's and its prose can only refer to them.
BEGIN, END = "<!-- loss_speed.py: begin generated -->", "<!-- loss_speed.py: end generated -->"


def with_generated_section(page: str, table: str) -> str:
    """``page`` with the text between the BEGIN and END markers replaced by ``table``."""
    if BEGIN not in page or END not in page:
        raise ValueError(f"{DOCS} has no generated section ({BEGIN} ... {END})")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def generated_section(page: str) -> str:
    """The text between the markers (what ``with_generated_section`` put there)."""
    return page.split(BEGIN, 1)[1].split(END, 1)[0].removeprefix("\n")


@dataclass
class Pair:
    """One of our losses and a reference that computes the same quantity."""

    name: str  # row label for our loss
    reference: str  # row label for the reference
    ours: LossFn
    ref: LossFn
    target: str  # "index", "soft" or "multilabel"
    dense: bool  # whether the reference accepts (N, K, *d) input


@dataclass
class Row:
    pair: Pair
    shape: tuple[int, ...]
    dtype: str
    ours_ms: float
    ref_ms: float
    ratio: float  # median over the alternating block pairs of ours / reference
    agree: str


def _pairs() -> list[Pair]:
    import kornia.losses
    import torchvision.ops
    from timm.loss import AsymmetricLossMultiLabel, SoftTargetCrossEntropy

    pairs = [
        Pair(
            "cross_entropy",
            "F.cross_entropy",
            build_loss("cross_entropy"),
            F.cross_entropy,
            "index",
            dense=True,
        ),
        Pair(
            "cross_entropy (label_smoothing=0.1)",
            "F.cross_entropy(label_smoothing=0.1)",
            build_loss("cross_entropy", label_smoothing=0.1),
            lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
            "index",
            dense=True,
        ),
        Pair(
            "cross_entropy (soft target)",
            "timm SoftTargetCrossEntropy",
            build_loss("cross_entropy"),
            SoftTargetCrossEntropy(),
            "soft",
            dense=False,
        ),
        Pair(
            "focal (gamma=2)",
            "kornia focal_loss (none, sum(1).mean())",
            build_loss("focal", gamma=2.0, alpha=None),
            # kornia's reduction="mean" divides by N*C; sum over classes, then average, is the
            # usual per-sample focal loss and equals ours.
            lambda x, t: (
                kornia.losses.focal_loss(x, t, alpha=None, gamma=2.0, reduction="none")
                .sum(1)
                .mean()
            ),
            "index",
            dense=True,
        ),
        Pair(
            "binary_focal (gamma=2, alpha=0.25)",
            "torchvision sigmoid_focal_loss",
            build_loss("binary_focal", gamma=2.0, alpha=0.25),
            lambda x, t: torchvision.ops.sigmoid_focal_loss(
                x, t, alpha=0.25, gamma=2.0, reduction="mean"
            ),
            "multilabel",
            dense=True,
        ),
        Pair(
            "binary_cross_entropy",
            "F.binary_cross_entropy_with_logits",
            build_loss("binary_cross_entropy"),
            F.binary_cross_entropy_with_logits,
            "multilabel",
            dense=True,
        ),
        Pair(
            "asl (sum)",
            "timm AsymmetricLossMultiLabel (sum)",
            build_loss("asl", gamma_pos=1.0, gamma_neg=4.0, clip=0.05, reduction="sum"),
            AsymmetricLossMultiLabel(gamma_pos=1, gamma_neg=4, clip=0.05, reduction="sum"),
            "multilabel",
            dense=False,
        ),
    ]
    try:
        from timm.loss import PolyCrossEntropy
    except ImportError:
        print("timm has no PolyCrossEntropy: poly1 is skipped", file=sys.stderr)
    else:
        pairs.append(
            Pair(
                "poly1 (epsilon=2)",
                "timm PolyCrossEntropy",
                build_loss("poly1", epsilon=2.0),
                PolyCrossEntropy(epsilon=2.0),
                "index",
                dense=False,
            )
        )
    return pairs


def _inputs(kind: str, shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)
    k = shape[1]
    if kind == "index":
        t = torch.randint(0, k, (shape[0], *shape[2:]), generator=g)
    elif kind == "soft":
        t = torch.softmax(3 * torch.randn(shape, generator=g), dim=1)
    else:
        t = (torch.rand(shape, generator=g) < 0.1).float()
    return x.requires_grad_(), t.to(device)


def _autocast(fn: LossFn, device: str, amp: bool) -> LossFn:
    if not amp:
        return fn

    def call(x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            return fn(x, t)

    return call


def _check(ours: LossFn, ref: LossFn, x: Tensor, t: Tensor, amp: bool) -> str:
    """ "yes" when value and input gradient agree, else a short description of the gap."""
    tol = {"rtol": 2e-2, "atol": 2e-3} if amp else {"rtol": 1e-4, "atol": 1e-5}
    results = []
    for fn in (ours, ref):
        value = fn(x, t)
        (grad,) = torch.autograd.grad(value, x)
        results.append((value.detach().float(), grad.float()))
    for what, a, b in zip(("value", "grad"), results[0], results[1], strict=True):
        try:
            torch.testing.assert_close(a, b, **tol)
        except AssertionError:
            gap = (a - b).abs().max().item()
            return f"no ({what}: max abs diff {gap:.2g})"
    return "yes"


def _time(ours: LossFn, ref: LossFn, x: Tensor, t: Tensor, args) -> tuple[float, float, float]:
    """Median per-call time (ms) of forward + backward for ours and the reference, and the
    median of the ratios of adjacent blocks (paired, so that drift of the machine between
    blocks cancels)."""
    timers = [
        benchmark.Timer(
            stmt="grad(fn(x, t), x)",
            globals={"grad": torch.autograd.grad, "fn": fn, "x": x, "t": t},
            num_threads=args.threads,
        )
        for fn in (ours, ref)
    ]
    # Calibrate the calls per block on the slower of the two so each block lasts ~block_s.
    probe = max(tm.timeit(3).mean for tm in timers)
    number = max(1, int(args.block_s / max(probe, 1e-7)))
    for tm in timers:  # an untimed block each: caches, thread pools
        tm.timeit(number)
    samples: list[list[float]] = [[], []]
    for _ in range(args.repeats):
        for i, tm in enumerate(timers):
            samples[i].append(tm.timeit(number).mean)
    ratio = statistics.median(a / b for a, b in zip(*samples, strict=True))
    return statistics.median(samples[0]) * 1e3, statistics.median(samples[1]) * 1e3, ratio


def _environment(args) -> list[str]:
    import kornia
    import timm
    import torchvision

    if args.device == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    hw = line.split(":", 1)[1].strip()
                    break
    return [
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"kornia {kornia.__version__}, timm {timm.__version__}, Python {platform.python_version()}",
        f"- device: {args.device} ({hw}), torch threads: {args.threads}, "
        f"CPU cores: {os.cpu_count()}, 1-min load average at start: {args.load:.1f}",
        f"- time per call: median of {args.repeats} blocks of ~{args.block_s * 1e3:.0f} ms, "
        "forward + backward (`torch.autograd.grad(loss(x, t), x)`)",
    ]


def _markdown(rows: list[Row], env: list[str]) -> str:
    head = [
        "| loss | reference | shape | dtype | ours (ms) | reference (ms) | ours / ref "
        "| values agree |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    body = [
        f"| {r.pair.name} | {r.pair.reference} | {'x'.join(map(str, r.shape))} | {r.dtype} "
        f"| {r.ours_ms:.3f} | {r.ref_ms:.3f} | {r.ratio:.2f} | {r.agree} |"
        for r in rows
    ]
    ratios = [r.ratio for r in rows]
    worst = max(rows, key=lambda r: r.ratio)
    summary = [
        "",
        f"- {len(rows)} rows; ours / reference: median {statistics.median(ratios):.2f}, "
        f"max {max(ratios):.2f} ({worst.pair.name}, {'x'.join(map(str, worst.shape))}, "
        f"{worst.dtype}); rows above 1.0: {sum(x > 1.0 for x in ratios)}, above 1.2: "
        f"{sum(x > 1.2 for x in ratios)}; values and gradients agree in "
        f"{sum(r.agree == 'yes' for r in rows)} of {len(rows)}",
    ]
    return "\n".join([*env, "", *head, *body, *summary]) + "\n"


# -- a whole training step ---------------------------------------------------------------------


@dataclass
class StepRow:
    name: str
    bare_ms: list[float]  # per fit: the median time of its bare steps
    step_ms: list[float]  # per fit: the median time of its compute_loss steps
    ratio: list[float]  # per fit: step_ms / bare_ms


def _step_configs() -> list[tuple[str, Callable[[], list[Any]]]]:
    from lightning_losses.callbacks import InfoBatch, LossLandscape

    return [
        ("`compute_loss`", list),
        (
            "`compute_loss` + `LossLandscape` (idle: first analysis at epoch 100)",
            lambda: [LossLandscape(every_n_epochs=100, run_at_end=False)],
        ),
        (
            "`compute_loss` + `InfoBatch` (first epoch: weights and records scores)",
            lambda: [InfoBatch(prune_ratio=0.5)],
        ),
    ]


def _step_fit(args, callbacks: list[Any], seed: int) -> tuple[float, float]:
    """One fit whose steps alternate: even batches return ``F.cross_entropy`` (the bare step),
    odd batches go through ``compute_loss``. Returns the median time (ms) of each kind of step,
    a step being the gap from its batch's start to the next batch's start (forward, loss,
    backward, optimiser step and Lightning's hooks). Adjacent steps share the machine's state,
    so the ratio of the two medians is not moved by drift between fits."""
    import lightning as L
    import timm
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_losses import LossMixin

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *_: Any) -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.starts.append(time.perf_counter())

    class Model(LossMixin, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.net = timm.create_model(
                args.step_model, num_classes=10, in_chans=1, img_size=args.step_image
            )
            self.criterion = build_loss("cross_entropy")

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            if batch_idx % 2:
                return self.compute_loss(logits, y, batch=batch)
            loss = F.cross_entropy(logits, y)
            # what compute_loss logs for the loss itself
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    g = torch.Generator().manual_seed(seed)
    n = args.step_batch * (args.steps + 1)
    x = torch.randn(n, 1, args.step_image, args.step_image, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.step_batch, shuffle=True)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=1,
        callbacks=[timer, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Model(), train_dataloaders=loader)
    gaps = [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]
    timed = list(enumerate(gaps))[args.warmup :]
    bare = [gap for i, gap in timed if i % 2 == 0]
    mixin = [gap for i, gap in timed if i % 2 == 1]
    return statistics.median(bare) * 1e3, statistics.median(mixin) * 1e3


def _step_rows(args) -> list[StepRow]:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    configs = _step_configs()
    rows = [StepRow(name, [], [], []) for name, _ in configs]
    if not args.quick:  # an untimed fit: first allocations, lazy imports
        _step_fit(args, [], seed=10_000)
    for repeat in range(args.step_repeats):
        for row, (_, callbacks) in zip(rows, configs, strict=True):
            bare, step = _step_fit(args, callbacks(), seed=repeat)
            row.bare_ms.append(bare)
            row.step_ms.append(step)
            row.ratio.append(step / bare)
        print(
            f"step repeat {repeat + 1}/{args.step_repeats}: "
            + ", ".join(f"{r.ratio[-1]:.3f}" for r in rows),
            file=sys.stderr,
        )
    return rows


def _step_markdown(rows: list[StepRow], args) -> str:
    head = [
        f"Training step of timm `{args.step_model}` (10 classes, 1x{args.step_image}x"
        f"{args.step_image} inputs, batch {args.step_batch}, SGD), {args.steps} steps per fit, "
        f"the first {args.warmup} left out. In every fit the steps alternate: even batches are "
        "the bare step (`F.cross_entropy` and the same `self.log` of the loss that "
        "`compute_loss` makes), odd batches go through `compute_loss`; the callback, if any, is "
        "attached for the whole fit. A fit's ratio is the median `compute_loss` step over the "
        f"median bare step; {args.step_repeats} fits per row, interleaved across rows.",
        "",
        "| step | bare step (ms) | `compute_loss` step (ms) | ratio: median | min | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    body = [
        f"| {r.name} | {statistics.median(r.bare_ms):.2f} | {statistics.median(r.step_ms):.2f} "
        f"| {statistics.median(r.ratio):.3f} | {min(r.ratio):.3f} | {max(r.ratio):.3f} |"
        for r in rows
    ]
    return "\n".join([*head, *body]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed blocks (default 11)")
    parser.add_argument("--block-s", type=float, default=None, help="seconds per timed block")
    parser.add_argument("--float32-only", action="store_true", help="skip the bf16 rows")
    parser.add_argument("--no-steps", action="store_true", help="skip the training-step table")
    parser.add_argument("--steps", type=int, default=None, help="training steps per fit")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of each fit")
    parser.add_argument("--step-repeats", type=int, default=None, help="interleaved fits")
    parser.add_argument("--step-model", default="test_vit", help="timm model of the step table")
    parser.add_argument("--step-image", type=int, default=32)
    parser.add_argument("--step-batch", type=int, default=64)
    parser.add_argument(
        "--sync-debug",
        action="store_true",
        help="CUDA only: run under torch.cuda.set_sync_debug_mode('error'), so any host "
        "synchronisation in a timed call raises",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "loss_speed.md"
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"also replace the generated section of {DOCS.relative_to(ROOT)} with the tables",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but CUDA is not available")
    if args.sync_debug and args.device != "cuda":
        parser.error("--sync-debug needs --device cuda")
    args.repeats = args.repeats or (3 if args.quick else 11)
    args.block_s = args.block_s or (0.005 if args.quick else 0.06)
    args.steps = args.steps or (6 if args.quick else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 10)
    args.step_repeats = args.step_repeats or (1 if args.quick else 7)
    if args.quick:
        args.step_image, args.step_batch = 16, 8
    torch.set_num_threads(args.threads)
    args.load = os.getloadavg()[0]
    if args.device == "cpu" and args.load + args.threads > (os.cpu_count() or 1) + 0.5:
        print(
            f"warning: load average {args.load:.1f} on {os.cpu_count()} cores: other processes "
            f"compete for the CPU, and {args.threads}-thread kernels wait for a free core, which "
            "inflates every time (try --threads 1 or an idle machine)",
            file=sys.stderr,
        )

    shapes = (
        {"small": (16, 10), "large": (32, 50), "dense": (2, 3, 4, 4)}
        if args.quick
        else {"small": (256, 100), "large": (256, 1000), "dense": (8, 21, 64, 64)}
    )
    precisions = [("float32", False)] + ([] if args.float32_only else [("bf16 autocast", True)])
    if args.sync_debug:
        torch.cuda.set_sync_debug_mode("error")

    start = time.perf_counter()
    rows: list[Row] = []
    for pair in _pairs():
        pair_shapes = [shapes["small"], shapes["large"]] + ([shapes["dense"]] if pair.dense else [])
        for shape in pair_shapes:
            for label, amp in precisions:
                dtype = torch.bfloat16 if amp else torch.float32
                x, t = _inputs(pair.target, shape, args.device, dtype, seed=len(rows))
                ours = _autocast(pair.ours, args.device, amp)
                ref = _autocast(pair.ref, args.device, amp)
                agree = _check(ours, ref, x, t, amp)
                ours_ms, ref_ms, ratio = _time(ours, ref, x, t, args)
                rows.append(Row(pair, shape, label, ours_ms, ref_ms, ratio, agree))
                print(
                    f"{pair.name:38s} {'x'.join(map(str, shape)):12s} {label:13s} "
                    f"{ours_ms:9.3f} ms {ref_ms:9.3f} ms  {ratio:5.2f}  {agree}",
                    file=sys.stderr,
                )
    step_table = ""
    if not args.no_steps:
        step_table = "\n" + _step_markdown(_step_rows(args), args)
    if args.sync_debug:
        torch.cuda.set_sync_debug_mode("default")
    elapsed = time.perf_counter() - start

    env = _environment(args)
    env.append(f"- benchmark wall time: {elapsed:.0f} s")
    table = _markdown(rows, env) + step_table
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"written to {args.out}", file=sys.stderr)
    if args.update_docs:
        DOCS.write_text(with_generated_section(DOCS.read_text(), table))
        print(f"updated {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main()
