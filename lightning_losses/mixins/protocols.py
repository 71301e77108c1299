"""How callbacks plug into :class:`~lightning_losses.LossMixin`'s loss pipeline.

Lightning callbacks cannot change the value ``training_step`` returns, so the mixin owns the
pipeline and asks the trainer's callbacks, in the order they were given to the ``Trainer``, for
three things. A callback implements any subset of these methods; nothing else is required.

``loss_terms(pl_module, outputs, target, batch) -> Mapping[str, LossTerm]``
    Extra per-sample loss terms (a distillation term, a regulariser), each with a weight.
``sample_weights(pl_module, batch, losses) -> Tensor``
    A per-sample weight vector ``(N,)`` that multiplies the per-sample total (InfoBatch's
    ``1/(1-r)``, DRO best responses). ``losses`` is the detached per-sample total.
``observe_losses(pl_module, batch, losses, sample_weight) -> None``
    Sees the detached per-sample terms after the step (score stores, group statistics).

Sample weights from several callbacks multiply, in the callbacks' order; the product is what the
reduction applies. Only the training stage consults callbacks.

A pass that re-runs ``training_step`` on batches already trained on (SAM's second pass, inside
:meth:`~lightning_losses.LossMixin.replaying_loss_pipeline`) asks only ``loss_terms`` again:
it reuses the recorded sample weights and observes nothing, so ``sample_weights`` and
``observe_losses`` run once per micro-batch and may update state freely. ``loss_terms`` may run
more than once per micro-batch and should not change state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor

from .._reduce import PerSample


class LossTerm(NamedTuple):
    """One extra term: per-sample values (N,) (or a :class:`PerSample`) and its weight."""

    values: Tensor | PerSample
    weight: float = 1.0


@runtime_checkable
class LossTermProvider(Protocol):
    def loss_terms(
        self, pl_module: Any, outputs: Any, target: Any, batch: Any
    ) -> Mapping[str, LossTerm]: ...


@runtime_checkable
class SampleWeighter(Protocol):
    def sample_weights(self, pl_module: Any, batch: Any, losses: Tensor) -> Tensor: ...


@runtime_checkable
class LossObserver(Protocol):
    def observe_losses(
        self,
        pl_module: Any,
        batch: Any,
        losses: Mapping[str, Tensor],
        sample_weight: Tensor | None,
    ) -> None: ...
