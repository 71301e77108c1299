"""Our curvature and landscape diagnostics next to PyHessian and loss-landscapes, in one run.

Models (``--models``): a small CNN with batch norm and a small ReLU MLP, each trained for a few
steps on the embedded digits; one probe set of ``--probe-batches`` x ``--batch-size`` training
images; every model in eval mode for everyone (PyHessian forces it). Each row is timed and its
peak memory measured; values are checked to agree **before** any timing is reported (the run
stops otherwise). The calls compared with each other are timed round-robin (``--repeats``
rounds, each calling every one of them once; the median over rounds is reported), so that a
change in the machine's load falls on both sides alike.

PyHessian has two modes, and each is compared with ours in the matching configuration:

* **single batch**: PyHessian's ``hessian(model, criterion, data=(x, y))`` with the whole probe
  set as one batch; it runs the forward and first backward once, in its constructor, and every
  HVP is one double backward through that graph. Ours: :class:`LossFunction` over the same one
  batch, default ``retain_graph="auto"``, which keeps that batch's graph the same way;
* **dataloader**: PyHessian's ``hessian(..., dataloader=batches)`` over the probe batches; every
  HVP runs, per batch, a forward, a first backward and a double backward. Ours over the same
  batches with the default ``retain_graph="auto"`` (here all the batches' graphs fit its 256 MiB
  bound, so they are built once and kept: less time, more memory), and, as the like-for-like
  row, with ``retain_graph=False`` (rebuilt for every HVP, as PyHessian does).

Each of ours is built inside the timed call (a kept graph never survives from one timing to
the next), as PyHessian's object is. The forward passes of both sides are counted (a forward
hook on the model) and printed next to the HVPs.

* **Top eigenvalue**, ``--iters`` HVPs each: ours ``lanczos(k=1, max_iter=iters, tol=0)`` (our
  default algorithm) and ``power_iteration`` (the same algorithm as PyHessian's) against
  PyHessian's ``hessian.eigenvalues(maxIter=iters, tol=-inf)``. ``tol=0`` / ``tol=-inf`` switch
  off early stopping on both sides so that each does exactly ``iters`` iterations. Check: the
  values agree to ``--eig-rtol`` (power iteration converges more slowly than Lanczos, so a
  short run may need a looser tolerance or more iterations).
* **Trace**, ``--iters`` HVPs each: ours ``hutchinson`` (the same estimator as PyHessian's) and
  ``hutchpp`` against PyHessian's ``hessian.trace(maxIter=iters, tol=-inf)``. Check: the
  estimates agree within 4 combined standard errors (they are random, with different probes).
* **2-D slice** (first model only; it does not depend on the mode), ``--grid`` x ``--grid``
  loss evaluations each:
  - *same directions*: ours ``plane_slice`` against loss-landscapes' ``planar_interpolation``
    on the same plane (two filter-normalised directions from our ``random_direction``); its
    corner models are built by this script outside the timing. loss-landscapes walks the grid
    with in-place steps and its even columns are shifted by one step (points ``j = 1..n``
    instead of ``0..n-1``), so the check compares the points both grids hold (``rtol 1e-4``);
  - *random directions* (time and memory only, the directions differ): ours
    ``random_direction`` twice + ``plane_slice`` against ``random_plane(normalization="filter")``.
  Both evaluate the probe loss as the size-weighted mean of the batch losses (a small
  ``loss_landscapes.metrics.Metric`` subclass does it for loss-landscapes).

PyHessian's ``density`` is not compared: it calls ``torch.eig``, which current torch no longer
has.

**Memory.** On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated memory before the
row (reset with ``reset_peak_memory_stats``). On CPU, torch's allocations bypass Python's
allocator, so ``tracemalloc`` does not see them; instead the row's peak resident set size over
the one before it: Linux's ``VmHWM`` is reset to the current RSS (``/proc/self/clear_refs``,
value 5) after ``gc.collect()`` and glibc ``malloc_trim(0)``, and read after the row. It counts
everything the process touches (allocator slack included), so read small differences (a few
MB) as equal.

Run (the reference packages are in the ``dev`` dependency group)::

    .venv/bin/python benchmarks/landscape_vs_pyhessian.py [--device cuda] [--models cnn,mlp] \
        [--width 32] [--probe-batches 4] [--batch-size 128] [--iters 100] [--grid 21] \
        [--repeats 3] [--threads 1] [--out benchmarks/results/landscape_vs_pyhessian.md]
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

LOAD_AT_START = os.getloadavg()[0]


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


def small_mlp(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


MODELS = {"cnn": small_cnn, "mlp": small_mlp}


def describe(args: argparse.Namespace, name: str) -> str:
    return f"CNN width {args.width}" if name == "cnn" else f"MLP 64-{args.hidden}-{args.hidden}-10"


def trained_model(
    args: argparse.Namespace, name: str, x: torch.Tensor, y: torch.Tensor
) -> nn.Module:
    torch.manual_seed(args.seed)
    model = MODELS[name](args.width if name == "cnn" else args.hidden).to(x.device)
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
    times: list[float]


def _call(fn: Callable[[], Any], device: torch.device, memory: bool) -> tuple[Any, float, float]:
    """``(value, seconds, peak MB)`` of one call (peak NaN unless ``memory``)."""
    peak, base = math.nan, None
    if memory:
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
    seconds = time.perf_counter() - start
    if base is not None:
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = (_status_kb("VmHWM") - base) / 1024
    return out, seconds, peak


def measure_all(
    fns: dict[Any, Callable[[], Any]], device: torch.device, repeats: int, memory: bool = True
) -> dict[Any, Measured]:
    """Time every function ``repeats`` times, round-robin (each round calls each function
    once, in order), so that a change of the machine's load during the run falls on all of
    them alike; median wall time over the rounds; value and peak memory of the first call
    (memory NaN when ``memory`` is off: ``--smoke`` skips the collection and trimming it
    needs)."""
    times: dict[Any, list[float]] = {k: [] for k in fns}
    first: dict[Any, tuple[Any, float]] = {}
    for r in range(repeats):
        for key, fn in fns.items():
            out, seconds, peak = _call(fn, device, memory)
            times[key].append(seconds)
            if r == 0:
                first[key] = (out, peak)
            del out
    return {
        k: Measured(first[k][0], statistics.median(times[k]), first[k][1], times[k]) for k in fns
    }


# ----------------------------------------------------------------------------- the rows


MODES = {"single": "single batch (data=)", "loader": "dataloader (dataloader=)"}


class ForwardCounter:
    """Counts the model's forward passes while active (a forward hook on the model)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.count, self._handle = model, 0, None

    def _hook(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> ForwardCounter:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()


def pyhessian_object(model: nn.Module, probe: list[tuple], mode: str, device: torch.device):
    cuda = device.type == "cuda"
    if mode == "single":
        (batch,) = probe
        return PyHessian(model, nn.CrossEntropyLoss(), data=batch, cuda=cuda)
    return PyHessian(model, nn.CrossEntropyLoss(), dataloader=probe, cuda=cuda)


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def theirs_eigenvalue(model, probe, mode, device, iters, seed) -> tuple[float, int]:
    torch.manual_seed(seed)
    with ForwardCounter(model) as forwards:
        h = pyhessian_object(model, probe, mode, device)
        values, _ = h.eigenvalues(maxIter=iters, tol=-math.inf, top_n=1)
    del h
    _clear_grads(model)
    return float(values[0]), forwards.count


def theirs_trace(model, probe, mode, device, iters, seed) -> tuple[float, float, int]:
    torch.manual_seed(seed)
    with ForwardCounter(model) as forwards:
        h = pyhessian_object(model, probe, mode, device)
        samples = np.asarray(h.trace(maxIter=iters, tol=-math.inf))
    del h
    _clear_grads(model)
    mean, se = float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(len(samples)))
    return mean, se, forwards.count


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


@dataclass
class Row:
    model: str
    mode: str
    quantity: str
    ours_name: str
    their_name: str
    ours: Measured
    theirs: Measured
    work: str


def curvature_rows(
    label: str, model: nn.Module, batches: list[tuple], mode: str, args, device
) -> tuple[list[Row], float]:
    """λ_max and trace rows of one model in one PyHessian mode; returns them and Lanczos' λ."""
    it, seed, reps = args.iters, args.seed, args.repeats
    if mode == "single":
        probe = [(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))]
    else:
        probe = batches
    nb = len(probe)

    def ours(algorithm: Callable[[LossFunction], Any], retain: bool | str = "auto"):
        def run() -> tuple[Any, int]:
            fn = LossFunction(model, batch_loss, probe, retain_graph=retain)
            return algorithm(fn), fn.graph_bytes

        return run

    fns: dict[Any, Callable[[], Any]] = {
        ("lambda_max", "Lanczos", "auto"): ours(
            lambda fn: lanczos(fn, 1, max_iter=it, tol=0.0, seed=seed)
        ),
        ("lambda_max", "power iteration", "auto"): ours(
            lambda fn: power_iteration(fn, 1, max_iter=it, tol=0.0, seed=seed)
        ),
        ("trace", "Hutchinson", "auto"): ours(lambda fn: hutchinson(fn, it, seed=seed)),
        ("trace", "Hutch++", "auto"): ours(lambda fn: hutchpp(fn, it, seed=seed)),
    }
    if mode == "loader":
        fns[("lambda_max", "power iteration", False)] = ours(
            lambda fn: power_iteration(fn, 1, max_iter=it, tol=0.0, seed=seed), retain=False
        )
        fns[("trace", "Hutchinson", False)] = ours(
            lambda fn: hutchinson(fn, it, seed=seed), retain=False
        )
    fns["theirs eig"] = lambda: theirs_eigenvalue(model, probe, mode, device, it, seed)
    fns["theirs trace"] = lambda: theirs_trace(model, probe, mode, device, it, seed)
    measured = measure_all(fns, device, reps, args.memory)
    th_eig, th_tr = measured.pop("theirs eig"), measured.pop("theirs trace")
    ours_rows = measured
    their_forwards = {"lambda_max": th_eig.value[-1], "trace": th_tr.value[-1]}

    where = f"{label}, {MODES[mode]}"
    for (_, name, retain), m in ours_rows.items():
        res, graph_bytes = m.value
        kept = nb if retain == "auto" else 0
        expected = nb if kept else it * nb
        check(
            res.hvp_count == it and res.forward_count == expected,
            f"{where}: ours {name} (retain_graph={retain!r}) spent {res.hvp_count} HVPs (asked: "
            f"{it}) and {res.forward_count} forward passes (expected {expected}); graphs kept "
            f"at the end {graph_bytes / 2**20:.2f} MiB",
        )
    for quantity, forwards in their_forwards.items():
        expected = nb if mode == "single" else it * nb
        check(
            forwards == expected,
            f"{where}: PyHessian {quantity} ran {forwards} forward passes (expected {expected})",
        )
    lam = float(ours_rows[("lambda_max", "Lanczos", "auto")].value[0].eigenvalues[0])
    for name, v in (
        ("PyHessian power", th_eig.value[0]),
        (
            "ours power",
            float(ours_rows[("lambda_max", "power iteration", "auto")].value[0].eigenvalues[0]),
        ),
    ):
        check(
            abs(v - lam) <= args.eig_rtol * abs(lam),
            f"{where}: lambda_max: ours Lanczos {lam:.5g}, {name} {v:.5g} (rtol {args.eig_rtol})",
        )
    if mode == "loader":
        a = float(ours_rows[("lambda_max", "power iteration", "auto")].value[0].eigenvalues[0])
        b = float(ours_rows[("lambda_max", "power iteration", False)].value[0].eigenvalues[0])
        check(
            abs(a - b) <= 1e-4 * abs(a),
            f"{where}: ours power iteration, kept graphs {a:.6g} = rebuilt {b:.6g} (rtol 1e-4)",
        )
    t_mean, t_se, _ = th_tr.value
    for (quantity, name, retain), m in ours_rows.items():
        if quantity != "trace":
            continue
        res = m.value[0]
        bound = 4 * math.hypot(res.std_error, t_se)
        check(
            abs(res.estimate - t_mean) <= bound,
            f"{where}: trace: ours {name} (retain_graph={retain!r}) {res.estimate:.5g} ± "
            f"{res.std_error:.2g}, PyHessian {t_mean:.5g} ± {t_se:.2g} (bound 4 combined s.e. = "
            f"{bound:.3g})",
        )
    rows = []
    for (quantity, name, retain), m in ours_rows.items():
        theirs = th_eig if quantity == "lambda_max" else th_tr
        forwards = m.value[0].forward_count
        ours_label = name if retain == "auto" else f"{name}, retain_graph=False"
        their_label = "power iteration" if quantity == "lambda_max" else "Hutchinson"
        work = f"{it} HVPs; forwards {forwards} / {their_forwards[quantity]}"
        rows.append(Row(label, MODES[mode], quantity, ours_label, their_label, m, theirs, work))
    return rows, lam


def slice_rows(label: str, model: nn.Module, batches: list[tuple], args, device) -> list[Row]:
    n, dist, seed, reps = args.grid, args.distance, args.seed, args.repeats
    fn = LossFunction(model, batch_loss, batches)
    gen = torch.Generator().manual_seed(seed + 1)
    d1 = random_direction(model, seed=gen)
    d2 = random_direction(model, seed=gen)

    def ours_plane() -> np.ndarray:
        return plane_slice(fn, d1, d2, distance=dist, num_points=n).losses.numpy()

    def ours_random_plane() -> np.ndarray:
        g = torch.Generator().manual_seed(seed + 2)
        a, b = random_direction(model, seed=g), random_direction(model, seed=g)
        return plane_slice(fn, a, b, distance=dist, num_points=n).losses.numpy()

    metric = ProbeLoss(batches)
    start, end1, end2 = plane_models(model, d1, d2, dist, n)

    def their_plane() -> Any:
        return loss_landscapes.planar_interpolation(
            copy.deepcopy(start), end1, end2, metric, steps=n, deepcopy_model=False
        )

    def their_random_plane() -> Any:
        out = loss_landscapes.random_plane(
            model, metric, distance=dist, steps=n, normalization="filter", deepcopy_model=True
        )
        model.requires_grad_(True)  # random_plane's wrapper switches it off (on a copy here)
        return out

    m = measure_all(
        {
            "ours": ours_plane,
            "ours random": ours_random_plane,
            "theirs": their_plane,
            "theirs random": their_random_plane,
        },
        device,
        reps,
        args.memory,
    )
    ours_plane, ours_rand, th_plane, th_rand = (
        m["ours"],
        m["ours random"],
        m["theirs"],
        m["theirs random"],
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
        f"{label}: 2-D slice, same plane: {len(pairs)} shared points, largest relative "
        f"difference {worst:.2e}",
    )
    mode = f"{len(batches)} batches"
    return [
        Row(
            label,
            mode,
            "2-D slice",
            "plane_slice",
            "planar_interpolation",
            ours_plane,
            th_plane,
            f"{n}x{n}",
        ),
        Row(
            label,
            mode,
            "2-D slice, random",
            "2x random_direction + plane_slice",
            "random_plane",
            ours_rand,
            th_rand,
            f"{n}x{n}",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp")
    p.add_argument("--modes", default="single,loader", help="comma-separated: single, loader")
    p.add_argument("--width", type=int, default=32, help="CNN channels (2x in the 2nd conv)")
    p.add_argument("--hidden", type=int, default=128, help="MLP width (two hidden layers)")
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
        help="tiny settings (width 8, hidden 16, 30 training steps, 2 batches of 32, "
        "8 iterations, grid 5, 1 repeat, eigenvalue rtol 0.25, no memory measurement) to check "
        "that everything runs",
    )
    args = p.parse_args(argv)
    args.memory = not args.smoke
    # PyHessian's single-graph setup calls backward(create_graph=True); its grads are cleared after
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    if args.smoke:
        args.width, args.hidden, args.train_steps = 8, 16, 30
        args.probe_batches, args.batch_size = 2, 32
        args.iters, args.grid, args.repeats, args.eig_rtol = 8, 5, 1, 0.25
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not models or set(models) - set(MODELS) or not modes or set(modes) - set(MODES):
        p.error(f"--models takes {sorted(MODELS)}, --modes {sorted(MODES)}; got {models}, {modes}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    check.failed, check.lines = False, []  # type: ignore[attr-defined]
    missing = []
    if PyHessian is None:
        missing.append(f"pyhessian ({PYHESSIAN_ERROR})")
    if loss_landscapes is None:
        missing.append(f"loss-landscapes ({LOSS_LANDSCAPES_ERROR})")
    for m in missing:
        print(f"skipping the comparison with {m}; install the `dev` dependency group (`uv sync`)")

    x, y = digits(device)
    batches = probe_set(args, x, y)
    rows: list[Row] = []
    setups = []
    for index, name in enumerate(models):
        model = trained_model(args, name, x, y)
        label = describe(args, name)
        numel = sum(p.numel() for p in model.parameters())
        fn = LossFunction(model, batch_loss, batches)
        setups.append(
            f"{label}: {numel:,} parameters, trained {args.train_steps} steps; probe loss "
            f"{fn.loss():.4f}"
        )
        print(setups[-1], flush=True)
        state = copy.deepcopy(model.state_dict())
        lams = []
        if PyHessian is not None:
            for mode in modes:
                mode_rows, lam = curvature_rows(label, model, batches, mode, args, device)
                rows += mode_rows
                lams.append(lam)
            if len(lams) == 2:
                check(
                    abs(lams[0] - lams[1]) <= 1e-4 * abs(lams[0]),
                    f"{label}: ours Lanczos lambda_max, one batch {lams[0]:.6g} = "
                    f"{len(batches)} batches {lams[1]:.6g} (rtol 1e-4; same probe samples)",
                )
        if index == 0 and loss_landscapes is not None:
            rows += slice_rows(label, model, batches, args, device)
        after = model.state_dict()
        check(
            all(torch.equal(after[k], state[k]) for k in state),
            f"{label}: the model's weights and buffers are unchanged after every row",
        )
    if check.failed:  # type: ignore[attr-defined]
        print("values disagree: no timings reported", file=sys.stderr)
        return 1

    header = (
        "| model | PyHessian mode | quantity | ours | theirs | work | ours s | theirs s | "
        "time ours/theirs | ours peak MB | theirs peak MB | memory ours/theirs |\n"
        "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.mode} | {r.quantity} | {r.ours_name} | {r.their_name} | {r.work} | "
            f"{r.ours.seconds:.3f} | {r.theirs.seconds:.3f} | "
            f"{r.ours.seconds / r.theirs.seconds:.2f} | {r.ours.peak_mb:.1f} | "
            f"{r.theirs.peak_mb:.1f} | {r.ours.peak_mb / max(r.theirs.peak_mb, 1e-9):.2f} |"
        )
    table = "\n".join(lines)
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) growth"
    note = (
        f"Median of {args.repeats} round-robin run(s); memory: {memory} over the row's start "
        "(first run). Work: HVPs of "
        "each side (equal, checked) and forward passes ours / theirs (counted). The 2-D slice "
        "rows compare with loss-landscapes, not PyHessian."
    )
    setup = (
        f"probe set {len(batches)} x {args.batch_size} digits (single-batch mode: the same "
        f"{len(batches) * args.batch_size} samples as one batch); device {device}, "
        f"{args.threads} thread(s); {args.iters} HVPs per eigen/trace run, "
        f"{args.grid}x{args.grid} slice"
    )
    print(table)
    print(note)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        versions = (
            f"torch {torch.__version__}, pyhessian {_version('pyhessian')}, loss-landscapes "
            f"{_version('loss-landscapes')}, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} CPU cores, 1-min load average at the start {LOAD_AT_START:.2f}, "
            f"at the end {os.getloadavg()[0]:.2f}"
        )
        checks = "\n".join(check.lines)  # type: ignore[attr-defined]
        models_text = "\n".join(f"- {s}" for s in setups)
        runs = "\n".join(
            f"| {r.model} | {r.mode} | {r.quantity} | {r.ours_name} | "
            f"{', '.join(f'{t:.3f}' for t in r.ours.times)} | "
            f"{', '.join(f'{t:.3f}' for t in r.theirs.times)} |"
            for r in rows
        )
        args.out.write_text(
            f"# Diagnostics against PyHessian and loss-landscapes\n\n- {versions}\n- {setup}\n"
            f"{models_text}\n\nChecks, made before any timing:\n\n```\n{checks}\n```\n\n"
            f"{table}\n\n{note}\n\nEvery run's time (s), in round order (the spread shows "
            "the machine's noise):\n\n| model | PyHessian mode | quantity | ours | ours runs | "
            f"theirs runs |\n| --- | --- | --- | --- | --- | --- |\n{runs}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
