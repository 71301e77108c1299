r"""``LossLandscape``: curvature and landscape diagnostics of a model while (or after) it trains.

The algorithms live in the pure core, :mod:`lightning_losses.diagnostics` (Hessian-vector
products, Lanczos, Hutch++, stochastic Lanczos quadrature, filter-normalised slices,
ε-sharpness, per-class losses) and its figures in :mod:`lightning_losses.diagnostics.plots`.
This module adds the Lightning side: when to run, a fixed seeded probe set, the model's mode,
isolation from training (weights, buffers, RNG states, autocast, ``inference_mode``), a cost
estimate printed first, and logging of scalars, figures and raw arrays to whatever logger is
attached. See METHODS §11 (11.1, 11.2, 11.3, 11.5, 11.6, 11.8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from .._checks import check_choice, check_int, check_positive
from .._progress import ProgressBar, trainer_progress_bar
from ..diagnostics import (
    IGNORE,
    NORMALIZATIONS,
    LossFunction,
    ParamFilter,
    class_batches,
    default_labels,
    epsilon_sharpness,
    hutchpp,
    lanczos,
    line_slice,
    plane_slice,
    plots,
    random_direction,
    spectral_density,
)
from ..diagnostics.hvp import default_batch_size

__all__ = ["MODEL_MODES", "LossLandscape", "module_loss"]

MODEL_MODES = ("norm_eval", "eval", "train")
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "data")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")
CRITERION_ATTRS = ("criterion", "loss_fn")
_NORM_LAYERS = (nn.modules.batchnorm._NormBase,)  # BatchNorm*, SyncBatchNorm, InstanceNorm*
_DROPOUT_LAYERS = (nn.modules.dropout._DropoutNd,)  # Dropout*, AlphaDropout, ...
# Rough cost of one probe-batch pass relative to a forward pass without a graph, so that the
# progress bar's time left holds across parts (small CNNs and MLPs on CPU: a gradient 3-6x, an
# HVP's share 8-16x).
_PASS_COST = {"loss": 1, "gradient": 3, "hvp": 10}


# ----------------------------------------------------------------------------- the probe loss


def _module_criterion(pl_module: nn.Module) -> Callable[..., Tensor]:
    for attr in CRITERION_ATTRS:
        crit = getattr(pl_module, attr, None)
        if crit is not None and callable(crit):
            return crit
    raise ValueError(
        f"LossLandscape needs the probe loss: {type(pl_module).__name__} has no `criterion` "
        "(nor `loss_fn`) attribute, so pass `loss_fn=` (a callable (pl_module, batch) -> the "
        "scalar mean loss of the batch)."
    )


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        x_key = next((k for k in INPUT_KEYS if k in batch), None)
        y_key = next((k for k in TARGET_KEYS if k in batch), None)
        if x_key is None or y_key is None:
            raise ValueError(
                f"the default probe loss needs a dict batch with an input key {INPUT_KEYS} and a "
                f"target key {TARGET_KEYS}; got keys {list(batch)}. Pass `loss_fn=`."
            )
        return batch[x_key], batch[y_key]
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "the default probe loss needs an (input, target, ...) batch or a dict with input and "
        f"target keys; got {type(batch).__name__}. Pass `loss_fn=`."
    )


def module_loss(pl_module: nn.Module, batch: Any) -> Tensor:
    """The default probe loss: ``criterion(pl_module(x), y)``, averaged to a scalar.

    ``criterion`` is the module's ``criterion`` attribute (else ``loss_fn``), the convention of
    :class:`~lightning_losses.LossMixin`; ``(x, y)`` are the first two entries of a sequence
    batch, or the entries under ``x``/``input``/``inputs``/``image``/``images``/``data`` and
    ``y``/``target``/``targets``/``label``/``labels`` of a dict batch. A non-scalar result
    (``reduction="none"``) is averaged. This is the plain task loss: the module's
    ``compute_loss`` is not used, because it logs (not allowed in ``on_train_end``) and applies
    the sample weights and extra terms of training-time callbacks, which would make the probe
    loss depend on the state of those callbacks. A criterion that needs call-time context
    (``epoch``, ``index``) needs ``loss_fn=``.
    """
    criterion = _module_criterion(pl_module)
    x, y = _split_batch(batch)
    loss = criterion(pl_module(x), y)
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"the module's criterion must return a tensor; got {type(loss).__name__}. Pass "
            "`loss_fn=`."
        )
    return loss.mean() if loss.ndim > 0 else loss


# ----------------------------------------------------------------------------- isolation


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _set_mode(model: nn.Module, mode: str) -> None:
    if mode == "eval":
        model.eval()
    elif mode == "norm_eval":
        for m in model.modules():
            if isinstance(m, _NORM_LAYERS + _DROPOUT_LAYERS):
                m.training = False


@contextlib.contextmanager
def _isolated(model: nn.Module, mode: str) -> Iterator[None]:
    """Run the body in float32-without-autocast, grad-enabled, outside ``inference_mode``, with
    ``mode`` applied; restore weights, buffers, module modes and every RNG state on exit."""
    with torch.inference_mode(False):
        rng = _rng_state()
        modes = [(m, m.training) for m in model.modules()]
        tensors = [t for t in model.state_dict(keep_vars=True).values() if isinstance(t, Tensor)]
        saved = [t.detach().clone() for t in tensors]
        device_type = next(model.parameters()).device.type
        try:
            _set_mode(model, mode)
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.enable_grad())
                for dt in {"cpu", device_type}:
                    if dt in ("cpu", "cuda", "xpu", "mps"):
                        stack.enter_context(torch.autocast(device_type=dt, enabled=False))
                yield
        finally:
            with torch.no_grad():
                for t, copy in zip(tensors, saved, strict=True):
                    t.copy_(copy)
            for m, training in modes:
                m.training = training
            _set_rng_state(rng)


# ----------------------------------------------------------------------------- cost and progress


@dataclasses.dataclass(frozen=True)
class _Phase:
    """One part of the analysis: at most ``calls`` HVPs, gradients or loss evaluations
    (``kind``), each one pass over ``batches`` probe batches."""

    label: str
    kind: str
    calls: int
    batches: int

    @property
    def forwards(self) -> int:
        return self.calls * self.batches

    @property
    def work(self) -> int:
        return self.forwards * _PASS_COST[self.kind]


class _Progress:
    """Advances the analysis's bar at every probe-batch pass, weighted by the current part's
    cost; at the end of a part, the total drops the budget that the part did not use."""

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None
        self.phases: Mapping[Any, _Phase] = {}
        self.weight = 0

    def start(self, bar: ProgressBar, phases: Mapping[Any, _Phase]) -> None:
        self.bar, self.phases = bar, phases

    @contextlib.contextmanager
    def phase(self, key: Any) -> Iterator[None]:
        bar, part = self.bar, self.phases.get(key)
        if bar is None or part is None:
            yield
            return
        bar.set_description(f"LossLandscape: {part.label}")
        self.weight = _PASS_COST[part.kind]
        start = bar.completed
        try:
            yield
        finally:
            bar.total += (bar.completed - start) - part.work

    def counting(self, loss_fn: Callable[[Any, Any], Tensor]) -> Callable[[Any, Any], Tensor]:
        """``loss_fn`` advancing the bar after each call (one probe batch's forward pass)."""

        def counted(module: Any, batch: Any) -> Tensor:
            loss = loss_fn(module, batch)
            if self.bar is not None:
                self.bar.advance(self.weight)
            return loss

        return counted


# ----------------------------------------------------------------------------- the callback


class LossLandscape(L.Callback):
    r"""Hessian spectrum, trace, density, loss slices and sharpness on a fixed probe set.

    **When.** With no arguments it runs **once, at the end of training** (``on_train_end``:
    after the last epoch, before Lightning's teardown moves the model to the CPU).
    ``every_n_epochs=N`` also runs it at the end of every N-th training epoch
    (``on_train_epoch_end``, after that epoch's validation); the end-of-training run is skipped
    when the last epoch already ran it. ``run_at_end=False`` keeps only the periodic runs.

    **What** (each part can be switched off with ``None``; defaults are cheap, see Cost):

    * top-``k`` Hessian eigenvalues by Lanczos (``top_k=3``, ``max_iter=100``, ``tol=1e-3``:
      PyHessian's budget and tolerance; Lanczos usually stops far earlier) — METHODS 11.1;
    * the trace by Hutch++ with ``trace_matvecs=60`` HVPs (METHODS says 100; 60 keeps the run
      cheap and Hutch++'s error falls like 1/m, with a standard error logged) — 11.2;
    * the eigenvalue density by SLQ, ``density_steps=50`` Lanczos steps, ``density_runs=1``
      (PyHessian: 100 and 1; 50 nodes resolve the outliers and the bulk at half the cost), and
      its negative mass (saddle indicator) — 11.5;
    * a 1-D slice ``L(θ + αd)`` on ``line_points=21`` points over ``[-1, 1]`` and a 2-D slice
      ``L(θ + αδ + βη)`` on an ``11 × 11`` grid over ``[-1, 1]²``, with filter-normalised
      directions (``normalization="filter"``, ``ignore="biasbn"``: Li et al., NeurIPS 2018, the
      range of their figures). The reference uses 51 × 51 points over the whole training set;
      11 × 11 = 121 probe-set evaluations show the basin's shape at 1/20 of that grid — 11.3;
    * Keskar's ε-sharpness, ``epsilon=1e-3`` with ``epsilon_steps=10`` ascent steps;
    * **edge of stability** (11.8): λ_max is logged with ``2/lr`` (first parameter group of the
      first optimizer). For ``torch.optim.SGD`` the stability threshold of gradient descent on
      a quadratic is also logged, with ``sharpness_ratio = λ_max / threshold``: ``2/η``
      without momentum, ``(2+2β)/(η(1−τ))`` with heavy-ball momentum β and dampening τ, and
      ``(2+2β)/(η(1+2β))`` with Nesterov momentum (Cohen et al., "Gradient Descent on Neural
      Networks Typically Occurs at the Edge of Stability", ICLR 2021; derived from the
      recurrences of ``torch.optim.SGD``). For Adam and other adaptive or preconditioned
      optimizers ``2/lr`` is **not** the right threshold (they reach the edge of stability of
      the *preconditioned* Hessian, Cohen et al. 2022), so no threshold or ratio is logged
      and a warning says so. Weight decay adds ``wd`` to every eigenvalue of the training
      objective; λ_max here is that of the probe loss alone. λ_max is not warm-started from the
      previous run (each run is seeded alike, so runs are comparable);
    * with ``per_class=True`` (or a list of classes) the top eigenvalue and the trace of each
      class's loss (METHODS 11.6, Rangwani et al., NeurIPS 2022). A requested class that has
      no sample in the probe set raises a ``ValueError`` naming it.

    **Probe set.** ``num_probe_samples=256`` samples drawn without replacement, with a
    ``torch.Generator`` seeded by ``seed``, from the dataset of the training dataloader (or of
    ``probe_data`` when it is a ``DataLoader``), collated with that loader's ``collate_fn`` in
    batches of ``probe_batch_size=64`` (fewer samples if the dataset is smaller). It is built
    once, at the first run, passed through the module's ``on_before_batch_transfer``,
    ``transfer_batch_to_device`` and ``on_after_batch_transfer`` hooks, and kept on the
    module's device (:attr:`probe_batches`), so every run of the callback sees the same data.
    Random augmentations of the dataset are thus drawn once (and the global RNG is restored).
    ``probe_data`` may also be a list of ready batches, used as they are. 256 samples make each
    HVP cost about as much as 2–3 training steps of batch 256.

    **Loss.** ``loss_fn(pl_module, batch) -> scalar`` (the batch mean), or by default
    :func:`module_loss`: ``pl_module.criterion(pl_module(x), y)`` for an ``(x, y, ...)`` or
    dict batch. The probe loss is the size-weighted mean of the batch losses.

    **Model state.** With ``model_mode="norm_eval"`` (default) the normalisation layers
    (BatchNorm, SyncBatchNorm, InstanceNorm) use their running statistics and dropout is off,
    so the loss is a deterministic function of the weights (dropout would make every HVP see a
    different network); other modules keep their training mode. ``"eval"`` puts the whole
    model in eval mode (PyHessian's choice), ``"train"`` changes nothing (BatchNorm then uses
    batch statistics; its running statistics are restored after every evaluation anyway). The
    analysis runs outside ``torch.inference_mode``, with gradients enabled and autocast
    disabled: under ``*-mixed`` precision the weights are float32 and so is the analysis;
    under ``*-true`` precision it runs in the weights' dtype. Afterwards the weights and
    buffers are copied back in a ``finally`` (bit for bit), module modes are restored, and the
    torch (CPU and, when initialised, CUDA), NumPy and Python ``random`` RNG states are put
    back: a run with this callback ends with exactly the weights of a run without it (tested).
    ``.grad`` fields and optimizer states are never touched. Memory: one extra copy of the
    weights and buffers, plus the Lanczos vectors (``max_iter`` parameter-sized vectors).

    **Cost.** Before starting, rank zero prints the number of HVPs and forward passes the run
    will take at most (``verbose=False`` silences it). With B probe batches and n parameters:
    Lanczos ≤ ``min(max_iter, n)`` HVPs, Hutch++ ``trace_matvecs`` HVPs, SLQ
    ``density_runs · min(density_steps, n)`` HVPs, each HVP one forward and two backward passes
    per probe batch; the slices ``line_points + plane_points²`` loss evaluations; ε-sharpness
    ``epsilon_steps + 1`` gradient evaluations; plus one loss evaluation. Each evaluation is B
    forward passes. Defaults: at most 210 HVPs and 210·B + 154·B forward passes (B = 4 for 256
    samples), i.e. a few hundred training steps' worth of compute (:meth:`estimate_cost`).

    **Progress.** While it runs, a progress bar names the current part (Lanczos, trace,
    density, the slices, ε-sharpness, each class) and shows the elapsed time and an estimate of
    the time left. It is drawn like the trainer's own bar (rich for Lightning's
    ``RichProgressBar``, else tqdm) and only when the trainer shows one on this process
    (``enable_progress_bar=True``, rank zero), whatever ``verbose`` says. The bar advances at
    every probe-batch pass, weighted by its rough relative cost (a forward pass without a graph
    1, a gradient 3, an HVP's share 10), so that the time left holds across parts of different
    cost; a part that stops early (Lanczos at ``tol``) takes its unused budget off the total.

    **Logging** (keys ``{prefix}/...``, ``prefix="landscape"``): ``probe_loss``,
    ``lambda_max``, ``eigenvalue_2..k``, ``trace``, ``trace_std_error``,
    ``density_negative_mass``, ``epsilon_sharpness``, ``epsilon_sharpness_relative``,
    ``two_over_lr``, ``stability_threshold`` and ``sharpness_ratio`` (SGD only),
    ``class_{c}/lambda_max``, ``class_{c}/trace``, ``hvps``, ``forward_passes``, ``seconds``.
    In periodic runs they go through ``pl_module.log`` (``on_epoch=True``, so a
    ``ModelCheckpoint`` can monitor them); at the end of training ``self.log`` is not allowed,
    so they go to ``logger.log_metrics(..., step=global_step)`` of every attached logger.
    Figures (density, line, plane, sharpness history, per-class): ``add_figure`` on a
    TensorBoard logger (or any logger whose ``experiment`` has ``add_figure``), ``log_image``
    (a ``wandb.Image``) on a Weights & Biases logger, and PNG files in
    ``<log_dir>/landscape/`` for a ``CSVLogger`` — or when no attached logger takes figures,
    so that they are never lost. The raw arrays (eigenvalues, residuals, trace samples, SLQ
    nodes and weights, the density curve, the slices, per-class values, the λ_max history and
    the scalars) are always saved as ``<dir>/landscape/landscape_epoch{E}_step{S}.npz``, where
    ``<dir>`` is the first logger's ``log_dir`` (or ``save_dir``), else
    ``trainer.default_root_dir``.

    **DDP.** The analysis runs on global rank zero only (the probe set is drawn from the
    whole dataset, not from rank zero's shard, so it is the same as in a single process); the
    other ranks wait at a barrier, then receive the scalars by broadcast so that every rank
    logs the same values. Only the rank-zero module is read; being a plain module call, it
    bypasses DDP's gradient hooks. A long analysis must fit in the process group's timeout
    (``DDPStrategy(timeout=...)``); an exception on rank zero is raised there and leaves the
    other ranks waiting until that timeout.

    **State.** :meth:`state_dict` holds the λ_max history and the step of the last run, so a
    resumed run continues the history; the probe set is rebuilt from ``seed``.

    Args:
        every_n_epochs: run at the end of every N-th epoch (N >= 1), or ``None``.
        run_at_end: run once at the end of training.
        num_probe_samples: probe-set size (>= 1).
        probe_batch_size: probe batch size (>= 1).
        probe_data: ``None`` (the training dataloader), a ``DataLoader`` to draw from, or a
            sequence of ready batches.
        loss_fn: ``(pl_module, batch) -> scalar`` mean loss; default :func:`module_loss`.
        param_filter: the parameters to analyse (``None``: all trainable ones; a name, a
            module prefix, a list of them or a predicate), for per-layer views.
        top_k: number of top eigenvalues (>= 1, <= ``max_iter``), or ``None``.
        max_iter, tol: Lanczos budget and tolerance.
        trace_matvecs: Hutch++ budget (>= 4), or ``None``.
        density_steps, density_runs: SLQ steps per run (>= 1; ``None`` disables) and runs.
        line_points, line_distance: 1-D slice grid size (>= 2; ``None`` disables) and half-width.
        plane_points, plane_distance: 2-D slice grid size per axis (>= 2; ``None`` disables)
            and half-width.
        normalization: direction normalisation, one of ``"filter"``, ``"layer"``, ``"none"``.
        ignore: ``"biasbn"`` (zero direction on biases and norm weights) or ``None``.
        epsilon, epsilon_steps: ε-sharpness box (>= 0; ``None`` disables) and ascent steps.
        per_class: ``False``, ``True`` (every class of the probe set) or a list of classes.
        labels: ``batch -> Tensor (N,)`` class labels for ``per_class`` (default: the second
            entry of a sequence batch, or ``target``/``label``/``y`` of a dict batch).
        model_mode: ``"norm_eval"``, ``"eval"`` or ``"train"`` (see Model state).
        seed: seed of the probe set, the random vectors and the directions.
        prefix: prefix of the logged names and of the output folder.
        verbose: print the cost estimate and a one-line summary (rank zero).

    Example:
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[LossLandscape(every_n_epochs=5)])
        >>> trainer.fit(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        every_n_epochs: int | None = None,
        run_at_end: bool = True,
        num_probe_samples: int = 256,
        probe_batch_size: int = 64,
        probe_data: DataLoader[Any] | Sequence[Any] | None = None,
        loss_fn: Callable[[Any, Any], Tensor] | None = None,
        param_filter: ParamFilter = None,
        top_k: int | None = 3,
        max_iter: int = 100,
        tol: float = 1e-3,
        trace_matvecs: int | None = 60,
        density_steps: int | None = 50,
        density_runs: int = 1,
        line_points: int | None = 21,
        line_distance: float = 1.0,
        plane_points: int | None = 11,
        plane_distance: float = 1.0,
        normalization: str = "filter",
        ignore: str | None = "biasbn",
        epsilon: float | None = 1e-3,
        epsilon_steps: int = 10,
        per_class: bool | Sequence[int] = False,
        labels: Callable[[Any], Tensor] | None = None,
        model_mode: str = "norm_eval",
        seed: int = 0,
        prefix: str = "landscape",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.every_n_epochs = (
            None if every_n_epochs is None else check_int(every_n_epochs, "every_n_epochs", 1)
        )
        if not isinstance(run_at_end, bool):
            raise TypeError(f"`run_at_end` must be a bool; got {run_at_end!r}.")
        if self.every_n_epochs is None and not run_at_end:
            raise ValueError(
                "LossLandscape would never run: give `every_n_epochs` (>= 1) or keep "
                "`run_at_end=True`."
            )
        self.run_at_end = run_at_end
        self.num_probe_samples = check_int(num_probe_samples, "num_probe_samples", 1)
        self.probe_batch_size = check_int(probe_batch_size, "probe_batch_size", 1)
        if probe_data is not None and not isinstance(probe_data, DataLoader | Sequence):
            raise TypeError(
                "`probe_data` must be None, a DataLoader or a sequence of batches; got "
                f"{type(probe_data).__name__}."
            )
        if isinstance(probe_data, Sequence) and len(probe_data) == 0:
            raise ValueError("`probe_data` must hold at least one batch; got an empty sequence.")
        self.probe_data = probe_data
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"`loss_fn` must be callable (pl_module, batch); got {loss_fn!r}.")
        self.loss_fn = loss_fn
        self.param_filter = param_filter
        self.top_k = None if top_k is None else check_int(top_k, "top_k", 1)
        self.max_iter = check_int(max_iter, "max_iter", 1)
        if self.top_k is not None and self.max_iter < self.top_k:
            raise ValueError(f"`max_iter` must be >= top_k (= {self.top_k}); got {max_iter}.")
        self.tol = check_positive(tol, "tol", allow_zero=True)
        self.trace_matvecs = (
            None if trace_matvecs is None else check_int(trace_matvecs, "trace_matvecs", 4)
        )
        self.density_steps = (
            None if density_steps is None else check_int(density_steps, "density_steps", 1)
        )
        self.density_runs = check_int(density_runs, "density_runs", 1)
        self.line_points = None if line_points is None else check_int(line_points, "line_points", 2)
        self.line_distance = check_positive(line_distance, "line_distance")
        self.plane_points = (
            None if plane_points is None else check_int(plane_points, "plane_points", 2)
        )
        self.plane_distance = check_positive(plane_distance, "plane_distance")
        self.normalization = check_choice(normalization, NORMALIZATIONS, "normalization")
        if ignore not in IGNORE:
            raise ValueError(f"`ignore` must be one of {IGNORE}; got {ignore!r}.")
        self.ignore = ignore
        self.epsilon = (
            None if epsilon is None else check_positive(epsilon, "epsilon", allow_zero=True)
        )
        self.epsilon_steps = check_int(epsilon_steps, "epsilon_steps", 1)
        if isinstance(per_class, bool):
            self.per_class: bool | tuple[int, ...] = per_class
        elif isinstance(per_class, Sequence) and not isinstance(per_class, str) and per_class:
            self.per_class = tuple(check_int(c, "per_class", 0) for c in per_class)
        else:
            raise ValueError(
                "`per_class` must be a bool or a non-empty sequence of class indices; got "
                f"{per_class!r}."
            )
        if self.per_class and self.top_k is None and self.trace_matvecs is None:
            raise ValueError(
                "`per_class` computes each class's top eigenvalue and trace, but both `top_k` "
                "and `trace_matvecs` are None."
            )
        if labels is not None and not callable(labels):
            raise TypeError(f"`labels` must be callable (batch -> Tensor); got {labels!r}.")
        self.labels = labels or default_labels
        self.model_mode = check_choice(model_mode, MODEL_MODES, "model_mode")
        self.seed = check_int(seed, "seed", 0)
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"`prefix` must be a non-empty string; got {prefix!r}.")
        self.prefix = prefix
        self.verbose = bool(verbose)
        self.history: list[dict[str, float]] = []
        self.last_step: int | None = None
        self._probe: list[Any] | None = None
        self._warned_threshold = False

    # -- state ---------------------------------------------------------------------------------
    @property
    def probe_batches(self) -> list[Any] | None:
        """The probe batches (on the module's device), or ``None`` before the first run."""
        return self._probe

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.last_step = state_dict.get("last_step")

    # -- hooks -----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.loss_fn is None:
            _module_criterion(pl_module)  # fail before training, not after it
            if type(pl_module).forward in (L.LightningModule.forward, nn.Module.forward):
                raise TypeError(
                    f"LossLandscape's default probe loss calls the module, but "
                    f"{type(pl_module).__name__} defines no `forward` (its training_step calls "
                    "its layers directly). Define `forward`, or pass `loss_fn=` (a callable "
                    "(pl_module, batch) -> the batch's mean loss)."
                )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        metrics = self._run_on_rank_zero(trainer, pl_module)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.run_at_end or self.last_step == trainer.global_step:
            return
        metrics = self._run_on_rank_zero(trainer, pl_module)
        if trainer.is_global_zero:  # self.log is not allowed in on_train_end
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                logger.save()

    def _run_on_rank_zero(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if trainer.is_global_zero:
            metrics = self.analyze(trainer, pl_module)
        trainer.strategy.barrier("LossLandscape")
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self.last_step = trainer.global_step
        return metrics

    # -- the analysis ------------------------------------------------------------------------------
    def analyze(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Run every enabled diagnostic now, log figures and arrays, return the scalars.

        The hooks call this on rank zero; it can also be called directly (e.g. after
        ``trainer.fit``), from any context, ``inference_mode`` included. The model comes back
        exactly as it was (weights, buffers, modes) and the RNG states are unchanged.
        """
        start = time.perf_counter()
        step, epoch = trainer.global_step, trainer.current_epoch
        progress = _Progress()
        with _isolated(pl_module, self.model_mode):
            probe = self._probe_set(trainer, pl_module)
            loss_fn = progress.counting(self.loss_fn or module_loss)
            # every HVP rebuilds each batch's graph (retain_graph=False): the printed cost is
            # then exact for fixed budgets and the memory one batch's graph (see Cost)
            options = dict(param_filter=self.param_filter, retain_graph=False)
            fn = LossFunction(pl_module, loss_fn, probe, **options)
            per_class = {
                c: class_batches(probe, c, labels=self.labels) for c in self._classes(probe)
            }
            class_fns = {
                c: LossFunction(pl_module, loss_fn, b, **options) for c, b in per_class.items()
            }
            phases = self._phases(fn.numel, len(probe), {c: len(b) for c, b in per_class.items()})
            hvps = sum(p.calls for p in phases.values() if p.kind == "hvp")
            forwards = sum(p.forwards for p in phases.values())
            if self.verbose:
                num_samples = sum(default_batch_size(b) for b in probe)
                print(
                    f"LossLandscape (epoch {epoch}, step {step}): probe set of "
                    f"{num_samples} samples in {len(probe)} batches, {fn.numel:,} "
                    f"parameters; at most {hvps:,} HVPs and {forwards:,} forward passes (HVPs' "
                    "own included; one HVP is one forward and two backward passes per probe "
                    "batch).",
                    flush=True,
                )
            total = sum(p.work for p in phases.values())
            with trainer_progress_bar(trainer, total, "LossLandscape") as bar:
                progress.start(bar, phases)
                scalars, arrays = self._compute(trainer, fn, class_fns, progress)
        hvp_count = fn.hvp_count + sum(f.hvp_count for f in class_fns.values())
        forward_count = fn.forward_count + sum(f.forward_count for f in class_fns.values())
        scalars["hvps"] = float(hvp_count)
        scalars["forward_passes"] = float(forward_count)
        scalars["seconds"] = time.perf_counter() - start
        if "lambda_max" in scalars:
            self.history.append(
                {
                    "step": float(step),
                    "epoch": float(epoch),
                    "lambda_max": scalars["lambda_max"],
                    "threshold": scalars.get("stability_threshold", math.nan),
                }
            )
        self._write(trainer, scalars, arrays, step, epoch)
        if self.verbose:
            lam = f", λ_max = {scalars['lambda_max']:.4g}" if "lambda_max" in scalars else ""
            print(
                f"LossLandscape: done in {scalars['seconds']:.1f} s ({hvp_count} HVPs, "
                f"{forward_count} forward passes){lam}.",
                flush=True,
            )
        return {f"{self.prefix}/{k}": v for k, v in scalars.items()}

    def estimate_cost(
        self, numel: int, num_batches: int, class_batches: Sequence[int] = ()
    ) -> tuple[int, int]:
        """Upper bounds ``(HVPs, forward passes)`` of one run (see Cost in the class docstring)
        for ``numel`` analysed parameters, ``num_batches`` probe batches and, per analysed
        class, the number of probe batches holding that class; forward passes include those
        inside the HVPs."""
        phases = self._phases(numel, num_batches, dict(enumerate(class_batches)))
        hvps = sum(p.calls for p in phases.values() if p.kind == "hvp")
        return hvps, sum(p.forwards for p in phases.values())

    def _phases(
        self, numel: int, num_batches: int, class_batches: Mapping[int, int]
    ) -> dict[Any, _Phase]:
        """The parts of one run in the order :meth:`_compute` runs them, each with its budget."""
        eig = min(self.max_iter, numel)
        tr = 0
        if self.trace_matvecs is not None:
            s = self.trace_matvecs // 3
            tr = s + min(numel, s) + (self.trace_matvecs - 2 * s)
        b = num_batches
        phases: dict[Any, _Phase] = {"probe_loss": _Phase("probe loss", "loss", 1, b)}
        if self.top_k is not None:
            phases["lanczos"] = _Phase(f"top-{self.top_k} eigenvalues (Lanczos)", "hvp", eig, b)
        if self.trace_matvecs is not None:
            phases["trace"] = _Phase("trace (Hutch++)", "hvp", tr, b)
        if self.density_steps is not None:
            steps = self.density_runs * min(self.density_steps, numel)
            phases["density"] = _Phase("spectral density (SLQ)", "hvp", steps, b)
        if self.line_points is not None:
            phases["line"] = _Phase("1-D slice", "loss", self.line_points, b)
        if self.plane_points is not None:
            phases["plane"] = _Phase("2-D slice", "loss", self.plane_points**2, b)
        if self.epsilon is not None:
            phases["epsilon"] = _Phase("ε-sharpness", "gradient", self.epsilon_steps + 1, b)
        if self.top_k is not None:
            for c, cb in class_batches.items():
                phases["lanczos", c] = _Phase(f"class {c}, λ_max (Lanczos)", "hvp", eig, cb)
        if self.trace_matvecs is not None:
            for c, cb in class_batches.items():
                phases["trace", c] = _Phase(f"class {c}, trace (Hutch++)", "hvp", tr, cb)
        return phases

    def _compute(
        self,
        trainer: L.Trainer,
        fn: LossFunction,
        class_fns: Mapping[int, LossFunction],
        progress: _Progress,
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        with progress.phase("probe_loss"):
            scalars: dict[str, float] = {"probe_loss": fn.loss()}
        arrays: dict[str, np.ndarray] = {}
        model = fn.model
        if self.top_k is not None:
            with progress.phase("lanczos"):
                eig = lanczos(
                    fn,
                    self.top_k,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    seed=self.seed,
                    return_eigenvectors=False,
                )
            values = eig.eigenvalues.tolist()
            scalars["lambda_max"] = values[0]
            for i, v in enumerate(values[1:], start=2):
                scalars[f"eigenvalue_{i}"] = v
            arrays["eigenvalues"] = eig.eigenvalues.numpy()
            arrays["eigenvalue_residuals"] = eig.residuals.numpy()
            scalars.update(self._stability(trainer, values[0]))
        if self.trace_matvecs is not None:
            with progress.phase("trace"):
                tr = hutchpp(fn, self.trace_matvecs, seed=self.seed)
            scalars["trace"] = tr.estimate
            scalars["trace_std_error"] = tr.std_error
            arrays["trace_samples"] = tr.samples.numpy()
        if self.density_steps is not None:
            with progress.phase("density"):
                dens = spectral_density(fn, self.density_runs, self.density_steps, seed=self.seed)
            grid = dens.grid()
            scalars["density_negative_mass"] = dens.negative_mass
            arrays["density_nodes"] = dens.nodes.numpy()
            arrays["density_weights"] = dens.weights.numpy()
            arrays["density_grid"] = grid.numpy()
            arrays["density"] = dens.density(grid).numpy()
        directions = dict(
            normalization=self.normalization, ignore=self.ignore, param_filter=self.param_filter
        )
        if self.line_points is not None:
            d = random_direction(model, seed=self.seed, **directions)
            with progress.phase("line"):
                line = line_slice(fn, d, distance=self.line_distance, num_points=self.line_points)
            arrays["line_alphas"] = line.alphas.numpy()
            arrays["line_losses"] = line.losses.numpy()
        if self.plane_points is not None:
            gen = torch.Generator().manual_seed(self.seed + 1)
            d1 = random_direction(model, seed=gen, **directions)
            d2 = random_direction(model, seed=gen, **directions)
            with progress.phase("plane"):
                plane = plane_slice(
                    fn, d1, d2, distance=self.plane_distance, num_points=self.plane_points
                )
            arrays["plane_alphas"] = plane.alphas.numpy()
            arrays["plane_betas"] = plane.betas.numpy()
            arrays["plane_losses"] = plane.losses.numpy()
        if self.epsilon is not None:
            with progress.phase("epsilon"):
                sharp = epsilon_sharpness(fn, self.epsilon, steps=self.epsilon_steps)
            scalars["epsilon_sharpness"] = sharp.value
            scalars["epsilon_sharpness_relative"] = sharp.relative
        if class_fns:
            ids = sorted(class_fns)
            arrays["class_ids"] = np.asarray(ids, dtype=np.int64)
            if self.top_k is not None:
                lam = []
                for c in ids:
                    with progress.phase(("lanczos", c)):
                        top = lanczos(
                            class_fns[c],
                            1,
                            max_iter=self.max_iter,
                            tol=self.tol,
                            seed=self.seed,
                            return_eigenvectors=False,
                        )
                    lam.append(float(top.eigenvalues[0]))
                arrays["class_lambda_max"] = np.asarray(lam)
                scalars.update({f"class_{c}/lambda_max": v for c, v in zip(ids, lam, strict=True)})
            if self.trace_matvecs is not None:
                trs = []
                for c in ids:
                    with progress.phase(("trace", c)):
                        trs.append(
                            hutchpp(class_fns[c], self.trace_matvecs, seed=self.seed).estimate
                        )
                arrays["class_trace"] = np.asarray(trs)
                scalars.update({f"class_{c}/trace": v for c, v in zip(ids, trs, strict=True)})
        return scalars, arrays

    def _stability(self, trainer: L.Trainer, lambda_max: float) -> dict[str, float]:
        optimizers = getattr(trainer, "optimizers", None) or []
        if not optimizers or not optimizers[0].param_groups:
            return {}
        opt = optimizers[0]
        group = opt.param_groups[0]
        lr = float(group.get("lr", math.nan))
        if not lr > 0:
            return {}
        out = {"two_over_lr": 2.0 / lr}
        if isinstance(opt, torch.optim.SGD):
            beta = float(group.get("momentum", 0.0) or 0.0)
            if beta == 0:
                threshold = 2.0 / lr
            elif group.get("nesterov", False):
                threshold = (2 + 2 * beta) / (lr * (1 + 2 * beta))
            else:
                threshold = (2 + 2 * beta) / (lr * (1 - float(group.get("dampening", 0.0))))
            out["stability_threshold"] = threshold
            out["sharpness_ratio"] = lambda_max / threshold
        elif not self._warned_threshold:
            self._warned_threshold = True
            rank_zero_warn(
                f"LossLandscape: the optimizer is {type(opt).__name__}, for which λ_max against "
                "2/lr is not the right stability threshold (adaptive methods reach the edge of "
                "stability of the preconditioned Hessian; Cohen et al. 2022). `two_over_lr` is "
                "logged for reference only; no `stability_threshold` or `sharpness_ratio`."
            )
        return out

    # -- probe set ---------------------------------------------------------------------------------
    def _probe_set(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Any]:
        if self._probe is not None:
            return self._probe
        source = self.probe_data
        if source is None:
            source = trainer.train_dataloader
            if source is None:
                raise ValueError(
                    "LossLandscape found no training dataloader to draw the probe set from; "
                    "pass `probe_data=` (a DataLoader or a list of batches)."
                )
            if not isinstance(source, DataLoader):
                raise ValueError(
                    "LossLandscape draws the probe set from a single training DataLoader; the "
                    f"trainer has {type(source).__name__}. Pass `probe_data=`."
                )
        raw = self._sample(source) if isinstance(source, DataLoader) else list(source)
        device = pl_module.device
        batches = []
        for batch in raw:
            batch = pl_module.on_before_batch_transfer(batch, 0)
            batch = pl_module.transfer_batch_to_device(batch, device, 0)
            batch = pl_module.on_after_batch_transfer(batch, 0)
            batches.append(apply_to_collection(batch, Tensor, lambda t: t.detach().clone()))
        self._probe = batches
        return batches

    def _sample(self, loader: DataLoader[Any]) -> list[Any]:
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                "LossLandscape draws the probe set by index, but the dataloader's dataset "
                f"({type(dataset).__name__}) is iterable or has no length; pass `probe_data=` "
                "as a list of batches."
            )
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("LossLandscape cannot draw a probe set from an empty dataset.")
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(n, generator=gen)[: self.num_probe_samples].tolist()
        collate = loader.collate_fn if loader.batch_sampler is not None else default_collate
        size = self.probe_batch_size
        return [collate([dataset[i] for i in idx[j : j + size]]) for j in range(0, len(idx), size)]

    def _classes(self, probe: list[Any]) -> list[int]:
        if not self.per_class:
            return []
        present: set[int] = set()
        for batch in probe:
            present.update(int(c) for c in torch.unique(self.labels(batch)).tolist())
        if self.per_class is True:
            return sorted(present)
        absent = [c for c in self.per_class if c not in present]
        if absent:
            raise ValueError(
                f"`per_class` asks for class(es) {absent}, which have no sample in the probe set "
                f"({self.num_probe_samples} samples drawn with seed {self.seed}); classes "
                f"present: {sorted(present)}."
            )
        return sorted(set(self.per_class))

    # -- output ----------------------------------------------------------------------------------
    def _output_dir(self, trainer: L.Trainer) -> Path:
        for logger in trainer.loggers:
            for attr in ("log_dir", "save_dir"):
                where = getattr(logger, attr, None)
                if isinstance(where, str | Path):
                    return Path(where) / self.prefix
        return Path(trainer.default_root_dir) / self.prefix

    def _figures(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        figs: dict[str, Any] = {}
        if "density" in arrays:
            figs["density"] = plots.plot_spectral_density(
                arrays["density_grid"], arrays["density"], eigenvalues=arrays.get("eigenvalues")
            )
        if "line_losses" in arrays:
            figs["line"] = plots.plot_line_slice(arrays["line_alphas"], arrays["line_losses"])
        if "plane_losses" in arrays:
            figs["plane"] = plots.plot_plane_slice(
                arrays["plane_alphas"], arrays["plane_betas"], arrays["plane_losses"]
            )
        if self.history:
            figs["sharpness"] = plots.plot_sharpness_history(
                [h["step"] for h in self.history],
                [h["lambda_max"] for h in self.history],
                threshold=[h["threshold"] for h in self.history],
                threshold_label="stability threshold (SGD)",
            )
        if "class_ids" in arrays and "class_lambda_max" in arrays:
            figs["per_class"] = plots.plot_per_class(
                arrays["class_ids"], arrays["class_lambda_max"], arrays.get("class_trace")
            )
        return figs

    def _write(
        self,
        trainer: L.Trainer,
        scalars: Mapping[str, float],
        arrays: dict[str, np.ndarray],
        step: int,
        epoch: int,
    ) -> None:
        out = self._output_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"epoch{epoch}_step{step}"
        figs = self._figures(arrays)
        pngs = not trainer.loggers
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                pngs = True
            elif isinstance(logger, WandbLogger):
                for name, fig in figs.items():
                    logger.log_image(key=f"{self.prefix}/{name}", images=[_rgb(fig)], step=step)
            elif isinstance(logger, TensorBoardLogger) or hasattr(logger.experiment, "add_figure"):
                for name, fig in figs.items():
                    logger.experiment.add_figure(f"{self.prefix}/{name}", fig, global_step=step)
            else:
                pngs = True  # a logger that takes no figures: keep them as files
        if pngs:
            for name, fig in figs.items():
                fig.savefig(out / f"{name}_{stem}.png", format="png")
        history = {
            f"history_{key}": np.asarray([h[key] for h in self.history], dtype=np.float64)
            for key in ("step", "epoch", "lambda_max", "threshold")
        }
        flat = {f"scalar_{k.replace('/', '_')}": np.asarray(v) for k, v in scalars.items()}
        np.savez(out / f"{self.prefix}_{stem}.npz", **arrays, **history, **flat)


def _rgb(fig: Any) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
