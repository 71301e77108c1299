"""Our curvature and landscape diagnostics next to PyHessian and loss-landscapes, in one run.

Same model (a small CNN with batch norm, trained for a few steps on the embedded digits), same
probe set (``--probe-batches`` batches of ``--batch-size`` training images), model in eval mode
for everyone (PyHessian forces it). Each row is timed and its peak memory measured; values are
checked to agree **before** any timing is reported (the run stops otherwise).

* **Top eigenvalue**, ``--iters`` HVPs each: ours ``lanczos(k=1, max_iter=iters, tol=0)`` (our
  default algorithm) and ``power_iteration`` (the same algorithm as PyHessian's) against
  PyHessian's ``hessian.eigenvalues(maxIter=iters, tol=-inf)``. ``tol=0`` / ``tol=-inf`` switch
  off early stopping on both sides so that each does exactly ``iters`` iterations. Check: the
  three values agree to ``--eig-rtol`` (power iteration converges more slowly than Lanczos, so a
  short run may need a looser tolerance or more iterations).
* **Trace**, ``--iters`` HVPs each: ours ``hutchinson`` (the same estimator as PyHessian's) and
  ``hutchpp`` against PyHessian's ``hessian.trace(maxIter=iters, tol=-inf)``. Check: the
  estimates agree within 4 combined standard errors (they are random, with different probes).
* **2-D slice**, ``--grid`` x ``--grid`` loss evaluations each:
  - *same directions*: ours ``plane_slice`` against loss-landscapes' ``planar_interpolation``
    on the same plane (two filter-normalised directions from our ``random_direction``); its
    corner models are built by this script outside the timing. loss-landscapes walks the grid
    with in-place steps and its even columns are shifted by one step (points ``j = 1..n``
    instead of ``0..n-1``), so the check compares the points both grids hold (``rtol 1e-4``);
  - *random directions* (time and memory only, the directions differ): ours
    ``random_direction`` twice + ``plane_slice`` against ``random_plane(normalization="filter")``.
  Both evaluate the probe loss as the size-weighted mean of the batch losses (a small
  ``loss_landscapes.metrics.Metric`` subclass does it for loss-landscapes).

PyHessian gets the probe set as ``data=`` (one batch: it builds the gradient graph once and
reuses it for every HVP) or ``dataloader=`` (several batches: one forward and double backward
per batch and HVP, as ours always does). Its ``density`` is not compared: it calls
``torch.eig``, which current torch no longer has.

**Memory.** On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before the
row (reset with ``reset_peak_memory_stats``). On CPU, torch's allocations bypass Python's
allocator, so ``tracemalloc`` does not see them; instead the row's peak resident set size over
the one before it: Linux's ``VmHWM`` is reset to the current RSS (``/proc/self/clear_refs``,
value 5) after ``gc.collect()`` and glibc ``malloc_trim(0)``, and read after the row. It counts
everything the process touches (allocator slack included), so read small differences (a few
MB) as equal.

Run (reference packages: ``uv sync --group bench``)::

    .venv/bin/python benchmarks/landscape_vs_pyhessian.py [--device cuda] [--width 32] \
        [--probe-batches 4] [--batch-size 128] [--iters 100] [--grid 21] [--repeats 3] \
        [--threads 1] [--out benchmarks/results/landscape_vs_pyhessian.md]
    .venv/bin/python benchmarks/landscape_vs_pyhessian.py --smoke   # seconds; prints only
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import importlib.metadata
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import (
    LossFunction,
    hutchinson,
    hutchpp,
    lanczos,
    plane_slice,
    power_iteration,
    random_direction,
)

try:
    from pyhessian import hessian as PyHessian
except Exception as exc:  # pragma: no cover - reported, not hidden
    PyHessian = None
    PYHESSIAN_ERROR = f"{type(exc).__name__}: {exc}"
try:
    import loss_landscapes
    from loss_landscapes.metrics import Metric
except Exception as exc:  # pragma: no cover
    loss_landscapes = None
    Metric = object
    LOSS_LANDSCAPES_ERROR = f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- setup


def small_cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 2 * 2, 10),
    )


def digits(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    return x.to(device), torch.tensor(d.target, dtype=torch.long, device=device)


def trained_model(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(args.seed)
    model = small_cnn(args.width).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(x), (64,), generator=gen).to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


def probe_set(args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    gen = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randperm(len(x), generator=gen)[: args.probe_batches * args.batch_size]
    idx = idx.to(x.device)
    return [(x[i], y[i]) for i in idx.split(args.batch_size)]


def batch_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


class ProbeLoss(Metric):
    """The size-weighted mean loss over the probe batches, as loss-landscapes' metric."""

    def __init__(self, batches: list[tuple]) -> None:
        super().__init__()
        self.batches = batches
        self.total = float(sum(len(b[1]) for b in batches))

    def __call__(self, model_wrapper: Any) -> float:
        with torch.no_grad():
            return sum(
                float(F.cross_entropy(model_wrapper.forward(xb), yb)) * len(yb) / self.total
                for xb, yb in self.batches
            )


# ----------------------------------------------------------------------------- measuring


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1))


_LIBC = None


def _trim() -> None:
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except OSError:  # not glibc
        pass


@dataclass
class Measured:
    value: Any
    seconds: float
    peak_mb: float


def measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> Measured:
    """Median wall time over ``repeats`` calls; peak memory of the first call."""
    times, peak, value = [], math.nan, None
    for r in range(repeats):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            _trim()
            try:
                Path("/proc/self/clear_refs").write_text("5")
                base = _status_kb("VmRSS")
            except OSError:
                base = None
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if r == 0:
            value = out
            if device.type == "cuda":
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            elif base is not None:
                peak = (_status_kb("VmHWM") - base) / 1024
        del out
    return Measured(value, statistics.median(times), peak)


# ----------------------------------------------------------------------------- the rows


def pyhessian_object(model: nn.Module, batches: list[tuple], device: torch.device) -> Any:
    cuda = device.type == "cuda"
    if len(batches) == 1:
        h = PyHessian(model, nn.CrossEntropyLoss(), data=batches[0], cuda=cuda)
    else:
        h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=cuda)
    return h


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def theirs_eigenvalue(model, batches, device, iters, seed) -> float:
    torch.manual_seed(seed)
    h = pyhessian_object(model, batches, device)
    values, _ = h.eigenvalues(maxIter=iters, tol=-math.inf, top_n=1)
    del h
    _clear_grads(model)
    return float(values[0])


def theirs_trace(model, batches, device, iters, seed) -> tuple[float, float]:
    torch.manual_seed(seed)
    h = pyhessian_object(model, batches, device)
    samples = np.asarray(h.trace(maxIter=iters, tol=-math.inf))
    del h
    _clear_grads(model)
    return float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))


def plane_models(model: nn.Module, d1: dict, d2: dict, distance: float, steps: int):
    """Corner models for planar_interpolation: start = θ − D·d1 − D·d2 and the ends one
    ``steps`` grid steps (spacing 2D/(steps−1), ours) along d1 and d2, so that its point
    ``(i, j)`` is ours ``(i, j)``."""
    h = 2 * distance / (steps - 1)
    start, end1, end2 = (copy.deepcopy(model) for _ in range(3))
    with torch.no_grad():
        for m, a, b in ((start, 0.0, 0.0), (end1, steps * h, 0.0), (end2, 0.0, steps * h)):
            params = dict(m.named_parameters())
            for name in d1:
                params[name].add_(d1[name], alpha=-distance + a)
                params[name].add_(d2[name], alpha=-distance + b)
    return start, end1, end2


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check(condition: bool, message: str) -> None:
    line = ("  ok   " if condition else "  FAIL ") + message
    print(line, flush=True)
    check.lines.append(line)  # type: ignore[attr-defined]
    if not condition:
        check.failed = True  # type: ignore[attr-defined]


check.failed = False  # type: ignore[attr-defined]
check.lines = []  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=32, help="CNN channels (2x in the 2nd conv)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--probe-batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=100, help="HVPs per eigenvalue / trace run")
    p.add_argument("--grid", type=int, default=21, help="points per axis of the 2-D slice")
    p.add_argument("--distance", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eig-rtol", type=float, default=0.02)
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings (width 8, 30 training steps, 2 batches of 32, 8 iterations, grid 5, "
        "1 repeat, eigenvalue rtol 0.25) to check that everything runs",
    )
    args = p.parse_args(argv)
    # PyHessian's single-graph setup calls backward(create_graph=True); its grads are cleared after
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    if args.smoke:
        args.width, args.train_steps, args.probe_batches, args.batch_size = 8, 30, 2, 32
        args.iters, args.grid, args.repeats, args.eig_rtol = 8, 5, 1, 0.25
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    missing = []
    if PyHessian is None:
        missing.append(f"pyhessian ({PYHESSIAN_ERROR})")
    if loss_landscapes is None:
        missing.append(f"loss-landscapes ({LOSS_LANDSCAPES_ERROR})")
    for m in missing:
        print(f"skipping the comparison with {m}; install with `uv sync --group bench`")

    x, y = digits(device)
    model = trained_model(args, x, y)
    batches = probe_set(args, x, y)
    numel = sum(p.numel() for p in model.parameters())
    fn = LossFunction(model, batch_loss, batches)
    setup = (
        f"model: CNN width {args.width}, {numel:,} parameters, trained {args.train_steps} steps; "
        f"probe set {len(batches)} x {args.batch_size} digits; probe loss {fn.loss():.4f}; "
        f"device {device}, {args.threads} thread(s); {args.iters} HVPs per eigen/trace run, "
        f"{args.grid}x{args.grid} slice"
    )
    print(setup)
    state = copy.deepcopy(model.state_dict())
    rows: list[tuple[str, str, str, Measured, Measured | None, str]] = []
    it, seed = args.iters, args.seed

    # -- values first, then timings (measure() keeps the value of its first call) -------------
    ours_lz = measure(lambda: lanczos(fn, 1, max_iter=it, tol=0.0, seed=seed), device, args.repeats)
    ours_pw = measure(
        lambda: power_iteration(fn, 1, max_iter=it, tol=0.0, seed=seed), device, args.repeats
    )
    ours_hutch = measure(lambda: hutchinson(fn, it, seed=seed), device, args.repeats)
    ours_hpp = measure(lambda: hutchpp(fn, it, seed=seed), device, args.repeats)
    print("checks:")
    for name, res in (
        ("Lanczos", ours_lz.value),
        ("power iteration", ours_pw.value),
        ("Hutchinson", ours_hutch.value),
        ("Hutch++", ours_hpp.value),
    ):
        check(res.hvp_count == it, f"ours {name} spent {res.hvp_count} HVPs (asked: {it})")
    if PyHessian is not None:
        th_eig = measure(
            lambda: theirs_eigenvalue(model, batches, device, it, seed), device, args.repeats
        )
        th_tr = measure(
            lambda: theirs_trace(model, batches, device, it, seed), device, args.repeats
        )
        lam = float(ours_lz.value.eigenvalues[0])
        ours_power = float(ours_pw.value.eigenvalues[0])
        for name, v in (("PyHessian power", th_eig.value), ("ours power", ours_power)):
            check(
                abs(v - lam) <= args.eig_rtol * abs(lam),
                f"lambda_max: ours Lanczos {lam:.5g}, {name} {v:.5g} (rtol {args.eig_rtol})",
            )
        t_mean, t_se = th_tr.value
        for name, res in (("Hutchinson", ours_hutch.value), ("Hutch++", ours_hpp.value)):
            bound = 4 * math.hypot(res.std_error, t_se)
            check(
                abs(res.estimate - t_mean) <= bound,
                f"trace: ours {name} {res.estimate:.5g} ± {res.std_error:.2g}, PyHessian "
                f"{t_mean:.5g} ± {t_se:.2g} (bound 4 combined s.e. = {bound:.3g})",
            )
        rows += [
            ("lambda_max", "Lanczos", "power iteration", ours_lz, th_eig, f"{it} HVPs"),
            ("lambda_max", "power iteration", "power iteration", ours_pw, th_eig, f"{it} HVPs"),
            ("trace", "Hutchinson", "Hutchinson", ours_hutch, th_tr, f"{it} HVPs"),
            ("trace", "Hutch++", "Hutchinson", ours_hpp, th_tr, f"{it} HVPs"),
        ]
    model.load_state_dict(state)

    n, dist = args.grid, args.distance
    gen = torch.Generator().manual_seed(seed + 1)
    d1 = random_direction(model, seed=gen)
    d2 = random_direction(model, seed=gen)
    ours_plane = measure(
        lambda: plane_slice(fn, d1, d2, distance=dist, num_points=n).losses.numpy(),
        device,
        args.repeats,
    )

    def ours_random_plane() -> np.ndarray:
        g = torch.Generator().manual_seed(seed + 2)
        a, b = random_direction(model, seed=g), random_direction(model, seed=g)
        return plane_slice(fn, a, b, distance=dist, num_points=n).losses.numpy()

    ours_rand = measure(ours_random_plane, device, args.repeats)
    if loss_landscapes is not None:
        metric = ProbeLoss(batches)
        start, end1, end2 = plane_models(model, d1, d2, dist, n)
        th_plane = measure(
            lambda: loss_landscapes.planar_interpolation(
                copy.deepcopy(start), end1, end2, metric, steps=n, deepcopy_model=False
            ),
            device,
            args.repeats,
        )
        ours_grid, their_grid = ours_plane.value, np.asarray(th_plane.value)
        # their column i holds points j = 1..n for even i and j = 0..n-1 for odd i
        pairs = [
            (ours_grid[i, j], their_grid[i, j - 1 if i % 2 == 0 else j])
            for i in range(n)
            for j in range(n)
            if i % 2 == 1 or j >= 1
        ]
        a, b = np.array(pairs).T
        worst = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        check(
            bool(np.allclose(a, b, rtol=1e-4, atol=1e-6)),
            f"2-D slice, same plane: {len(pairs)} shared points, largest relative difference "
            f"{worst:.2e}",
        )
        th_rand = measure(
            lambda: loss_landscapes.random_plane(
                model, metric, distance=dist, steps=n, normalization="filter", deepcopy_model=True
            ),
            device,
            args.repeats,
        )
        model.requires_grad_(True)  # random_plane's wrapper switches it off (on a copy here)
        rows += [
            ("2-D slice", "plane_slice", "planar_interpolation", ours_plane, th_plane, f"{n}x{n}"),
            (
                "2-D slice, random",
                "2x random_direction + plane_slice",
                "random_plane",
                ours_rand,
                th_rand,
                f"{n}x{n}",
            ),
        ]
    after = {k: v for k, v in model.state_dict().items()}
    check(
        all(torch.equal(after[k], state[k]) for k in state),
        "the model's weights and buffers are unchanged after every row",
    )
    if check.failed:  # type: ignore[attr-defined]
        print("values disagree: no timings reported", file=sys.stderr)
        return 1

    header = (
        "| quantity | ours | theirs | work | ours s | theirs s | time ours/theirs | ours peak MB "
        "| theirs peak MB | memory ours/theirs |\n| --- | --- | --- | --- | ---: | ---: | ---: | "
        "---: | ---: | ---: |"
    )
    lines = [header]
    for quantity, ours_name, their_name, ours, theirs, work in rows:
        lines.append(
            f"| {quantity} | {ours_name} | {their_name} | {work} | {ours.seconds:.3f} | "
            f"{theirs.seconds:.3f} | {ours.seconds / theirs.seconds:.2f} | {ours.peak_mb:.1f} | "
            f"{theirs.peak_mb:.1f} | {ours.peak_mb / max(theirs.peak_mb, 1e-9):.2f} |"
        )
    table = "\n".join(lines)
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) growth"
    note = (
        f"Median of {args.repeats} run(s); memory: {memory} over the row's start. PyHessian given "
        f"{'data= (one batch)' if len(batches) == 1 else 'dataloader= (several batches)'}."
    )
    print(table)
    print(note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        versions = (
            f"torch {torch.__version__}, pyhessian {_version('pyhessian')}, loss-landscapes "
            f"{_version('loss-landscapes')}, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPU cores, 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f}"
        )
        checks = "\n".join(check.lines)  # type: ignore[attr-defined]
        args.out.write_text(
            f"# Diagnostics against PyHessian and loss-landscapes\n\n- {versions}\n- {setup}\n\n"
            f"Checks, made before any timing:\n\n```\n{checks}\n```\n\n{table}\n\n{note}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
