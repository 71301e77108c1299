"""Shared test helpers: ready-to-call registered losses and inputs that fit their contract."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.distributed as dist
from hypothesis import settings

from lightning_losses import build_loss, loss_info
from lightning_losses.losses import ClassCountsLoss

# Keep the suite fast and deterministic on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Under CI, hypothesis draws the same examples every run (a failure reproduces from the log);
# locally it explores new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


#: Required constructor arguments that the suite's inputs determine: a loss that owns a class
#: weight matrix (ArcFace, CosFace) needs its sizes, and the suite's embeddings have ``k``
#: columns and class indices in ``[0, k)``.
SIZE_ARGUMENTS = ("num_classes", "embedding_dim")


def required_args(name: str, num_classes: int = 5) -> dict:
    """Values for the constructor arguments of ``name`` that have no default."""
    required = [k for k, v in loss_info(name).defaults().items() if v is inspect.Parameter.empty]
    return {k: num_classes for k in required if k in SIZE_ARGUMENTS}


def ready_loss(name: str, num_classes: int = 5, **kwargs) -> torch.nn.Module:
    """``build_loss(name, **kwargs)`` with class counts given to every loss that needs them.

    A loss with required sizes gets them (:func:`required_args`) and is built under a fixed
    seed, so two builds own the same initial parameters (the suite compares separate builds).
    """
    sizes = required_args(name, num_classes)
    if sizes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loss = build_loss(name, **{**sizes, **kwargs})
    else:
        loss = build_loss(name, **kwargs)
    counts = torch.arange(num_classes, 0, -1, dtype=torch.float32) * 10  # long-tailed
    for module in loss.modules():
        if isinstance(module, ClassCountsLoss) and not module.has_class_counts:
            module.set_class_counts(counts)
    return loss


def loss_context(
    name: str, epoch: int = 0, *, n: int = 8, like: torch.Tensor | None = None
) -> dict:
    """The call-time context a loss declares (what LossMixin would pass) for a batch of ``n``;
    ``like`` is the input, whose layout the dense context entries follow. Each entry depends on
    the sample's position only, so slicing the batch slices the context."""
    declared = loss_info(name).context
    ctx = {}
    if "epoch" in declared:
        ctx["epoch"] = epoch
    if "index" in declared:
        ctx["index"] = torch.arange(n)
    if "timesteps" in declared:
        ctx["timesteps"] = (torch.arange(n) * 137 + 11) % 1000
    if like is not None and ("skeleton" in declared or "distance" in declared):
        spatial = like.shape[2:]
        i = torch.arange(n, dtype=torch.float64).reshape(n, *[1] * len(spatial))
        j = torch.arange(max(1, spatial.numel()), dtype=torch.float64).reshape(1, *spatial)
        wave = torch.sin(1.3 * i + 0.7 * j)
        if "skeleton" in declared:
            ctx["skeleton"] = (wave > 0.3).to(torch.long)
        if "distance" in declared:  # one map per channel: the logits' layout
            ch = torch.arange(like.shape[1], dtype=torch.float64)
            ch = ch.reshape(1, -1, *[1] * len(spatial))
            ctx["distance"] = (3.0 * torch.sin(wave.unsqueeze(1) + 0.9 * ch)).to(like.dtype)
    return ctx


def loss_inputs(
    name: str,
    n: int = 8,
    k: int = 5,
    *,
    dense: tuple[int, ...] = (),
    dtype: torch.dtype = torch.float32,
    scale: float = 3.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and a valid target for the loss's declared target kind."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, *dense, generator=g, dtype=torch.float64) * scale).to(dtype)
    kind = loss_info(name).target
    if kind == "multilabel":
        target = torch.randint(0, 2, (n, k, *dense), generator=g).to(dtype)
    elif kind == "index":
        target = torch.randint(0, k, (n, *dense), generator=g)
    elif kind == "labels":  # embeddings (n, k) and identity labels; each identity twice
        target = torch.arange(n) % max(1, (n + 1) // 2)
    elif kind == "regression":  # a prediction and a real-valued target of its shape
        target = (torch.randn(n, k, *dense, generator=g, dtype=torch.float64)).to(dtype)
    else:  # pragma: no cover - a new kind must teach the test helpers how to build it
        raise AssertionError(f"unknown target kind {kind!r} for {name}")
    return logits, target


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.ddp`` tests spawn gloo processes: skipped where gloo is missing."""
    if dist.is_available() and dist.is_gloo_available():
        return
    skip = pytest.mark.skip(reason="needs the gloo backend (torch.distributed)")
    for item in items:
        if "ddp" in item.keywords:
            item.add_marker(skip)


#: Skip reasons that mean a declared test dependency is missing, not a property of the machine.
MISSING_DEPENDENCY = ("could not import", "is not installed", "needs the gloo backend")


def _fail_missing_dependency_under_ci(report):
    if os.environ.get("CI") and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(marker in reason for marker in MISSING_DEPENDENCY):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI for a missing dependency: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a test skipped for a missing declared dependency (an ``importorskip`` of a
    package in the dev group, or gloo) fails: a green run cannot hide an uninstalled reference."""
    return _fail_missing_dependency_under_ci((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """The same for a module-level ``importorskip``, which skips the whole file at collection."""
    return _fail_missing_dependency_under_ci((yield))


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _no_leftover_global_seed(monkeypatch):
    """Each test starts without Lightning's ``PL_GLOBAL_SEED``.

    ``seed_everything`` (every CLI run with ``seed_everything:``) sets it in ``os.environ`` for
    good, and spawned DDP workers re-seed from it: a test after a CLI test would then start its
    workers from another RNG state than when run alone.
    """
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
