"""``LossMixin``: the loss pipeline of a ``LightningModule``.

.. code-block:: text

    outputs, target, batch
       -> task loss: per-sample values (N,)                      (self.criterion)
       -> terms added by callbacks: per-sample values (N,)       (LossTermProvider)
          weighted sum of terms -> per-sample total (N,)
          x sample weights from callbacks (product, in order)    (SampleWeighter)
          reduce (the criterion's "mean" or "sum")  -> scalar returned to Lightning
       observers get the detached per-sample terms              (LossObserver)

The mixin also fills the context a loss declares (see ``Loss.context``): ``epoch`` from the
trainer, ``index`` from the batch, ``skeleton``, ``distance`` and ``timesteps`` from the mapping
batch's entries of those names, and, once, class counts from the datamodule's
``class_counts``. The loss is logged as ``{stage}/loss``, and every term as ``{stage}/loss/{name}``
(epoch means) when there is more than one term or a callback weights the samples; a single
unweighted term equals ``{stage}/loss`` and is not logged twice.

**Replaying a pass.** A callback that re-runs ``training_step`` on the same micro-batches
(:class:`~lightning_losses.callbacks.sam.SAM`'s second pass at perturbed weights) must not let
the pipeline weight or observe those batches a second time: ``GroupDRO`` would step
:math:`q` twice, ``PLD`` would draw again, score stores would count the batch twice. It
therefore brackets the first pass with :meth:`LossMixin.record_loss_pipeline` (every training
``compute_loss`` call appends its product of sample weights to a
:class:`LossPipelineRecord`, a reference per call, nothing copied) and runs the second pass
inside ``with module.replaying_loss_pipeline(module.take_loss_record()):``. During the replay
each training call takes, in order, the weights the matching call of the first pass computed
(no ``SampleWeighter`` is called), calls no ``LossObserver`` and logs nothing, but still
computes the task loss and asks every ``LossTermProvider`` for its terms at the current
(perturbed) weights. The record covers whatever happened between ``record_loss_pipeline`` and
``take_loss_record``: SAM starts it at the first micro-batch of an accumulation window and takes
it at the optimiser step, so one record holds the calls of every micro-batch of the window.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._reduce import PerSample, reduce_loss
from ..losses._base import BATCH_CONTEXT, CALL_CONTEXT, ClassCountsLoss, Loss
from .protocols import LossObserver, LossTerm, LossTermProvider, SampleWeighter

CRITERION_ATTRS = ("criterion", "loss_fn")


def batch_indices(batch: Any, callbacks: Sequence[Any] = ()) -> Tensor:
    """Dataset indices of the samples in ``batch``.

    From the batch itself when it is a mapping with an ``"index"`` entry, else from the index
    channel of a callback that owns the training sampler (its ``batch_indices``).
    """
    if isinstance(batch, Mapping) and "index" in batch:
        return torch.as_tensor(batch["index"])
    for cb in callbacks:
        indices = getattr(cb, "batch_indices", None)
        if isinstance(indices, Tensor):
            return indices
    raise ValueError(
        "this loss needs the dataset index of each sample (context 'index'), but none is "
        "available: give the batch an 'index' entry (a mapping batch), or train with a callback "
        f"that owns the training sampler (InfoBatch); got a {type(batch).__name__} batch."
    )


def batch_context(batch: Any, token: str) -> Any:
    """The context ``token`` (``"skeleton"``, ``"timesteps"``, ...) from a mapping batch."""
    if isinstance(batch, Mapping) and token in batch:
        return batch[token]
    raise ValueError(
        f"this loss needs the context {token!r} ({CALL_CONTEXT[token]}), but the batch has no "
        f"{token!r} entry: return a mapping batch with it from the dataset or a transform, or "
        f"pass `batch={{..., {token!r}: ...}}` to compute_loss; got a {type(batch).__name__} "
        "batch."
    )


class LossPipelineRecord:
    """The sample weights of recorded training ``compute_loss`` calls, in call order.

    One entry per call: the number of samples and the product of the sample weights the
    pipeline's ``SampleWeighter`` callbacks returned (``None`` when no callback weighted). The
    tensors are the ones the pass used (detached), not copies. Filled between
    :meth:`LossMixin.record_loss_pipeline` and :meth:`LossMixin.take_loss_record`; read by
    :meth:`LossMixin.replaying_loss_pipeline`.
    """

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: list[tuple[int, Tensor | None]] = []

    def __len__(self) -> int:
        return len(self.calls)

    def append(self, n: int, sample_weight: Tensor | None) -> None:
        self.calls.append((n, None if sample_weight is None else sample_weight.detach()))


class _Replay:
    """Hands out the recorded weights one call at a time (see ``replaying_loss_pipeline``)."""

    def __init__(self, record: LossPipelineRecord) -> None:
        self.record = record
        self.used = 0

    def next(self, n: int) -> Tensor | None:
        if self.used >= len(self.record):
            raise RuntimeError(
                f"replaying the loss pipeline: compute_loss(stage='train') was called "
                f"{self.used + 1} times, but the recorded pass made only {len(self.record)} "
                "such call(s), so there are no sample weights to reuse. The replayed "
                "training_step must call compute_loss exactly as the first pass did (same "
                "micro-batches, same order)."
            )
        recorded_n, weight = self.record.calls[self.used]
        if recorded_n != n:
            raise RuntimeError(
                f"replaying the loss pipeline: call {self.used + 1} has {n} samples, but the "
                f"matching call of the recorded pass had {recorded_n}; the replay must re-run "
                "the same micro-batches in the same order."
            )
        self.used += 1
        return weight


class _TorchLossAdapter:
    """Per-sample values from a ``torch.nn`` loss: a copy with ``reduction="none"``, whose
    element losses are averaged over every non-batch dimension."""

    def __init__(self, loss: nn.Module) -> None:
        self.loss = copy.copy(loss)  # shares parameters and buffers; only `reduction` differs
        self.loss.reduction = "none"

    def __call__(self, outputs: Tensor, target: Tensor) -> PerSample:
        values = self.loss(outputs, target)
        return PerSample(values.reshape(values.shape[0], -1).mean(1) if values.ndim else values)


class LossMixin:
    """Mix into a ``LightningModule`` to run its loss through the library's pipeline.

    Keep the loss in ``self.criterion`` (or ``self.loss_fn``): a registered loss from
    :func:`~lightning_losses.build_loss`, a ``torch.nn`` loss with a ``reduction`` attribute, or
    any callable returning a scalar (the last cannot take per-sample weights or terms).

    Example:
        >>> class Model(LossMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = timm.create_model("resnet18", num_classes=10)
        ...         self.criterion = build_loss("focal", gamma=2.0)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return self.compute_loss(self.net(x), y, batch=batch)

    Set the class attribute ``progress_bar_loss = False`` to keep ``{stage}/loss`` out of the
    progress bar: Lightning turns every metric logged with ``prog_bar=True`` and
    ``on_step=True`` into a Python number after each training step (a host read, which stalls
    a GPU's queue once per step), whether or not a progress bar is shown.
    """

    #: Show the per-step training loss in the progress bar (costs Lightning's host read a step).
    progress_bar_loss: bool = True

    def compute_loss(
        self,
        outputs: Any,
        target: Any,
        *,
        batch: Any = None,
        stage: str = "train",
        criterion: Callable[..., Tensor] | None = None,
    ) -> Tensor:
        """Run the pipeline and return the scalar loss; logs every term under ``stage``."""
        criterion = criterion if criterion is not None else self._criterion()
        replay: _Replay | None = self.__dict__.get("_loss_replay")
        callbacks = self._pipeline_callbacks() if stage == "train" else []
        if (
            isinstance(criterion, Loss)
            and criterion.reduction != "none"
            and replay is None
            and self.__dict__.get("_loss_record") is None
            and not any(_plays(cb, role) for cb in callbacks for role in _ROLE_METHODS)
        ):
            # Nothing adds a term, weights or observes: the pipeline's result is the loss's own
            # reduction, which a fused kernel computes without the per-sample values.
            self._give_class_counts(criterion)
            loss = criterion(outputs, target, **self._call_context(criterion, batch))
            self._log_losses(stage, loss, {}, batch_size=_batch_size(target))
            return loss
        main = self._main_term(criterion, outputs, target, batch)
        if main is None:  # an opaque callable: only a scalar is available
            loss = criterion(outputs, target)
            if replay is None:
                self._log_losses(stage, loss, {}, batch_size=_batch_size(target))
            return loss

        terms: dict[str, LossTerm] = {self._term_name(criterion): LossTerm(main, 1.0)}
        for cb in callbacks:
            if _plays(cb, LossTermProvider):
                for name, term in cb.loss_terms(self, outputs, target, batch).items():
                    if name in terms:
                        raise ValueError(
                            f"{type(cb).__name__} adds a loss term named {name!r}, which another "
                            "term already uses; give it a different name."
                        )
                    terms[name] = term if isinstance(term, LossTerm) else LossTerm(term)

        values = {
            n: (t.values if isinstance(t.values, PerSample) else PerSample(t.values))
            for n, t in terms.items()
        }
        n = main.values.shape[0]
        for name, v in values.items():
            if v.values.shape != (n,):
                raise ValueError(
                    f"loss term {name!r} must have one value per sample, shape ({n},); got "
                    f"{tuple(v.values.shape)}."
                )
        total = sum(t.weight * values[name].values for name, t in terms.items())

        sample_weight: Tensor | None = None
        if replay is not None and stage == "train":
            sample_weight = replay.next(n)  # the first pass's weights; no weighter is called
        else:
            detached_total = total.detach()
            for cb in callbacks:
                if _plays(cb, SampleWeighter):
                    w = cb.sample_weights(self, batch, detached_total)
                    sample_weight = w if sample_weight is None else sample_weight * w
            record: LossPipelineRecord | None = self.__dict__.get("_loss_record")
            if record is not None and stage == "train":
                record.append(n, sample_weight)

        reduction = getattr(criterion, "reduction", "mean")
        reduction = "mean" if reduction == "none" else reduction
        loss = reduce_loss(PerSample(total, main.valid), reduction, sample_weight)

        if replay is not None:  # observed and logged in the recorded pass already
            return loss
        detached = {name: v.values.detach() for name, v in values.items()}
        for cb in callbacks:
            if _plays(cb, LossObserver):
                cb.observe_losses(self, batch, detached, sample_weight)
        # One unweighted term is the loss itself: logging it again would only repeat
        # {stage}/loss, at Lightning's cost of a log call per step.
        same_as_loss = len(values) == 1 and sample_weight is None and reduction == "mean"
        self._log_losses(stage, loss, {} if same_as_loss else values, batch_size=n)
        return loss

    # -- recording and replaying a pass -----------------------------------------------------

    def record_loss_pipeline(self) -> LossPipelineRecord:
        """Start recording the sample weights of every training ``compute_loss`` call.

        Replaces any record in progress (its calls are dropped). Recording costs one list
        entry per call: the weight tensor the pass used, kept by reference until
        :meth:`take_loss_record`. Calls at other stages than ``"train"`` are not recorded.
        """
        record = LossPipelineRecord()
        self.__dict__["_loss_record"] = record
        return record

    def take_loss_record(self) -> LossPipelineRecord | None:
        """Stop recording and return the record (``None`` when none was in progress)."""
        return self.__dict__.pop("_loss_record", None)

    @contextlib.contextmanager
    def replaying_loss_pipeline(self, record: LossPipelineRecord | None) -> Iterator[None]:
        """Re-run recorded training passes without touching the pipeline's callbacks' state.

        Inside the block the ``i``-th ``compute_loss(stage="train")`` call uses the sample
        weights of the ``i``-th recorded call (its ``SampleWeighter`` callbacks are not called,
        so their state and random draws stay as the recorded pass left them), calls no
        ``LossObserver`` and logs nothing; the task loss and the ``LossTermProvider`` terms are
        computed afresh, at the module's current weights. ``None`` replays an empty record.

        Raises:
            RuntimeError: a call beyond the recorded ones, a call whose batch size differs from
                the recorded call's, or, on leaving the block normally, fewer calls than were
                recorded (the replay did not re-run what was recorded).
        """
        if self.__dict__.get("_loss_replay") is not None:
            raise RuntimeError("the loss pipeline is already being replayed; replays do not nest.")
        replay = _Replay(record if record is not None else LossPipelineRecord())
        self.__dict__["_loss_replay"] = replay
        try:
            yield
        finally:
            del self.__dict__["_loss_replay"]
        if replay.used != len(replay.record):
            raise RuntimeError(
                f"replaying the loss pipeline: the recorded pass made {len(replay.record)} "
                f"training compute_loss call(s), the replay only {replay.used}; the replay must "
                "re-run the same micro-batches in the same order."
            )

    # -- pieces of the pipeline -------------------------------------------------------------

    def _criterion(self) -> Callable[..., Tensor]:
        for attr in CRITERION_ATTRS:
            crit = getattr(self, attr, None)
            if crit is not None:
                return crit
        raise AttributeError(
            f"{type(self).__name__} uses LossMixin but has no loss: set `self.criterion` (or "
            "`self.loss_fn`) in __init__, or pass `criterion=` to compute_loss."
        )

    @staticmethod
    def _term_name(criterion: Any) -> str:
        return getattr(criterion, "registered_name", "") or "task"

    def _main_term(self, criterion: Any, outputs: Any, target: Any, batch: Any) -> PerSample | None:
        if isinstance(criterion, Loss):
            self._give_class_counts(criterion)
            return criterion.sample_losses(outputs, target, **self._call_context(criterion, batch))
        if isinstance(criterion, nn.Module) and hasattr(criterion, "reduction"):
            adapters = self.__dict__.setdefault("_torch_loss_adapters", {})
            key = id(criterion)
            if key not in adapters or adapters[key][0] is not criterion:
                adapters[key] = (criterion, _TorchLossAdapter(criterion))
            return adapters[key][1](outputs, target)
        return None

    def _call_context(self, loss: Loss, batch: Any) -> dict[str, Any]:
        context: dict[str, Any] = {}
        for token in loss.context:
            if token == "epoch":
                context["epoch"] = self._trainer.current_epoch if self._attached() else 0
            elif token == "index":
                # the index channel of a sampler owner describes training batches only
                training = self._attached() and self._trainer.training
                context["index"] = batch_indices(
                    batch, self._pipeline_callbacks() if training else ()
                )
            elif token in BATCH_CONTEXT:
                context[token] = batch_context(batch, token)
        return context

    def _give_class_counts(self, root: nn.Module) -> None:
        """Hand the datamodule's class counts to every loss that needs them and has none."""
        for module in root.modules():
            if isinstance(module, ClassCountsLoss) and not module.has_class_counts:
                module.set_class_counts(self._class_counts(module))

    def _class_counts(self, loss: nn.Module) -> Tensor:
        sources = []
        if self._attached() and getattr(self._trainer, "datamodule", None) is not None:
            sources.append(self._trainer.datamodule)
        sources.append(self)
        for source in sources:
            counts = getattr(source, "class_counts", None)
            if counts is not None:
                return torch.as_tensor(counts)
        raise ValueError(
            f"{type(loss).__name__} needs class counts, but none were found: give the "
            "datamodule (or the module) a `class_counts` attribute with one count per class of "
            "the training set, or pass `class_counts=` to the loss."
        )

    def _pipeline_callbacks(self) -> list[Any]:
        return list(self._trainer.callbacks) if self._attached() else []

    def _attached(self) -> bool:
        return getattr(self, "_trainer", None) is not None

    def _log_losses(
        self, stage: str, loss: Tensor, terms: Mapping[str, PerSample], batch_size: int
    ) -> None:
        if not self._attached():
            return
        on_step = stage == "train"
        sync = stage != "train"
        self.log(
            f"{stage}/loss",
            loss.detach(),
            prog_bar=self.progress_bar_loss,
            on_step=on_step,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=sync,
        )
        for name, term in terms.items():
            self.log(
                f"{stage}/loss/{name}",
                _mean(term),
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=sync,
            )


#: The method that makes a callback play each pipeline role (see ``protocols``).
_ROLE_METHODS = {
    LossTermProvider: "loss_terms",
    SampleWeighter: "sample_weights",
    LossObserver: "observe_losses",
}


@functools.cache
def _type_plays(cls: type, role: type) -> bool:
    return callable(getattr(cls, _ROLE_METHODS[role], None))


def _plays(callback: Any, role: type) -> bool:
    """``isinstance(callback, role)`` for a pipeline protocol, answered once per class.

    A runtime ``isinstance`` against a ``Protocol`` inspects the object's attributes on every
    call; the pipeline asks for each callback and each role at every training step.
    """
    return _type_plays(type(callback), role)


def _mean(term: PerSample) -> Tensor:
    return reduce_loss(PerSample(term.values.detach(), term.valid), "mean")


def _batch_size(target: Any) -> int | None:
    return int(target.shape[0]) if isinstance(target, Tensor) and target.ndim else None
