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
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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
RESULTS = ROOT / "benchmarks" / "results" / "loss_speed.md"
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
    """One of our losses and a reference that computes the same quantity.

    ``make(shape)`` builds both for an input shape (the margin-softmax heads own class weights
    whose width is the embedding's); ``shapes`` names the rows' shapes in the shape table of
    :func:`_shapes`."""

    name: str  # row label for our loss
    reference: str  # row label for the reference
    make: Callable[[tuple[int, ...]], tuple[LossFn, LossFn]]
    target: str  # "index", "soft", "multilabel" or "identity"
    shapes: tuple[str, ...]
    family: str = "classification"
    amp: bool = True  # also a bf16 autocast row


def _fixed(ours: LossFn, ref: LossFn) -> Callable[[tuple[int, ...]], tuple[LossFn, LossFn]]:
    return lambda shape: (ours, ref)


#: Shapes per row kind: classification logits (N, K), dense logits (N, K, H, W), embeddings
#: (N, D) with 4 per identity, and segmentation logits in 2-D (N, C, H, W) and 3-D
#: (N, C, D, H, W).
SHAPES = {
    "small": (256, 100),
    "large": (256, 1000),
    "dense": (8, 21, 64, 64),
    "embedding": (128, 256),
    "embedding_large": (512, 2048),
    "seg_2d": (8, 4, 128, 128),
    "seg_3d": (2, 3, 32, 64, 64),
}
QUICK_SHAPES = {
    "small": (16, 10),
    "large": (32, 50),
    "dense": (2, 3, 4, 4),
    "embedding": (16, 8),
    "embedding_large": (32, 16),
    "seg_2d": (2, 3, 8, 8),
    "seg_3d": (1, 3, 4, 6, 6),
}
CLASSIFICATION = ("small", "large")
CLASSIFICATION_DENSE = ("small", "large", "dense")
EMBEDDING = ("embedding", "embedding_large")
SEGMENTATION = ("seg_2d", "seg_3d")
#: Instances per identity in an embedding batch (a P x K batch with K = 4, as the re-ID bag of
#: tricks samples), and the identities they are drawn from (Market-1501's 751 training ids, the
#: class count of the margin-softmax heads).
PER_IDENTITY, IDENTITIES = 4, 751


@dataclass
class Row:
    pair: Pair
    shape: tuple[int, ...]
    dtype: str
    ours_ms: float
    ref_ms: float
    ratio: float  # median over the alternating block pairs of ours / reference
    agree: str


def _classification_pairs() -> list[Pair]:
    import kornia.losses
    import torchvision.ops
    from timm.loss import AsymmetricLossMultiLabel, SoftTargetCrossEntropy

    def kornia_focal(x: Tensor, t: Tensor) -> Tensor:
        # kornia's reduction="mean" divides by N*C; sum over classes, then average, is the
        # usual per-sample focal loss and equals ours.
        loss = kornia.losses.focal_loss(x, t, alpha=None, gamma=2.0, reduction="none")
        return loss.sum(1).mean()

    pairs = [
        Pair(
            "cross_entropy",
            "F.cross_entropy",
            _fixed(build_loss("cross_entropy"), F.cross_entropy),
            "index",
            CLASSIFICATION_DENSE,
        ),
        Pair(
            "cross_entropy (label_smoothing=0.1)",
            "F.cross_entropy(label_smoothing=0.1)",
            _fixed(
                build_loss("cross_entropy", label_smoothing=0.1),
                lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1),
            ),
            "index",
            CLASSIFICATION_DENSE,
        ),
        Pair(
            "cross_entropy (soft target)",
            "timm SoftTargetCrossEntropy",
            _fixed(build_loss("cross_entropy"), SoftTargetCrossEntropy()),
            "soft",
            CLASSIFICATION,
        ),
        Pair(
            "focal (gamma=2)",
            "kornia focal_loss (none, sum(1).mean())",
            _fixed(build_loss("focal", gamma=2.0, alpha=None), kornia_focal),
            "index",
            CLASSIFICATION_DENSE,
        ),
        Pair(
            "binary_focal (gamma=2, alpha=0.25)",
            "torchvision sigmoid_focal_loss",
            _fixed(
                build_loss("binary_focal", gamma=2.0, alpha=0.25),
                lambda x, t: torchvision.ops.sigmoid_focal_loss(
                    x, t, alpha=0.25, gamma=2.0, reduction="mean"
                ),
            ),
            "multilabel",
            CLASSIFICATION_DENSE,
        ),
        Pair(
            "binary_cross_entropy",
            "F.binary_cross_entropy_with_logits",
            _fixed(build_loss("binary_cross_entropy"), F.binary_cross_entropy_with_logits),
            "multilabel",
            CLASSIFICATION_DENSE,
        ),
        Pair(
            "asl (sum)",
            "timm AsymmetricLossMultiLabel (sum)",
            _fixed(
                build_loss("asl", gamma_pos=1.0, gamma_neg=4.0, clip=0.05, reduction="sum"),
                AsymmetricLossMultiLabel(gamma_pos=1, gamma_neg=4, clip=0.05, reduction="sum"),
            ),
            "multilabel",
            CLASSIFICATION,
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
                _fixed(build_loss("poly1", epsilon=2.0), PolyCrossEntropy(epsilon=2.0)),
                "index",
                CLASSIFICATION,
            )
        )
    return pairs


def _pml_batch_hard_triplet(margin: float) -> LossFn:
    """PML's batch-hard triplet loss: ``BatchHardMiner`` then ``TripletMarginLoss`` on the
    mined triplets, both on unnormalised Euclidean distances."""
    from pytorch_metric_learning import losses, miners
    from pytorch_metric_learning.distances import LpDistance

    distance = LpDistance(normalize_embeddings=False)
    miner = miners.BatchHardMiner(distance=distance)
    loss = losses.TripletMarginLoss(margin=margin, distance=distance)
    return lambda x, t: loss(x, t, miner(x, t))


def _margin_softmax(name: str, pml_name: str, margin: float, pml_margin: float):
    """ArcFace / CosFace heads of both libraries with the same class weights (PML stores them
    transposed, ``(D, classes)``)."""

    def make(shape: tuple[int, ...]) -> tuple[LossFn, LossFn]:
        from pytorch_metric_learning import losses

        ours = build_loss(name, num_classes=IDENTITIES, embedding_dim=shape[1], margin=margin)
        theirs = getattr(losses, pml_name)(
            num_classes=IDENTITIES, embedding_size=shape[1], margin=pml_margin, scale=64.0
        )
        with torch.no_grad():
            theirs.W.copy_(ours.weight.T)
        return ours, theirs

    return make


def _metric_pairs() -> list[Pair]:
    """pytorch-metric-learning side by side, with the settings under which the definitions
    agree (tests/losses/metric): PML's mean over non-zero terms equals our mean over anchors
    here, since every anchor of a P x K batch has positives and negatives and a non-zero loss,
    and NT-Xent's mean over positive pairs equals ours when every anchor has K - 1 of them."""
    from pytorch_metric_learning import losses

    return [
        Pair(
            "triplet (batch-hard, margin 0.3)",
            "PML BatchHardMiner + TripletMarginLoss",
            _fixed(build_loss("triplet", margin=0.3), _pml_batch_hard_triplet(0.3)),
            "identity",
            EMBEDDING,
            family="metric",
            amp=False,
        ),
        Pair(
            "circle (m=0.25, gamma=128)",
            "PML CircleLoss",
            _fixed(
                build_loss("circle", margin=0.25, gamma=128.0),
                losses.CircleLoss(m=0.25, gamma=128.0),
            ),
            "identity",
            EMBEDDING,
            family="metric",
            amp=False,
        ),
        Pair(
            f"arcface (m=0.5, s=64, {IDENTITIES} classes)",
            "PML ArcFaceLoss (margin in degrees)",
            _margin_softmax("arcface", "ArcFaceLoss", 0.5, math.degrees(0.5)),
            "identity",
            EMBEDDING,
            family="metric",
            amp=False,
        ),
        Pair(
            f"cosface (m=0.35, s=64, {IDENTITIES} classes)",
            "PML CosFaceLoss",
            _margin_softmax("cosface", "CosFaceLoss", 0.35, 0.35),
            "identity",
            EMBEDDING,
            family="metric",
            amp=False,
        ),
        Pair(
            "supcon (tau=0.1)",
            "PML SupConLoss",
            _fixed(build_loss("supcon", temperature=0.1), losses.SupConLoss(temperature=0.1)),
            "identity",
            EMBEDDING,
            family="metric",
            amp=False,
        ),
        Pair(
            "nt_xent (tau=0.1)",
            "PML NTXentLoss",
            _fixed(build_loss("nt_xent", temperature=0.1), losses.NTXentLoss(temperature=0.1)),
            "identity",
            # PML's NT-Xent fills a (positive pairs x negative pairs) matrix: at 512 embeddings,
            # 4 per identity, 1536 x 260,608 floats (1.6 GB) per intermediate
            EMBEDDING[:1],
            family="metric",
            amp=False,
        ),
    ]


def _segmentation_pairs() -> list[Pair]:
    """MONAI and smp side by side, with the settings under which the definitions agree
    (tests/losses/segmentation): MONAI's per-image class means with its smoothing; smp's batch
    sums, absent classes zeroed, no smoothing and (Dice, Tversky) the L1 form of the counts."""
    import monai.losses as monai
    import segmentation_models_pytorch.losses as smp

    def monai_layout(loss: LossFn) -> LossFn:  # MONAI takes index targets as (N, 1, *spatial)
        return lambda x, t: loss(x, t.unsqueeze(1))

    monai_kw = {"softmax": True, "to_onehot_y": True}
    smp_like = {"reduce_over": "batch", "empty_target": "zero", "smooth_nr": 0.0, "smooth_dr": 0.0}
    dice, ce = build_loss("dice"), build_loss("cross_entropy")
    pairs = [
        ("dice", "MONAI DiceLoss", dice, monai.DiceLoss(**monai_kw)),
        (
            "generalized_dice (no smoothing)",
            "MONAI GeneralizedDiceLoss (no smoothing)",
            build_loss("generalized_dice", smooth_nr=0.0, smooth_dr=0.0),
            monai.GeneralizedDiceLoss(smooth_nr=0.0, smooth_dr=0.0, **monai_kw),
        ),
        (
            "tversky (0.3, 0.7)",
            "MONAI TverskyLoss",
            build_loss("tversky", alpha=0.3, beta=0.7),
            monai.TverskyLoss(alpha=0.3, beta=0.7, **monai_kw),
        ),
        (
            "dice + cross_entropy",
            "MONAI DiceCELoss",
            lambda x, t: dice(x, t) + ce(x, t),
            monai.DiceCELoss(**monai_kw),
        ),
    ]
    rows = [
        Pair(name, ref_name, _fixed(ours, monai_layout(ref)), "index", SEGMENTATION, "segmentation")
        for name, ref_name, ours, ref in pairs
    ]
    smp_pairs = [
        (
            "dice (smp settings)",
            "smp DiceLoss",
            build_loss("dice", soft_label=True, **smp_like),
            smp.DiceLoss("multiclass"),
        ),
        (
            "jaccard (smp settings)",
            "smp JaccardLoss",
            build_loss("jaccard", **smp_like),
            smp.JaccardLoss("multiclass"),
        ),
        (
            "lovasz_softmax (per image)",
            "smp LovaszLoss (per_image=True)",
            build_loss("lovasz_softmax"),
            smp.LovaszLoss("multiclass", per_image=True),
        ),
        (
            "tversky (0.3, 0.7, smp settings)",
            "smp TverskyLoss",
            build_loss("tversky", alpha=0.3, beta=0.7, soft_label=True, **smp_like),
            smp.TverskyLoss("multiclass", alpha=0.3, beta=0.7),
        ),
    ]
    rows += [
        # smp's Lovász fails under autocast (a dot product of bf16 errors and float32 weights)
        Pair(
            name,
            ref_name,
            _fixed(ours, ref),
            "index",
            SEGMENTATION,
            "segmentation",
            "lovasz" not in name,
        )
        for name, ref_name, ours, ref in smp_pairs
    ]
    return rows


FAMILIES = {
    "classification": _classification_pairs,
    "metric": _metric_pairs,
    "segmentation": _segmentation_pairs,
}


def _pairs(families: Sequence[str] = tuple(FAMILIES)) -> list[Pair]:
    return [pair for family in families for pair in FAMILIES[family]()]


def _inputs(kind: str, shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype)
    k = shape[1]
    if kind == "index":
        t = torch.randint(0, k, (shape[0], *shape[2:]), generator=g)
    elif kind == "identity":  # P identities of IDENTITIES, PER_IDENTITY embeddings each
        ids = torch.randperm(IDENTITIES, generator=g)[: shape[0] // PER_IDENTITY]
        t = ids.repeat_interleave(PER_IDENTITY)
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


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def _environment(args) -> list[str]:
    if args.device == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    hw = line.split(":", 1)[1].strip()
                    break
    versions = ", ".join(
        f"{label} {_version(module)}"
        for label, module in (
            ("torchvision", "torchvision"),
            ("kornia", "kornia"),
            ("timm", "timm"),
            ("pytorch-metric-learning", "pytorch_metric_learning"),
            ("MONAI", "monai"),
            ("smp", "segmentation_models_pytorch"),
        )
    )
    cores = os.cpu_count() or 1
    busy = args.load_start[0] > cores / 2 or args.load_end[0] > cores / 2
    return [
        f"- torch {torch.__version__}, {versions}, Python {platform.python_version()}",
        f"- device: {args.device} ({hw}), torch threads: {args.threads}, CPU cores: {cores}",
        "- load average (1, 5, 15 min) at the start: "
        + ", ".join(f"{x:.1f}" for x in args.load_start)
        + "; at the end: "
        + ", ".join(f"{x:.1f}" for x in args.load_end)
        + (
            ": **a loaded machine** (other processes competed for the cores), so every time "
            "is inflated; the ratios, from adjacent blocks, much less so"
            if busy
            else ""
        ),
        f"- time per call: median of {args.repeats} blocks of ~{args.block_s * 1e3:.0f} ms, "
        "forward + backward (`torch.autograd.grad(loss(x, t), x)`)",
    ]


def _summary(rows: list[Row], label: str) -> str:
    ratios = [r.ratio for r in rows]
    worst = max(rows, key=lambda r: r.ratio)
    return (
        f"- {label}{len(rows)} rows; ours / reference: median {statistics.median(ratios):.2f}, "
        f"max {max(ratios):.2f} ({worst.pair.name}, {'x'.join(map(str, worst.shape))}, "
        f"{worst.dtype}); rows above 1.0: {sum(x > 1.0 for x in ratios)}, above 1.2: "
        f"{sum(x > 1.2 for x in ratios)}; values and gradients agree in "
        f"{sum(r.agree == 'yes' for r in rows)} of {len(rows)}"
    )


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
    summary = ["", _summary(rows, "all pairs: ")]
    families = dict.fromkeys(r.pair.family for r in rows)
    if len(families) > 1:
        for family in families:
            summary.append(_summary([r for r in rows if r.pair.family == family], f"{family}: "))
    return "\n".join([*env, "", *head, *body, *summary]) + "\n"


# -- peak memory of the metric pairs -----------------------------------------------------------

#: glibc serves every allocation from this size up with its own mmap and unmaps it when freed
#: (a fixed threshold also switches off glibc's dynamic one, which would otherwise move large
#: blocks onto the heap after the first free), so the resident set follows the live tensors.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
MEMORY_REPEATS = 3


@dataclass
class MemoryRow:
    name: str
    reference: str
    shape: tuple[int, ...]
    ours_mib: float
    ref_mib: float


def _memory_cases() -> list[tuple[str, str, Callable[[tuple[int, ...]], tuple[LossFn, LossFn]]]]:
    """(our loss, reference, make) for every metric pair, and PML's triplet loss without a
    miner, its default, which lists every (anchor, positive, negative) triple."""

    def all_triplets(shape: tuple[int, ...]) -> tuple[LossFn, LossFn]:
        from pytorch_metric_learning import losses
        from pytorch_metric_learning.distances import LpDistance

        distance = LpDistance(normalize_embeddings=False)
        theirs = losses.TripletMarginLoss(margin=0.3, distance=distance)
        return build_loss("triplet", margin=0.3), theirs

    cases = [(p.name, p.reference, p.make) for p in _metric_pairs() if len(p.shapes) > 1]
    cases.insert(
        1,
        (
            "triplet (batch-hard, margin 0.3)",
            "PML TripletMarginLoss, no miner (all triplets)",
            all_triplets,
        ),
    )
    return cases


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_added_mib(call: Callable[[], Any], repeats: int) -> float:
    """The peak resident memory (MiB) that ``call()`` adds, the median over ``repeats`` calls.
    Before each call the kernel's high-water mark is reset to the current resident set
    (``/proc/self/clear_refs``, Linux), so the high-water mark after the call (``VmHWM``) minus
    the resident set before it is what the call added at its highest point."""
    import gc

    added = []
    for _ in range(repeats):
        gc.collect()
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        call()
        added.append(_status_kib("VmHWM") - before)
    return statistics.median(added) / 1024


def _memory_probe(case: int, side: int, shape: tuple[int, ...], threads: int, repeats: int):
    """In a fresh process (glibc settings of :data:`MALLOC_ENV`): the peak memory that one
    forward + backward adds, after an untimed call. It counts the loss's intermediate tensors,
    the tensors saved for the backward pass and the input gradient (the same ``N x D`` floats
    on both sides)."""
    torch.set_num_threads(threads)
    fn = _memory_cases()[case][2](shape)[side]
    x, t = _inputs("identity", shape, "cpu", torch.float32, seed=0)
    torch.autograd.grad(fn(x, t), x)
    print(peak_added_mib(lambda: torch.autograd.grad(fn(x, t), x), repeats))


def _memory_rows(args, shape: tuple[int, ...]) -> list[MemoryRow]:
    import subprocess

    env = {**os.environ, **MALLOC_ENV, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    cases = _memory_cases()[:1] if args.quick else _memory_cases()
    for case, (name, reference, _) in enumerate(cases):
        peaks = []
        for side in (0, 1):
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--memory-probe",
                f"{case},{side},{'x'.join(map(str, shape))}",
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            peaks.append(float(out.stdout.strip().splitlines()[-1]))
        rows.append(MemoryRow(name, reference, shape, *peaks))
        print(f"memory {name:38s} {peaks[0]:8.1f} MiB {peaks[1]:8.1f} MiB", file=sys.stderr)
    return rows


def _memory_markdown(rows: list[MemoryRow], repeats: int) -> str:
    shape = "x".join(map(str, rows[0].shape))
    head = [
        f"Peak memory added by one forward + backward at {shape} float32 embeddings, "
        f"{PER_IDENTITY} per identity (CPU; each number is the median of {repeats} calls in a "
        "fresh process, after an untimed call; method above).",
        "",
        "| loss | reference | ours (MiB) | reference (MiB) | ours / ref |",
        "|---|---|---:|---:|---:|",
    ]
    body = [
        f"| {r.name} | {r.reference} | {r.ours_mib:.1f} | {r.ref_mib:.1f} "
        f"| {f'{r.ours_mib / r.ref_mib:.2f}' if r.ref_mib > 0 else 'n/a'} |"
        for r in rows
    ]
    return "\n".join([*head, *body]) + "\n"


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
        "--no-memory", action="store_true", help="skip the peak-memory table of the metric pairs"
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # "case,side,NxD": internal
    parser.add_argument(
        "--family",
        action="append",
        choices=list(FAMILIES),
        help="only the pairs of this family (repeatable; default: all)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="only the pairs whose name contains TEXT (repeatable); with --family or --only "
        "nothing is written unless --out is given",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {RESULTS}")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"also replace the generated section of {DOCS.relative_to(ROOT)} with the tables",
    )
    args = parser.parse_args(argv)
    if args.memory_probe:
        case, side, shape = args.memory_probe.split(",")
        dims = tuple(int(n) for n in shape.split("x"))
        _memory_probe(int(case), int(side), dims, args.threads, MEMORY_REPEATS)
        return
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
    args.load_start = os.getloadavg()
    args.load = args.load_start[0]
    if args.device == "cpu" and args.load + args.threads > (os.cpu_count() or 1) + 0.5:
        print(
            f"warning: load average {args.load:.1f} on {os.cpu_count()} cores: other processes "
            f"compete for the CPU, and {args.threads}-thread kernels wait for a free core, which "
            "inflates every time (try --threads 1 or an idle machine)",
            file=sys.stderr,
        )

    shapes = QUICK_SHAPES if args.quick else SHAPES
    precisions = [("float32", False)] + ([] if args.float32_only else [("bf16 autocast", True)])
    if args.sync_debug:
        torch.cuda.set_sync_debug_mode("error")

    start = time.perf_counter()
    rows: list[Row] = []
    for pair in _pairs(args.family or tuple(FAMILIES)):
        if args.only and not any(part in pair.name for part in args.only):
            continue
        for shape in (shapes[key] for key in pair.shapes):
            ours_fn, ref_fn = pair.make(shape)
            for label, amp in precisions if pair.amp else precisions[:1]:
                dtype = torch.bfloat16 if amp else torch.float32
                x, t = _inputs(pair.target, shape, args.device, dtype, seed=len(rows))
                ours = _autocast(ours_fn, args.device, amp)
                ref = _autocast(ref_fn, args.device, amp)
                agree = _check(ours, ref, x, t, amp)
                ours_ms, ref_ms, ratio = _time(ours, ref, x, t, args)
                rows.append(Row(pair, shape, label, ours_ms, ref_ms, ratio, agree))
                print(
                    f"{pair.name:38s} {'x'.join(map(str, shape)):12s} {label:13s} "
                    f"{ours_ms:9.3f} ms {ref_ms:9.3f} ms  {ratio:5.2f}  {agree}",
                    file=sys.stderr,
                )
    memory_table = ""
    want_memory = not args.no_memory and "metric" in (args.family or FAMILIES) and not args.only
    if want_memory and args.device == "cpu":
        if Path("/proc/self/clear_refs").exists():
            memory = _memory_rows(args, shapes["embedding_large"])
            memory_table = "\n" + _memory_markdown(memory, MEMORY_REPEATS)
        else:
            print("no /proc/self/clear_refs (not Linux): no memory table", file=sys.stderr)
    step_table = ""
    if not args.no_steps:
        step_table = "\n" + _step_markdown(_step_rows(args), args)
    if args.sync_debug:
        torch.cuda.set_sync_debug_mode("default")
    elapsed = time.perf_counter() - start
    args.load_end = os.getloadavg()

    env = _environment(args)
    env.append(f"- benchmark wall time: {elapsed:.0f} s")
    table = _markdown(rows, env) + memory_table + step_table
    print(table)
    if args.out is None and (args.family or args.only):
        print("a partial run (--family / --only): nothing written", file=sys.stderr)
        return
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}", file=sys.stderr)
    if args.update_docs:
        DOCS.write_text(with_generated_section(DOCS.read_text(), table))
        print(f"updated {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main()
