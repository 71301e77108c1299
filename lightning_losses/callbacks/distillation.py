r"""``Distillation``: a frozen teacher adds a distillation term to any ``LossMixin`` module.

.. code-block:: python

    trainer = L.Trainer(callbacks=[Distillation(teacher="resnet50", num_classes=10,
                                                weights="teacher_r50.safetensors")])

The teacher runs once per training batch in ``on_train_batch_start``, under ``torch.no_grad()``,
on the batch's input; in ``training_step`` the module's ``compute_loss(outputs, target,
batch=batch)`` asks this callback for its term (``loss_terms``), which it computes with a
registered distillation loss (:mod:`lightning_losses.losses.distillation`) and hands back with
its weight. The term is logged as ``train/loss/<name>`` (``train/loss/distill`` by default).

Teacher loading lives in :mod:`._teachers`, feature hooks and adapters in :mod:`._features`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_positive
from ..losses.distillation import (
    AttentionTransferLoss,
    DistillationLoss,
    DualHeadKDLoss,
    MultiTeacherKDLoss,
    RegressionDistillationLoss,
    RKDLoss,
    average_teacher_probs,
)
from ..mixins import LossMixin
from ..mixins.protocols import LossTerm
from ..registry import build_loss, list_losses, loss_info
from ._batch_ids import batch_ids
from ._features import FeatureTap, TimmIntermediates, make_adapter
from ._teachers import TeacherSource, num_classes_of, parse_teacher
from ._train_loader import first_train_batch

#: Attribute of the student that holds the adapters: ``ModuleDict`` of term name -> ``ModuleDict``.
ADAPTERS_ATTR = "distill_adapters"
#: Feature losses that compare features of different shapes themselves (no adapter needed).
_SHAPE_FREE_LOSSES = (AttentionTransferLoss, RKDLoss)
_OUTPUT_KEYS = ("teacher_logits", "teacher_scores", "teacher_outputs", "teacher_features")


class Distillation(L.Callback):
    r"""Knowledge distillation from a frozen teacher, a term of the LossMixin pipeline.

    With only ``teacher`` given it adds KD on the logits (Hinton et al., 2015):
    :math:`T^2\,\mathrm{KL}(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T))` per sample,
    :math:`T = 4`, weight 1, next to the module's own criterion (mdistiller mixes CE 0.1 / KD 0.9:
    ``weight=0.9`` with a criterion built with its own weight, or any mix you like).

    **Teachers.** ``teacher`` is one of

    * an ``nn.Module`` (used as is: it is frozen and put in eval mode in place);
    * a timm model name, built with ``timm.create_model(name, pretrained=False,
      num_classes=num_classes, **timm_kwargs)``; ``weights=`` loads a local weights file into it
      (no download ever happens). Without ``num_classes`` the count is read from the module or
      datamodule (``num_classes`` attribute or hyper-parameter) at setup;
    * a path to a Lightning checkpoint (``.ckpt``, its ``state_dict`` is read) or to a plain
      state-dict file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``). A file holds no
      architecture, so ``architecture=`` must give it: a timm name (built as above) or an
      ``nn.Module`` that the weights are loaded into. The prefix of the teacher's keys in the
      file (``"model."``, ``"net."``, ...) is found by matching the architecture's keys, or given
      as ``state_dict_prefix``; loading is strict;
    * a list of the above: several teachers, whose **probabilities are averaged** at the loss's
      temperature (weights ``teacher_weights``, uniform by default;
      :func:`~lightning_losses.losses.distillation.average_teacher_probs`). The loss receives
      :math:`T \log \bar p` as teacher logits, so that its softmax at :math:`T` is exactly
      :math:`\bar p`. With ``loss="multi_teacher_kd"`` the loss gets the stack ``(M, N, K)``
      instead (same student gradient); ``regression_distillation`` gets the mean output, or the
      stack when it has ``teacher_weights``. ``architecture`` may then be a list too.

    Files are read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
    unpickling is refused with a message that says how to re-save it as a plain state dict.

    **Where the teacher lives.** In this callback (:attr:`teachers`), not in the student: it is
    not a submodule of the ``LightningModule``, so it is in neither the student's checkpoint nor
    its optimizer, DDP does not wrap it and ``module.train()`` does not reach it (it is put back
    in eval mode at every batch start all the same). In ``setup`` it moves to the strategy's
    device and in ``on_fit_start`` to the student's parameter dtype (``bf16-true``: bf16); it
    runs inside the precision plugin's forward context, so under ``*-mixed`` it is autocast like
    the student. ``compile=True`` (or a dict of ``torch.compile`` options) compiles it.

    **Feature distillation.** ``student_layers`` and ``teacher_layers`` name layers as in
    ``named_modules()`` (student names relative to the ``LightningModule``, e.g.
    ``"net.layer2"``), paired in order; use a feature loss (``fitnet``, ``attention_transfer``,
    ``rkd``). Forward hooks, registered in ``setup`` of ``fit`` and removed at the end of fit,
    read the teacher's features during its no-grad forward and the student's during its own
    forward in ``training_step`` (the last call of each layer in the step). The term is the sum
    over the pairs. ``teacher_layers`` may instead give **feature indices** (ints, negative from
    the end) of a timm teacher: its features then come from ``forward_intermediates(x,
    indices=..., intermediates_only=True, stop_early=True)`` (the levels of its ``feature_info``,
    e.g. resnet ``0: act1 ... 4: layer4``, ViT blocks), so no hook is needed and the teacher stops
    after the deepest level asked for, without its head. **Adapters** (a 1x1 ``Conv2d`` for
    ``(N, C, H, W)`` maps, a ``Linear`` on the last dimension for ``(N, D)`` / ``(N, L, D)``
    features) map the student's shape to the teacher's. With ``adapters=None`` a pair gets one
    when the shapes differ and the loss needs equal shapes (not ``attention_transfer`` or
    ``rkd``); ``True``: every pair; ``False``: none.

    Adapters must exist before the optimizers are built, so they are created in the callback's
    ``setup`` hook: in ``Trainer.fit``, ``setup`` runs after the strategy environment is set up
    and **before** checkpoint weights are restored and before ``strategy.setup`` moves the model,
    wraps it in DDP and calls ``configure_optimizers``. There a dry run takes one batch from the
    training dataloader (with the torch, numpy and ``random`` RNG states saved and restored, so
    training sees the same shuffles), runs ``pl_module(input)`` in eval mode and the teacher
    under ``no_grad`` on the strategy's device, reads the shapes and registers the adapters on the
    student as ``pl_module.distill_adapters[name]`` (an ``nn.ModuleDict``). So they are in
    ``self.parameters()`` when ``configure_optimizers`` runs, are trained, are synchronised by
    DDP, are saved in the student's checkpoint and restored exactly on resume. Adapters already
    present under that name are kept. Loading such a checkpoint outside ``fit`` needs
    ``load_state_dict(..., strict=False)`` (or the adapters created first). Under ``ddp_spawn``
    the main process's copy of the module receives the trained weights without the adapters
    (Lightning loads them with ``strict=False``); the checkpoints hold them.

    **Cache.** ``cache=True`` keeps the teacher's outputs (or features) per sample index, on the
    CPU, and skips the teacher forward for a batch whose samples are all cached: with fixed,
    deterministic inputs (no random augmentation) the teacher runs only in the first epoch
    (:attr:`teacher_forwards` counts the batches it ran on). A cache in host memory reads the
    batch's indices on the host at every step (a device synchronisation when they come from
    the batch) and copies the teacher's outputs to the host on a miss; without ``cache`` a step
    reads nothing back from the device. Indices come from
    ``batch[index_key]`` (a str key of a mapping batch or an int position of a tuple batch), or,
    when the batch has none, from the index channel of a sampler-owning callback listed
    **before** this one (InfoBatch). Memory: the number of training samples times the size of
    one sample's teacher tensors, e.g. 50 000 samples x 100 float32 logits = 20 MB, but a
    ``(256, 8, 8)`` float32 feature map is 64 KiB per sample, 3.3 GB for 50 000. Under DDP each
    rank caches the samples it sees. The cache is not checkpointed (it is refilled after a
    resume).

    **Cost.** One teacher forward per training batch (none for a fully cached batch), no
    backward through the teacher; feature mode adds one dry-run forward of student and teacher at
    setup. Teacher memory: its parameters and the activations of one no-grad forward.

    **Errors.** A teacher and a student with different class counts (checked at every step, the
    message shows both), an unknown timm name (with close matches), an unsafe or unknown file, a
    temperature <= 0 (from the loss), an unknown layer name (with close matches), and a module
    without ``LossMixin`` (a ``TypeError`` at ``setup`` of fit).

    Args:
        teacher: see above.
        loss: a registered distillation loss name (``list_losses("distillation")``) or a
            :class:`~lightning_losses.losses.distillation.DistillationLoss` instance; ``"kd"``.
        weight: the term's weight in the pipeline's weighted sum, >= 0; 1.
        loss_kwargs: options of ``build_loss(loss, ...)``; ``{"temperature": 4.0}`` is KD's own
            default.
        name: the term's name (``train/loss/<name>``); ``"distill"``. Two callbacks need two
            names.
        architecture: the architecture of a checkpoint-path teacher (timm name or module).
        weights: a local weights file for a timm-name or module teacher.
        state_dict_prefix: prefix of the teacher's keys in the file; found automatically if None.
        num_classes: classes of a timm teacher.
        timm_kwargs: more ``timm.create_model`` options (e.g. ``{"in_chans": 1}``).
        input_key: where the batch keeps the input: a str key of a mapping batch or an int
            position of a tuple/list batch; 0.
        student_layers, teacher_layers: feature layers (a name or a list of names); the
            teacher's may be timm feature indices (an int or a list of ints).
        adapters: ``None`` (as needed), ``True`` or ``False``, see above.
        cache: cache teacher outputs per sample index; False.
        index_key: where the batch keeps the sample indices for the cache; ``"index"``.
        teacher_weights: weights of several teachers' averaged probabilities; uniform if None.
        compile: ``torch.compile`` the teacher (True, or a dict of options); False.

    Example:
        >>> trainer = L.Trainer(callbacks=[Distillation(teacher=big_model)])  # doctest: +SKIP
        >>> # student: class M(LossMixin, L.LightningModule) returning
        >>> # self.compute_loss(self(x), y, batch=batch) from training_step
    """

    def __init__(
        self,
        teacher: str | os.PathLike | nn.Module | Sequence[str | os.PathLike | nn.Module],
        loss: str | DistillationLoss = "kd",
        weight: float = 1.0,
        *,
        loss_kwargs: Mapping[str, Any] | None = None,
        name: str = "distill",
        architecture: str | nn.Module | Sequence[str | nn.Module | None] | None = None,
        weights: str | os.PathLike | None = None,
        state_dict_prefix: str | None = None,
        num_classes: int | None = None,
        timm_kwargs: Mapping[str, Any] | None = None,
        input_key: str | int = 0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | int | Sequence[str] | Sequence[int] | None = None,
        adapters: bool | None = None,
        cache: bool = False,
        index_key: str | int = "index",
        teacher_weights: Sequence[float] | None = None,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        self.weight = check_positive(weight, "weight", allow_zero=True)
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty str; got {name!r}.")
        self.name = name
        for arg, key in (("input_key", input_key), ("index_key", index_key)):
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(
                    f"`{arg}` must be a str (key of a mapping batch) or an int (position in a "
                    f"tuple/list batch); got {type(key).__name__} {key!r}."
                )
        self.input_key, self.index_key = input_key, index_key
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"`num_classes` must be a positive int or None; got {num_classes!r}.")
        self.num_classes = num_classes
        if adapters not in (None, True, False):
            raise TypeError(f"`adapters` must be None, True or False; got {adapters!r}.")
        self.adapters = adapters
        self.cache = bool(cache)
        if not isinstance(compile, bool | Mapping):
            raise TypeError(f"`compile` must be a bool or a dict of options; got {compile!r}.")
        self.compile = compile

        self.loss = self._build_loss(loss, loss_kwargs)
        self.student_layers, self.teacher_layers = self._check_layers(
            student_layers, teacher_layers
        )
        self.features = self.student_layers is not None
        self.teacher_key = "teacher_features" if self.features else self.loss.teacher_keys[0]

        specs = list(teacher) if isinstance(teacher, list | tuple) else [teacher]
        if not specs:
            raise ValueError("`teacher` must hold at least one teacher; got an empty list.")
        archs = list(architecture) if isinstance(architecture, list | tuple) else None
        if archs is not None and len(archs) != len(specs):
            raise ValueError(
                f"`architecture` must have one entry per teacher ({len(specs)}); got {len(archs)}."
            )
        self._sources: list[TeacherSource] = [
            parse_teacher(
                spec,
                architecture=archs[i] if archs is not None else architecture,
                weights=weights,
                state_dict_prefix=state_dict_prefix,
                timm_kwargs=timm_kwargs,
            )
            for i, spec in enumerate(specs)
        ]
        self._check_multi_teacher(len(specs), teacher_weights)
        self.teacher_weights = None if teacher_weights is None else list(teacher_weights)
        self._teachers: list[nn.Module] | None = None
        if num_classes is not None or not any(s.needs_num_classes for s in self._sources):
            self._teachers = [s.build(num_classes) for s in self._sources]

        self.teacher_forwards = 0
        self._runners: list[nn.Module] = []
        self._cache: dict[int, dict[str, Tensor]] = {}
        self._current: dict[str, Tensor] | None = None
        self._student_tap: FeatureTap | None = None
        self._teacher_tap: FeatureTap | None = None
        self._teacher_reader: TimmIntermediates | None = None

    # -- construction checks ------------------------------------------------------------------

    @staticmethod
    def _build_loss(loss: Any, loss_kwargs: Mapping[str, Any] | None) -> DistillationLoss:
        if isinstance(loss, str):
            loss_info(loss, family="distillation")  # suggestions from the distillation family
            built = build_loss(loss, **dict(loss_kwargs or {}))
        elif isinstance(loss, nn.Module):
            if loss_kwargs:
                raise ValueError(
                    "`loss_kwargs` is for a loss given by name; the loss is already built "
                    f"({type(loss).__name__}). Drop `loss_kwargs`."
                )
            built = loss
        else:
            raise TypeError(
                f"`loss` must be a registered loss name or a loss instance; got "
                f"{type(loss).__name__}."
            )
        if not isinstance(built, DistillationLoss):
            raise ValueError(
                f"`loss` must be a distillation loss, one of {list_losses('distillation')}; got "
                f"{type(built).__name__}."
            )
        if isinstance(built, DualHeadKDLoss):
            raise ValueError(
                "`loss` dual_head_kd needs the student's auxiliary-head logits, which a callback "
                "cannot see: call the loss in training_step with `aux_logits=` and the teacher's "
                "logits."
            )
        return built

    def _check_layers(
        self, student: str | Sequence[str] | None, teacher: str | int | Sequence[Any] | None
    ) -> tuple[list[str] | None, list[Any] | None]:
        if student is None and teacher is None:
            if self.loss.teacher_keys[0] not in _OUTPUT_KEYS:
                raise ValueError(f"`loss` {type(self.loss).__name__} is not supported.")
            return None, None
        if student is None or teacher is None:
            raise ValueError(
                "`student_layers` and `teacher_layers` go together (one teacher layer per "
                f"student layer); got student_layers={student!r}, teacher_layers={teacher!r}."
            )
        s, t = (list(v) if isinstance(v, list | tuple) else [v] for v in (student, teacher))
        for arg, names, kinds in (("student_layers", s, (str,)), ("teacher_layers", t, (str, int))):
            bad = [n for n in names if isinstance(n, bool) or not isinstance(n, kinds)]
            if bad:
                what = "module names" + (" or timm feature indices" if int in kinds else "")
                raise TypeError(f"`{arg}` must hold {what}; got {bad!r} in {names!r}.")
        if len({type(n) for n in t}) > 1:
            raise TypeError(
                "`teacher_layers` must be all module names (forward hooks) or all timm feature "
                f"indices (forward_intermediates); got a mix: {t!r}."
            )
        if not s or len(s) != len(t):
            raise ValueError(
                "`student_layers` and `teacher_layers` must pair up, the same number of names "
                f"(at least 1); got {len(s)} and {len(t)}."
            )
        if self.loss.teacher_keys != ("teacher_features",):
            raise ValueError(
                f"feature layers need a feature loss (fitnet, attention_transfer, rkd); `loss` "
                f"is {type(self.loss).__name__}, which compares {self.loss.teacher_keys[0]}."
            )
        return s, t

    def _check_multi_teacher(self, m: int, teacher_weights: Sequence[float] | None) -> None:
        if teacher_weights is not None and len(teacher_weights) != m:
            raise ValueError(
                f"`teacher_weights` must have one weight per teacher ({m}); got "
                f"{len(teacher_weights)}."
            )
        if m > 1 and self.teacher_key not in ("teacher_logits", "teacher_outputs"):
            raise ValueError(
                f"several teachers are combined for logits or regression outputs only; `loss` "
                f"{type(self.loss).__name__} compares {self.teacher_key}. Use one teacher."
            )

    # -- the teachers -------------------------------------------------------------------------

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teacher modules (built at ``setup`` when a timm teacher needed a class
        count from the module or datamodule)."""
        if self._teachers is None:
            raise RuntimeError(
                "the teachers are built when fit starts (a timm teacher without `num_classes` "
                "reads the class count from the module or datamodule then)."
            )
        return self._teachers

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_forwards": self.teacher_forwards}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.teacher_forwards = int(state_dict.get("teacher_forwards", 0))

    # -- Lightning hooks ----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"Distillation needs LossMixin: {type(pl_module).__name__} does not use it, so "
                "no distillation term could be added. Mix `lightning_losses.LossMixin` into the "
                "module and return `self.compute_loss(outputs, target, batch=batch)` from "
                "training_step."
            )
        if self._teachers is None:
            k = num_classes_of(pl_module, getattr(trainer, "datamodule", None))
            self._teachers = [s.build(k) for s in self._sources]
        device = trainer.strategy.root_device
        dtype = _parameter_dtype(pl_module)  # a float64 student gets float64 teachers
        for t in self._teachers:
            t.to(device=device, dtype=dtype)
        self._runners = list(self._teachers)
        if self.features:
            self._student_tap = FeatureTap(
                pl_module, self.student_layers, "student_layers", "student"
            )
            self._student_tap.attach()
            if isinstance(self.teacher_layers[0], int):
                self._teacher_reader = TimmIntermediates(
                    self._teachers[0], self.teacher_layers, "teacher_layers"
                )
            else:
                self._teacher_tap = FeatureTap(
                    self._teachers[0], self.teacher_layers, "teacher_layers", "teacher"
                )
                self._teacher_tap.attach()
            self._create_adapters(trainer, pl_module, device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dtype = _parameter_dtype(pl_module)  # after the precision plugin's conversion
        for t in self.teachers:
            t.to(device=pl_module.device, dtype=dtype)
        if self.compile:
            options = dict(self.compile) if isinstance(self.compile, Mapping) else {}
            self._runners = [torch.compile(t, **options) for t in self.teachers]
            if self._teacher_reader is not None:
                self._teacher_reader.fn = torch.compile(self._teacher_reader.fn, **options)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for t in self.teachers:
            if t.training:
                t.eval()
        if self._student_tap is not None:
            self._student_tap.clear()
            self._student_tap.armed = True
        x = self._read_input(batch)
        if not self.cache:
            self._current = self._run_teachers(trainer, x)
            return
        n = int(x.shape[0]) if isinstance(x, Tensor) and x.ndim else len(x)
        indices = self._host_indices(trainer, batch, n)
        self._current = self._from_cache(indices, pl_module.device)
        if self._current is None:
            self._current = self._run_teachers(trainer, x)
            self._store_in_cache(indices, self._current)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._current = None
        if self._student_tap is not None:
            self._student_tap.armed = False
            self._student_tap.clear()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for tap in (self._student_tap, self._teacher_tap):
            if tap is not None:
                tap.detach()
        self._current = None

    # -- LossMixin protocol -------------------------------------------------------------------

    def loss_terms(
        self, pl_module: Any, outputs: Any, target: Any, batch: Any
    ) -> Mapping[str, LossTerm]:
        """The distillation term: per-sample values of the loss against the teacher's."""
        if self._current is None:
            raise RuntimeError(
                "Distillation has no teacher outputs for this call: compute_loss(stage='train') "
                "was called outside a training batch (the teacher runs in on_train_batch_start)."
            )
        context: dict[str, Any] = {}
        if "epoch" in self.loss.context:
            trainer = getattr(pl_module, "_trainer", None)
            context["epoch"] = trainer.current_epoch if trainer is not None else 0
        if self.features:
            return {self.name: LossTerm(self._feature_term(pl_module), self.weight)}
        if not isinstance(outputs, Tensor):
            raise TypeError(
                "Distillation compares the student's outputs with the teacher's, so the outputs "
                f"passed to compute_loss must be a tensor; got {type(outputs).__name__}."
            )
        value = self._current["output"]
        if value.device != outputs.device:
            value = value.to(outputs.device)
        stacked = self._stacked()
        if stacked:
            value = value.movedim(1, 0)
        if self.teacher_key == "teacher_logits":
            self._check_classes(outputs, value, stacked)
        uses_target = self.teacher_key == "teacher_logits"
        values = self.loss.per_sample(
            outputs, target if uses_target else None, **{self.teacher_key: value}, **context
        )
        return {self.name: LossTerm(values, self.weight)}

    def _feature_term(self, pl_module: Any) -> Tensor:
        assert self._student_tap is not None
        student = self._student_tap.take("student")
        adapters = self._adapters(pl_module)
        total: Tensor | None = None
        for i, s in enumerate(student):
            key = self._adapter_key(i)
            if adapters is not None and key in adapters:
                s = adapters[key](s)
            t = self._current[f"feature{i}"]  # type: ignore[index]
            if t.device != s.device:
                t = t.to(s.device)
            v = self.loss.per_sample(s, None, teacher_features=t).values
            total = v if total is None else total + v
        assert total is not None
        return total

    def _check_classes(self, outputs: Tensor, teacher: Tensor, stacked: bool) -> None:
        k_t = teacher.shape[2] if stacked else teacher.shape[1] if teacher.ndim > 1 else None
        k_s = outputs.shape[1] if outputs.ndim > 1 else None
        if k_t != k_s:
            raise ValueError(
                f"the teacher and the student predict different numbers of classes: the "
                f"teacher's logits have {k_t} classes (shape {tuple(teacher.shape)}) and the "
                f"student's {k_s} (shape {tuple(outputs.shape)}). Distil from a teacher trained "
                "on the student's classes."
            )

    # -- pieces -------------------------------------------------------------------------------

    def _stacked(self) -> bool:
        """Whether the loss receives several teachers stacked, ``(M, N, ...)``."""
        if isinstance(self.loss, MultiTeacherKDLoss):
            return True
        return (
            isinstance(self.loss, RegressionDistillationLoss)
            and self.loss.teacher_weights is not None
        )

    @torch.no_grad()
    def _run_teachers(self, trainer: L.Trainer, x: Any) -> dict[str, Tensor]:
        if isinstance(x, Tensor) and x.is_floating_point() and self._teachers:
            # a student that casts its own input (a float64 model fed float32 data): the
            # teachers, in the student's dtype, get the input in theirs
            x = x.to(_parameter_dtype(self._teachers[0]))
        if self._teacher_reader is not None:
            with trainer.precision_plugin.forward_context():
                feats = self._teacher_reader(x)
            self.teacher_forwards += 1
            return {f"feature{i}": f.detach() for i, f in enumerate(feats)}
        outputs = []
        with trainer.precision_plugin.forward_context():
            for i, runner in enumerate(self._runners):
                tap = self._teacher_tap if i == 0 else None
                if tap is not None:
                    tap.clear()
                    tap.armed = True
                try:
                    out = runner(x)
                finally:
                    if tap is not None:
                        tap.armed = False
                outputs.append(out)
        self.teacher_forwards += 1
        if self.features:
            assert self._teacher_tap is not None
            feats = self._teacher_tap.take("teacher")
            self._teacher_tap.clear()
            return {f"feature{i}": f.detach() for i, f in enumerate(feats)}
        for out in outputs:
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"the teacher must return a tensor of outputs; it returned a "
                    f"{type(out).__name__}."
                )
        return {"output": self._combine(outputs)}

    def _combine(self, outputs: list[Tensor]) -> Tensor:
        """One batch-first tensor from the teachers' outputs (see the class docstring)."""
        if len(outputs) == 1 and not self._stacked():
            return outputs[0]
        if self._stacked():
            return torch.stack(outputs, 1)
        if self.teacher_key == "teacher_outputs":
            stack = torch.stack([o.float() for o in outputs])
            w = torch.as_tensor(
                self.teacher_weights or [1.0] * len(outputs), dtype=stack.dtype, device=stack.device
            )
            w = w / w.sum()
            return torch.tensordot(w, stack, dims=1)
        temp = getattr(self.loss, "temperature", None) or 1.0
        probs = average_teacher_probs(outputs, self.teacher_weights, temp)
        return temp * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def _read_input(self, batch: Any) -> Any:
        key = self.input_key
        if isinstance(key, str):
            if not isinstance(batch, Mapping) or key not in batch:
                got = (
                    f"keys {sorted(map(str, batch.keys()))}"
                    if isinstance(batch, Mapping)
                    else f"a {type(batch).__name__}"
                )
                raise ValueError(
                    f"Distillation reads the teacher's input from batch[{key!r}] (`input_key`="
                    f"{key!r}), but the batch has {got}. Use a str `input_key` for mapping "
                    "batches and an int for tuple/list batches."
                )
        elif isinstance(batch, Tensor):
            return batch
        elif not isinstance(batch, tuple | list) or not -len(batch) <= key < len(batch):
            got = (
                f"{len(batch)} entries" if isinstance(batch, tuple | list) else type(batch).__name__
            )
            raise ValueError(
                f"Distillation reads the teacher's input from position {key} of a tuple/list "
                f"batch (`input_key`={key!r}); got {got}. Use a str `input_key` for mapping "
                "batches."
            )
        return batch[key]

    def _from_cache(self, indices: list[int], device: torch.device) -> dict[str, Tensor] | None:
        """The cached teacher tensors of the batch, on ``device``; ``None`` unless all are cached.

        A copy from host memory to the device, which reads nothing back: on a GPU the rows are
        stacked in pinned memory and copied without blocking.
        """
        if not all(i in self._cache for i in indices):
            return None
        keys = self._cache[indices[0]].keys()
        pin = torch.device(device).type == "cuda"
        current = {}
        for k in keys:
            rows = torch.stack([self._cache[i][k] for i in indices])
            current[k] = (rows.pin_memory() if pin else rows).to(device, non_blocking=pin)
        return current

    def _store_in_cache(self, indices: list[int], current: Mapping[str, Tensor]) -> None:
        """Keep the teacher's tensors of the batch in host memory, one entry per sample index.

        A device-to-host copy by definition (the cache lives in host memory, where a training
        set's worth of teacher outputs fits), so it waits for the teacher's forward; it runs
        only for batches that miss the cache, with fixed inputs the first epoch's.
        """
        stored = {k: v.detach().cpu() for k, v in current.items()}
        for row, i in enumerate(indices):
            self._cache[i] = {k: v[row] for k, v in stored.items()}

    def _host_indices(self, trainer: L.Trainer, batch: Any, n: int) -> list[int]:
        """The batch's sample indices as Python ints, the keys of the cache.

        A host read by definition: the cache is a host-memory table keyed by sample index, and
        whether the teacher runs depends on them. Indices from a sampler-owning callback
        (InfoBatch) are host memory already; ``batch[index_key]`` has been moved to the
        device with the batch, so reading it waits for the device (N integers per step).
        """
        key = self.index_key
        in_batch = (isinstance(key, str) and isinstance(batch, Mapping) and key in batch) or (
            isinstance(key, int) and isinstance(batch, tuple | list)
        )
        if not in_batch:
            for cb in trainer.callbacks:
                ids = getattr(cb, "batch_indices", None)
                if isinstance(ids, Tensor):
                    return [int(i) for i in ids.tolist()]
        ids = batch_ids(
            batch,
            key,
            n,
            owner="Distillation (cache=True)",
            what="sample indices",
            key_arg="index_key",
        )
        return [int(i) for i in ids.tolist()]

    # -- adapters -----------------------------------------------------------------------------

    @staticmethod
    def _adapter_key(i: int) -> str:
        return f"pair{i}"

    def _adapters(self, pl_module: nn.Module) -> nn.ModuleDict | None:
        container = getattr(pl_module, ADAPTERS_ATTR, None)
        if isinstance(container, nn.ModuleDict) and self.name in container:
            return container[self.name]
        return None

    def _create_adapters(
        self, trainer: L.Trainer, pl_module: L.LightningModule, device: torch.device
    ) -> None:
        """Register the adapters on the student before the optimizers exist (see docstring)."""
        if self.adapters is False or self._adapters(pl_module) is not None:
            return
        if self.adapters is None and isinstance(self.loss, _SHAPE_FREE_LOSSES):
            return
        student, teacher = self._dry_run(trainer, pl_module, device)
        built = {}
        for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
            if self.adapters is None and s == t:
                continue
            where = f"the pair {self.student_layers[i]!r} -> {self.teacher_layers[i]!r}"
            built[self._adapter_key(i)] = make_adapter(s, t, where)
        if not built:
            return
        container = getattr(pl_module, ADAPTERS_ATTR, None)
        if container is None:
            container = nn.ModuleDict()
            setattr(pl_module, ADAPTERS_ATTR, container)
        elif not isinstance(container, nn.ModuleDict):
            raise TypeError(
                f"the student's attribute `{ADAPTERS_ATTR}` is reserved for distillation "
                f"adapters (an nn.ModuleDict); it holds a {type(container).__name__}."
            )
        container[self.name] = nn.ModuleDict(built).to(
            device=device, dtype=_parameter_dtype(pl_module)
        )

    def _dry_run(
        self, trainer: L.Trainer, pl_module: L.LightningModule, device: torch.device
    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """Feature shapes (without the batch dim) of one training batch, student and teacher."""
        assert self._student_tap is not None
        with _preserved_rng():
            batch = first_train_batch(trainer)
        batch = trainer.strategy.batch_to_device(batch, device)
        x = self._read_input(batch)
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.to(device)
        pl_module.eval()
        try:
            with torch.no_grad():
                self._student_tap.armed = True
                pl_module(x)
                student = self._student_tap.take("student")
                teacher = self._run_teachers(trainer, x)
                self.teacher_forwards -= 1  # the dry run is not a training forward
        finally:
            self._student_tap.armed = False
            self._student_tap.clear()
            for m, mode in modes.items():
                m.training = mode
        return (
            [tuple(f.shape[1:]) for f in student],
            [tuple(teacher[f"feature{i}"].shape[1:]) for i in range(len(student))],
        )


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter (float32 if it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


@contextmanager
def _preserved_rng() -> Iterable[None]:
    """Restore the torch (CPU), numpy and ``random`` RNG states after the block."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


__all__ = ["ADAPTERS_ATTR", "Distillation"]
