r"""``SAM``, ``ASAM`` and ``AWP``: flatness-seeking updates as callbacks for automatic optimisation.

Each optimiser step becomes: gradient :math:`g` at :math:`w` (Lightning's own pass), move to
:math:`w + e(w, g)`, gradient at :math:`w + e` (a second forward and backward on the same
batch), move back to :math:`w`, and let the **base optimiser** step with the second gradient.
The perturbations :math:`e` are the pure functions of :mod:`lightning_losses.flatness`; this
module adds the Lightning side.

**Why a callback works in automatic optimisation.** Closure-based SAM (davda54/sam's
``step(closure)``) breaks under ``16-mixed``: Lightning runs the closure once itself and then
calls ``scaler.step(optimizer)`` without a closure (Lightning issues #16143, #17650). These
callbacks never touch the closure. Lightning's order for one optimiser step is

1. ``on_train_batch_start`` (every micro-batch): the callback keeps ``(batch, batch_idx)``;
2. the closure: ``training_step`` and ``backward`` (the loss multiplied by the GradScaler's scale
   under ``16-mixed``; DDP all-reduces in this backward on the micro-batch that steps);
3. ``16-mixed`` only: ``scaler.unscale_(optimizer)``, which records whether the gradients
   overflowed;
4. ``on_before_optimizer_step`` (callbacks in order, then the module): **all of SAM happens
   here** on true (unscaled) gradients:
   a. if a gradient is non-finite, :math:`e = 0` (decided on the device, without reading the
      gradients back to the host): the second pass then recomputes the gradient at :math:`w`,
      so the step is a plain base-optimiser step, as without SAM (under ``16-mixed`` the scaler
      has recorded the overflow and skips it);
   b. :math:`e` from the gradients, the weights saved and moved to :math:`w + e`;
   c. gradients cleared, then for every kept micro-batch ``strategy.training_step(batch,
      batch_idx)`` (so autocast and the DDP wrapper apply exactly as in Lightning's pass) and
      ``backward`` of ``loss / accumulate_grad_batches`` (times the scaler's current scale under
      ``16-mixed``); under DDP all but the last micro-batch run under ``no_sync``, so the
      second gradient is all-reduced once, in its last backward;
   d. the weights copied back (exactly :math:`w`, not :math:`w + e - e`);
   e. ``16-mixed``: the new gradients are divided by the scale; if any is non-finite, the
      scaler's overflow flag for this optimiser is set, so ``scaler.step`` skips the step and
      ``scaler.update`` lowers the scale, just as for an overflow in Lightning's own pass;
5. gradient clipping (Lightning's, after the hook): it clips the **second** gradient, the one
   the optimiser uses (davda54/sam likewise clips before the base step);
6. ``optimizer.step`` (or ``scaler.step``): the user's optimiser, so learning-rate schedulers,
   weight decay and momentum act on it and on :math:`w` unchanged.

Under ``32-true``, ``64-true`` and ``bf16-mixed`` there is no scaler: steps 3 and 4e vanish and
the second pass runs under the same autocast as the first.

**What the second pass does not do.** Batch-norm layers (every ``_NormBase`` in training mode
that tracks running statistics, ``SyncBatchNorm`` included) normalise with the second batch's
statistics, but their running statistics and ``num_batches_tracked`` are restored afterwards, so
they move once per batch (davda54/sam's ``disable_running_stats``, exactly). Calls to
``self.log`` / ``self.log_dict`` inside the second ``training_step`` are ignored, so logged
metrics come from the first pass (the loss at :math:`w`). The ``on_before_backward`` /
``on_after_backward`` hooks are not called again.

**The LossMixin pipeline.** For a module that uses :class:`~lightning_losses.LossMixin`, the
callback records the pipeline's sample weights over the accumulation window
(:meth:`~lightning_losses.LossMixin.record_loss_pipeline` at its first micro-batch) and runs the
second pass inside :meth:`~lightning_losses.LossMixin.replaying_loss_pipeline`: every
``compute_loss`` call of the second pass reuses, in order, the sample weights of the matching
call of the first pass, observers are not called and nothing is logged. ``GroupDRO`` thus steps
:math:`q` once per micro-batch and both passes weight with that :math:`q`, ``PLD`` draws once
(both passes train on the same candidates), ``InfoBatch`` and ``DROWeighting`` weight both
passes alike and score stores observe every batch once. Loss terms (``Distillation``) are
computed again at :math:`w + e`. **Other state that ``training_step`` changes changes twice**:
dropout draws new masks, and a criterion with per-sample state (``ALDRKLLoss``'s table) is
evaluated twice.

**Gradient accumulation.** :math:`e` is computed once per optimiser step, from the accumulated
gradient (the mean over the accumulation window, as Lightning forms it), and the second pass
re-runs every micro-batch of the window, so SAM with ``accumulate_grad_batches=k`` and batch
:math:`B` equals SAM with batch :math:`kB` (without batch norm). The callback keeps references
to the window's batches (already on the device) until the step.

**DDP.** Lightning all-reduces the first gradient (its own backward on the stepping micro-batch),
so :math:`e` comes from the global gradient and is the same on every rank; the second backward
all-reduces again. Two processes with batch :math:`B` thus train exactly like one process with
batch :math:`2B`. The reference SAM (and davda54/sam's README) instead skips the sync of the first
backward, which saves one all-reduce per step but gives every rank its own :math:`e`
(":math:`m`-sharpness" with :math:`m` the per-device batch); that variant is not offered here.

**State.** None: the callback keeps batches only between ``on_train_batch_start`` and the step
that uses them, and ``interval`` is counted on ``trainer.global_step``, which checkpoints restore.
A resumed run therefore continues exactly.

**Cost.** One more forward and backward per optimiser step (about twice the compute; with
``interval`` :math:`n`, a factor :math:`1 + 1/n`), a copy of the perturbed weights and one more
all-reduce under DDP. No host synchronisation: the finiteness check of the gradients and, under
``16-mixed``, the scale and the overflow flag stay on the device. An overflowed step (rare) still
runs the second pass, at :math:`w`, where it used to be skipped; it also draws new dropout masks
then.

**Not supported.** Manual optimisation (use :func:`~lightning_losses.flatness.sam_perturbation`
in your own loop), strategies that accumulate gradients themselves (DeepSpeed), optimisers that
evaluate the closure several times (LBFGS) and, under ``16-mixed``, fused optimisers that unscale
inside ``step`` (Lightning rejects gradient clipping with them for the same reason).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from .._checks import check_int, check_positive
from ..flatness import awp_perturbation, sam_perturbation
from ..mixins.loss_mixin import LossMixin, LossPipelineRecord


class WeightPerturbation(L.Callback):
    """The two-pass machinery shared by :class:`SAM`, :class:`ASAM` and :class:`AWP`.

    Subclasses say which parameters to move (:meth:`perturbs`) and how far
    (:meth:`perturbation`); see the module docstring for the hook sequence.

    Args:
        interval: perturb on every ``interval``-th optimiser step (``trainer.global_step``
            divisible by it); the other steps are plain base-optimiser steps. Composer's SAM uses
            ``interval=10`` to cut the cost to about 10 %.
    """

    def __init__(self, interval: int = 1) -> None:
        self.interval = check_int(interval, "interval", minimum=1)
        self._window: list[tuple[Any, int]] = []

    # -- what subclasses define ---------------------------------------------------------------

    def perturbs(self, name: str, param: nn.Parameter) -> bool:
        """Whether the parameter called ``name`` is moved (all of them by default)."""
        return True

    def perturbation(
        self, names: Sequence[str], weights: Sequence[Tensor], grads: Sequence[Tensor]
    ) -> list[Tensor]:
        """The perturbation of each chosen weight tensor, from its gradient at ``w``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement perturbation(); use SAM, ASAM or AWP"
        )

    # -- Lightning hooks ----------------------------------------------------------------------

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{name} needs automatic optimisation; {type(pl_module).__name__} sets "
                "`automatic_optimization = False`. In a manual loop, call "
                "`lightning_losses.flatness.sam_perturbation` (or `awp_perturbation`) yourself."
            )
        if trainer.strategy.handles_gradient_accumulation:
            raise ValueError(
                f"{name} cannot run with {type(trainer.strategy).__name__}, which accumulates "
                "gradients itself; use DDP or a single device."
            )
        # Distillation keeps the teacher's outputs (and the student's hooked features) of the
        # current micro-batch only, so a replay of earlier micro-batches would read the wrong ones.
        distill = [cb for cb in trainer.callbacks if type(cb).__name__ == "Distillation"]
        if distill and trainer.accumulate_grad_batches > 1:
            raise ValueError(
                f"{name} with Distillation needs `accumulate_grad_batches=1` (got "
                f"{trainer.accumulate_grad_batches}): the second pass re-runs every micro-batch of "
                "the window, but Distillation holds the teacher outputs of the last one only."
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window = []
        _take_record(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._window = []
        _take_record(pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The first micro-batch of a window that will be perturbed: record the LossMixin
        # pipeline's sample weights for the second pass (global_step is constant in the window).
        if (
            not self._window
            and isinstance(pl_module, LossMixin)
            and trainer.global_step % self.interval == 0
        ):
            pl_module.record_loss_pipeline()
        self._window.append((batch, batch_idx))

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        window, self._window = self._window, []
        record = _take_record(pl_module)  # cleared on every step, perturbed or not
        if not window or trainer.global_step % self.interval:
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and not _unscaled(scaler, optimizer):
            return  # the closure skipped backward (training_step returned None)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        chosen = [p for p in with_grad if self.perturbs(names.get(id(p), ""), p)]
        with torch.no_grad():
            # A non-finite gradient (an overflow) gives e = 0, decided on the device: the
            # second pass then recomputes the gradient at w, a plain step (skipped by the
            # GradScaler under 16-mixed). A branch on the check would read it back to the host.
            finite = _all_finite([p.grad for p in with_grad])
            shifts = self.perturbation(
                [names.get(id(p), "") for p in chosen], chosen, [p.grad for p in chosen]
            )
            saved = [p.detach().clone() for p in chosen]
            for p, shift in zip(chosen, shifts, strict=True):
                p.add_(torch.where(finite.to(shift.device), shift, 0.0))
        for p in params:
            p.grad = None
        try:
            self._second_pass(trainer, pl_module, window, scaler, record)
        finally:
            with torch.no_grad():
                for p, w in zip(chosen, saved, strict=True):
                    p.copy_(w)
        if scaler is not None:
            _unscale_second_pass(scaler, optimizer, [p.grad for p in params if p.grad is not None])

    # -- pieces -------------------------------------------------------------------------------

    def _second_pass(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        window: list[tuple[Any, int]],
        scaler: Any,
        record: LossPipelineRecord | None = None,
    ) -> None:
        """Gradient of the window's loss at the perturbed weights, as Lightning would form it.

        A :class:`~lightning_losses.LossMixin` module replays ``record``, the first pass's
        sample weights, so the pipeline's weighters and observers see the window once.
        """
        strategy = trainer.strategy
        replay = (
            pl_module.replaying_loss_pipeline(record)
            if isinstance(pl_module, LossMixin)
            else contextlib.nullcontext()
        )
        with (
            _frozen_running_stats(pl_module),
            _muted_logging(pl_module),
            replay,
            torch.enable_grad(),
        ):
            for i, (batch, batch_idx) in enumerate(window):
                last = i == len(window) - 1
                sync = (
                    strategy.block_backward_sync()
                    if isinstance(strategy, ParallelStrategy) and not last
                    else contextlib.nullcontext()
                )
                with sync:
                    loss = _loss_of(strategy.training_step(batch, batch_idx))
                    if loss is None:
                        continue
                    loss = loss / trainer.accumulate_grad_batches
                    (loss if scaler is None else scaler.scale(loss)).backward()


class SAM(WeightPerturbation):
    r"""Sharpness-aware minimisation (Foret et al., ICLR 2021); ASAM with ``adaptive=True``.

    Minimises :math:`\max_{\lVert e \rVert_2 \le \rho} L(w + e)` with one ascent step:
    :math:`\hat e = \rho\, g / \lVert g \rVert_2` at the batch gradient :math:`g`, then the base
    optimiser steps from :math:`w` with :math:`\nabla L(w + \hat e)`. For plain SGD,
    :math:`w' = w - \eta_{lr} \nabla L(w + \rho g / \lVert g \rVert)`.
    ``adaptive=True`` is ASAM (Kwon et al., ICML 2021): :math:`T_w = |w| + \eta` and
    :math:`\hat e = \rho\, T_w^2 g / \lVert T_w g \rVert_2`, with :math:`T_w` applied, as in
    SamsungLabs/ASAM, to parameters whose name contains ``"weight"`` (identity for the others).
    All parameters of the optimiser that have a gradient are perturbed. The hook sequence and
    its behaviour under each precision, accumulation and DDP are in the module docstring.

    **Cost.** About twice the compute of a plain step (one more forward and backward), one more
    copy of the weights, and under DDP one more all-reduce.

    **Defaults.**

    * ``rho`` :math:`\rho = 0.05`: the paper's and davda54/sam's default for SAM; the paper tunes
      it in {0.01, 0.02, 0.05, 0.1, 0.2, 0.5}. ASAM needs a larger radius (see :class:`ASAM`).
    * ``eta`` :math:`\eta = 0.01`: SamsungLabs/ASAM's default; it keeps :math:`T_w` away from 0
      so that zero weights can move. Ignored unless ``adaptive``.
    * ``interval = 1``: every step, as in the paper.

    Args:
        rho: neighbourhood radius :math:`\rho \ge 0`; ``0`` reproduces the base optimiser exactly.
        adaptive: ``True`` for ASAM.
        eta: ASAM's :math:`\eta \ge 0`.
        interval: perturb every ``interval``-th optimiser step (see :class:`WeightPerturbation`).

    Example:
        >>> trainer = L.Trainer(callbacks=[SAM(rho=0.05)])   # any LightningModule, any optimiser
    """

    def __init__(
        self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01, interval: int = 1
    ) -> None:
        super().__init__(interval)
        if not isinstance(adaptive, bool):
            raise TypeError(f"`adaptive` must be a bool; got {type(adaptive).__name__}.")
        self.rho = check_positive(rho, "rho", allow_zero=True)
        self.adaptive = adaptive
        self.eta = check_positive(eta, "eta", allow_zero=True)

    def perturbation(
        self, names: Sequence[str], weights: Sequence[Tensor], grads: Sequence[Tensor]
    ) -> list[Tensor]:
        adaptive = [self.adaptive and "weight" in n for n in names]
        return sam_perturbation(weights, grads, self.rho, adaptive=adaptive, eta=self.eta)


class ASAM(SAM):
    r"""Adaptive SAM (Kwon et al., ICML 2021): :class:`SAM` with ``adaptive=True``.

    :math:`\hat e = \rho\, T_w^2 g / \lVert T_w g \rVert_2` with :math:`T_w = |w| + \eta` on
    parameters named ``*weight*``: the neighbourhood scales with the weights, so the sharpness it
    measures is invariant to rescaling a layer.

    **Defaults.** ``rho`` :math:`\rho = 0.5`: SamsungLabs/ASAM's default and the paper's value for
    CIFAR-10 (1.0 for CIFAR-100); ``eta`` :math:`\eta = 0.01` as there.

    Args:
        rho: radius :math:`\rho \ge 0` of the adaptive ball.
        eta: :math:`\eta \ge 0`.
        interval: perturb every ``interval``-th optimiser step.
    """

    def __init__(self, rho: float = 0.5, eta: float = 0.01, interval: int = 1) -> None:
        super().__init__(rho=rho, adaptive=True, eta=eta, interval=interval)


class AWP(WeightPerturbation):
    r"""Adversarial weight perturbation (Wu, Xia, Wang, NeurIPS 2020), one ascent step.

    For every weight tensor :math:`w_l` (more than one dimension and ``"weight"`` in its name, as
    in csdongxian/AWP: biases and norm layers stay put),
    :math:`v_l = \gamma\, \lVert w_l \rVert_2\, g_l / \lVert g_l \rVert_2`; the base optimiser
    then steps from :math:`w` with :math:`\nabla L(w + v)`. For plain SGD,
    :math:`w' = w - \eta_{lr} \nabla L(w + v)`. The paper applies it to adversarial training:
    make ``training_step`` return the adversarial loss (for example, the PGD examples computed
    inside it) and the callback perturbs the weights on that loss.

    The reference restores :math:`w` after the optimiser step (``optimizer.step()`` then
    ``restore``); here :math:`w` is restored before it, so weight decay and momentum act on
    :math:`w` (with plain SGD the two orders agree).

    **Cost.** As :class:`SAM`: one more forward and backward per step.

    **Defaults.** ``gamma`` :math:`\gamma = 5 \cdot 10^{-3}`: csdongxian/AWP's value for
    TRADES-AWP; its AT-AWP script uses :math:`10^{-2}`. The reference also waits
    ``awp_warmup`` epochs (0 for AT, 10 for TRADES); start a second ``fit`` with the callback, or
    raise ``interval``, to emulate that.

    Args:
        gamma: relative size :math:`\gamma \ge 0`; ``0`` reproduces the base optimiser exactly.
        interval: perturb every ``interval``-th optimiser step.
    """

    def __init__(self, gamma: float = 5e-3, interval: int = 1) -> None:
        super().__init__(interval)
        self.gamma = check_positive(gamma, "gamma", allow_zero=True)

    def perturbs(self, name: str, param: nn.Parameter) -> bool:
        return param.ndim > 1 and "weight" in name

    def perturbation(
        self, names: Sequence[str], weights: Sequence[Tensor], grads: Sequence[Tensor]
    ) -> list[Tensor]:
        return awp_perturbation(weights, grads, self.gamma)


# -- helpers ----------------------------------------------------------------------------------


def _take_record(pl_module: Any) -> LossPipelineRecord | None:
    """Stop the LossMixin pipeline's recording and return what it recorded (if anything)."""
    return pl_module.take_loss_record() if isinstance(pl_module, LossMixin) else None


def _all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """Whether all entries of all tensors are finite: a boolean 0-d tensor, not read back."""
    device = tensors[0].device
    return torch.stack([torch.isfinite(t).all().to(device) for t in tensors]).all()


def _loss_of(output: Any) -> Tensor | None:
    """The loss in a ``training_step`` output (a tensor, a mapping with ``"loss"``, or None)."""
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "loss" in output:
        return output["loss"]
    raise TypeError(
        "`training_step` must return a loss tensor, a mapping with a 'loss' key, or None; got "
        f"{type(output).__name__}."
    )


def _unscaled(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether Lightning has unscaled this step's gradients (GradScaler's private state)."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        raise ValueError(
            f"{type(optimizer).__name__} unscales gradients inside `step` (a fused optimiser), "
            "so SAM-type callbacks cannot read true gradients under `16-mixed`; use the "
            "non-fused optimiser or `bf16-mixed`."
        )
    state = scaler._per_optimizer_states[id(optimizer)]
    return state["stage"].name == "UNSCALED"


def _unscale_second_pass(
    scaler: Any, optimizer: torch.optim.Optimizer, grads: Sequence[Tensor]
) -> None:
    """Divide the second gradients by the scale; on overflow make ``scaler.step`` skip.

    ``unscale_`` may run only once per step and Lightning has used it on the first gradients,
    so the division happens here and an overflow is written into the scaler's per-optimiser
    ``found_inf_per_device`` (private state of ``torch.amp.GradScaler``), which ``step`` reads
    to skip and ``update`` reads to lower the scale. Both stay on the device: the scale is the
    scaler's tensor (``get_scale()`` would read it back to the host), and the flag becomes the
    maximum of itself and this pass's overflow.
    """
    if not grads:
        return
    scale = scaler._get_scale_async()  # GradScaler's own tensor; None before its first use
    with torch.no_grad():
        if scale is None:
            inv_scale: Tensor | float = 1.0 / scaler.get_scale()
        else:  # as GradScaler.unscale_ forms it
            inv_scale = scale.double().reciprocal().float()
        for g in grads:
            g.mul_(inv_scale if isinstance(inv_scale, float) else inv_scale.to(g.device))
        overflow = (~_all_finite(grads)).float()
        for found_inf in scaler._per_optimizer_states[id(optimizer)][
            "found_inf_per_device"
        ].values():
            found_inf.copy_(torch.maximum(found_inf, overflow.to(found_inf.device)))


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of every norm layer that the block updates."""
    saved = [
        (m, {n: b.clone() for n, b in m.named_buffers(recurse=False)})
        for m in module.modules()
        if isinstance(m, _NormBase) and m.training and m.track_running_stats
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for n, b in buffers.items():
                    getattr(m, n).copy_(b)


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _muted_logging(module: nn.Module) -> Iterator[None]:
    """``module.log`` and ``module.log_dict`` do nothing inside the block."""
    module.log = _ignore
    module.log_dict = _ignore
    try:
        yield
    finally:
        del module.log
        del module.log_dict


__all__ = ["ASAM", "AWP", "SAM", "WeightPerturbation"]
