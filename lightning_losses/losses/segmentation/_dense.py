"""The dense (segmentation) loss contract, in one place: every dense loss is built on it.

**Input.** ``input`` holds scores ``(N, C, *spatial)``, 2-D ``(N, C, H, W)`` or 3-D
``(N, C, D, H, W)`` (any number of spatial dims >= 1): logits when ``from_logits=True`` (the
default), probabilities otherwise.

**Modes.**

* ``"multiclass"``: one class per pixel; ``softmax`` over the C >= 2 channels. The target is
  either class indices ``(N, *spatial)`` (or ``(N, 1, *spatial)``, MONAI's layout) or a one-hot /
  soft target ``(N, C, *spatial)`` (label smoothing, distillation), each pixel's row summing to 1.
* ``"binary"``: one foreground channel, ``input`` ``(N, 1, *spatial)``, ``sigmoid``; the target
  ``(N, *spatial)`` or ``(N, 1, *spatial)`` holds 0 / 1 (or soft values in [0, 1]).
* ``"multilabel"``: C independent channels, ``sigmoid`` each; target ``(N, C, *spatial)`` in
  [0, 1].

**Options** (the same names in every dense loss):

* ``include_background=False`` drops channel 0 (after the softmax) in multiclass and multilabel
  mode, as MONAI does; binary mode has only its foreground channel, so there it is an error.
* ``ignore_index``: pixels whose index target equals it are left out, exactly as if they had been
  sliced away: every sum runs over the kept pixels only. It is applied as a multiplicative 0/1
  mask (no boolean indexing, so no host read and static shapes). In binary and multilabel mode
  the comparison is element-wise, so one label of one pixel can be ignored. One-hot / soft
  multiclass targets carry no ignore marker. ``None`` (the default) builds no mask at all. An
  image whose pixels are all ignored is not valid: it gives 0 and leaves the ``"mean"``
  denominator (:func:`~lightning_losses._reduce.reduce_loss`).
* ``reduce_over="image"`` (the default) computes the overlap sums per image and per class, so
  ``reduction="none"`` gives one value per image ``(N,)`` and ``sample_weight``, InfoBatch and
  the DRO callbacks work unchanged. ``"batch"`` sums over the whole batch first (nnU-Net's
  ``batch_dice``, MONAI's ``batch=True``, smp's only mode); the two disagree (a mean of ratios is
  not a ratio of sums). The batch value is then given to every valid sample, so that the mean
  over samples equals it; a sample's value then depends on the rest of the batch (the instance's
  ``batch_statistic`` is True), a ``sample_weight`` only rescales it by the mean weight, and
  under DDP the batch is each process's own.
* ``empty_target``: what a class with an empty target contributes (empty in the image, or in the
  batch with ``reduce_over="batch"``; "empty" means its target sum over the kept pixels is 0):

  - ``"keep"``: its term keeps the loss's formula, and the smoothing constants decide. For Dice
    that is :math:`1 - s_{nr}/(\\sum p + s_{dr})`: 0 for an empty prediction, rising towards 1
    as false-positive mass grows (V-Net / MONAI behaviour). False positives on an empty image
    are punished, but the loss saturates quickly, so its gradient is small.
  - ``"skip"``: the class is left out of the image's class mean (the "present classes" of the
    Lovász and Jaccard-metric-loss papers); an image with no present class is not valid.
    False positives of absent classes go unpunished.
  - ``"zero"``: the class contributes 0 but still counts in the class mean (smp's rule, there
    applied per batch).
  - ``"one"``: the class contributes 1, with no gradient (kornia's value on empty targets).

**Precision.** Half-precision input is computed in float32, and so are all the sums (under
autocast too): a sum over a 512x512 image overflows float16. Denominators are clamped at the
dtype's ``eps``, so a 0/0 with zero smoothing gives 0 and finite gradients, not NaN.

**Checks.** Shapes, channel counts and options are checked on every call (metadata only).
Class indices are range-checked by the ``scatter`` that builds the one-hot target (a CPU kernel
raises at once and :meth:`DenseLoss.explain_error` names the bad labels; a GPU asserts in its
queue). ``validate_args=True`` adds on-device checks of the values: finite input, probabilities
in [0, 1] when ``from_logits=False``, and binary / multilabel / soft targets in [0, 1].

The public helpers, for losses built on this contract:

* :func:`prepare_dense` validates and flattens to :class:`DenseInput` ``(N, C, S)``;
* :func:`region_sums` gives the per-image (or per-batch), per-class sums
  :class:`RegionSums` (intersection, prediction, target, optionally the L1 difference);
* :func:`soft_tp_fp_fn` turns them into true positive, false positive and false negative mass,
  in the product form or the L1 form that stays correct for soft labels;
* :func:`tp_fp_fn` does the same from sums already computed, :func:`safe_ratio` divides with
  the clamped denominator, :func:`apply_empty_target` takes the class mean under
  ``empty_target``;
* :class:`DenseLoss` is the base class holding the options; :meth:`DenseLoss.prepare` calls
  :func:`prepare_dense` with them, :meth:`DenseLoss.mean_over_classes` applies ``empty_target``
  and ``reduce_over`` and returns the per-sample result, and :meth:`DenseLoss.per_sample_result`
  does the last step for a loss that is not a class mean (generalized Dice);
* :class:`RegionLoss` (a class mean of per-class terms from :class:`RegionSums`) and
  :class:`SmoothedRegionLoss` (with ``smooth_nr``, ``smooth_dr``, ``soft_label``) are the bases
  of Dice, Tversky and Jaccard.

A new dense loss (a topology loss, say) derives from :class:`DenseLoss`, calls
``self.prepare(input, target)`` in its ``per_sample``, computes per-class values ``(N, C)``
(``(1, C)`` under ``reduce_over="batch"``) from ``DenseInput.probs`` / ``DenseInput.target``
(multiplying any pixel-wise term by ``DenseInput.mask`` when it is not None) and returns
``self.mean_over_classes(d, values, present)``; it then has every option above, and the
conformance suite checks it.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from ..._checks import (
    check_choice,
    check_finite,
    check_float,
    check_on_device,
    check_positive,
    check_tensor,
)
from ..._reduce import PerSample
from .._base import Loss
from .._inputs import _bad_labels, _label_message, explain_categorical, upcast

MODES = ("binary", "multiclass", "multilabel")
REDUCE_OVER = ("image", "batch")
EMPTY_TARGET = ("keep", "skip", "zero", "one")
OVERLAP_FORMS = ("product", "l1")


class DenseInput(NamedTuple):
    """A validated dense input, flattened to ``(N, C, S)`` (``S`` = the number of pixels).

    ``probs`` and ``target`` are already multiplied by ``mask``, so a plain sum over pixels runs
    over the kept pixels only. Both are in the compute dtype (float32 for half-precision input).
    """

    probs: Tensor  # (N, C, S) activated input, 0 at ignored pixels
    target: Tensor  # (N, C, S) one-hot / soft target, 0 at ignored pixels
    mask: Tensor | None  # (N, 1, S) or (N, C, S) 0/1 weights; None when nothing can be ignored
    scores: Tensor  # (N, C, S) the input as given (logits or probabilities), compute dtype
    #: every kept pixel's target is exactly one-hot over the C channels (multiclass class
    #: indices, all channels kept): then sum_c' g_c' = 1 there, which region_sums uses
    one_hot: bool = False

    @property
    def batch_size(self) -> int:
        return self.probs.shape[0]


class RegionSums(NamedTuple):
    """Per-class sums over the pixels of each image ``(N, C)`` (or the batch, ``(1, C)``)."""

    intersection: Tensor  # sum p * g
    prediction: Tensor  # sum p
    target: Tensor  # sum g
    difference: Tensor | None  # sum |p - g|, when asked for

    @property
    def present(self) -> Tensor:
        """Boolean ``(N, C)``: the class has a non-empty target."""
        return self.target > 0


def _spatial_error(input: Tensor, target: Tensor) -> ValueError:
    n, c, *spatial = input.shape
    got = target.ndim - 1
    return ValueError(
        f"`target` must have shape {(n, *spatial)} (class indices) or {(n, c, *spatial)} "
        f"(one-hot / soft) for `input` of shape {tuple(input.shape)} ({len(spatial)} spatial "
        f"dims); got {tuple(target.shape)} ({got} or {got - 1} spatial dims)."
    )


def _check_shapes(input: Tensor, target: Tensor, mode: str) -> bool:
    """Check the layout; return True for a dense (one-hot / soft / per-channel) target."""
    check_tensor(input, "input")
    check_tensor(target, "target")
    check_float(input, "input")
    if input.ndim < 3:
        raise ValueError(
            "`input` of a dense loss must have shape (N, C, *spatial) with at least one spatial "
            f"dim; got shape {tuple(input.shape)}."
        )
    n, c, *spatial = input.shape
    if mode == "binary" and c != 1:
        raise ValueError(
            f"`input` in binary mode must have one channel, (N, 1, *spatial); got shape "
            f"{tuple(input.shape)}. Use mode='multiclass' or 'multilabel' for {c} channels."
        )
    if mode == "multiclass" and c < 2:
        raise ValueError(
            "`input` in multiclass mode needs at least 2 channels (a softmax over one channel is "
            f"constant); got shape {tuple(input.shape)}. Use mode='binary' for one channel."
        )
    if target.ndim == input.ndim - 1 and mode != "multilabel":
        dense = False
        ok = tuple(target.shape) == (n, *spatial)
    elif target.ndim == input.ndim:
        singleton = target.shape[1] == 1 and not target.is_floating_point()
        dense = not (mode == "multiclass" and singleton)  # (N, 1, *spatial) class indices
        ok = target.shape[0] == n and tuple(target.shape[2:]) == tuple(spatial)
        if ok and dense and target.shape[1] != c:
            raise ValueError(
                f"`target` must have the input's {c} channels, shape {tuple(input.shape)} "
                f"({mode} mode), or be class indices of shape {(n, *spatial)}; got "
                f"{target.shape[1]} channels, shape {tuple(target.shape)}."
            )
    elif mode == "multilabel":
        raise ValueError(
            f"`target` in multilabel mode must have the input's shape {tuple(input.shape)} "
            f"(one 0/1 label per channel and pixel); got {tuple(target.shape)}."
        )
    else:
        raise _spatial_error(input, target)
    if not ok:
        raise _spatial_error(input, target)
    if dense and mode == "multiclass" and target.dtype == torch.bool:
        raise TypeError("`target` of a multiclass dense loss must be numeric; got a bool tensor.")
    return dense


def _check_unit_interval(t: Tensor, valid: Tensor | None, what: str) -> None:
    """On-device check that ``t`` lies in [0, 1] where ``valid`` (validate_args only)."""
    bad = (t < 0) | (t > 1)
    if valid is not None:
        bad = bad & valid
    check_on_device(
        ~bad.any(),
        f"{what} must lie in [0, 1].",
        lambda: f"{what} must lie in [0, 1]; got {sorted(set(t[bad].tolist()))[:5]}.",
    )


def prepare_dense(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "multiclass",
    from_logits: bool = True,
    include_background: bool = True,
    ignore_index: int | None = None,
    validate_args: bool = False,
) -> DenseInput:
    """Validate ``input`` and ``target`` (see the module docstring) and flatten them.

    Returns the activated input and the one-hot / soft target as ``(N, C, S)`` in the compute
    dtype, with ignored pixels zeroed in both and the 0/1 ``mask`` (None without
    ``ignore_index``). Channel 0 is dropped when ``include_background`` is False.
    """
    dense = _check_shapes(input, target, mode)
    if mode == "binary" and not include_background:
        raise ValueError(
            "`include_background=False` drops channel 0, but binary mode has only its one "
            "foreground channel; leave `include_background=True` in binary mode."
        )
    n, c = input.shape[:2]
    x = upcast(input).reshape(n, c, -1)
    dtype = x.dtype
    if validate_args:
        check_finite(input, "input")
        if not from_logits:
            _check_unit_interval(x, None, "`input` (probabilities, from_logits=False)")
    if from_logits:
        probs = torch.softmax(x, dim=1) if mode == "multiclass" else torch.sigmoid(x)
    else:
        probs = x
    valid = None
    if mode == "multiclass" and not dense:
        labels = target.reshape(n, 1, -1)
        if ignore_index is not None:
            valid = labels != ignore_index
            labels = torch.where(valid, labels, torch.zeros_like(labels))
        if validate_args:
            check_on_device(
                ~_bad_labels(target, c, ignore_index).any(),
                f"`target` holds labels outside [0, {c - 1}] (input has {c} classes).",
                lambda: _label_message(input, target, ignore_index),
            )
        # scatter range-checks the labels (the kernel check that explain_error turns into a
        # message naming them)
        onehot = torch.zeros_like(probs).scatter_(1, labels.long(), 1.0)
    else:
        t = target.reshape(n, c, -1)  # binary: c == 1, for (N, *spatial) and (N, 1, *spatial)
        if ignore_index is not None and mode != "multiclass":
            valid = t != ignore_index
            t = torch.where(valid, t, torch.zeros_like(t))
        onehot = upcast(t).to(dtype) if t.is_floating_point() else t.to(dtype)
        if validate_args:
            what = "`target`" + (" of binary mode (0 / 1 or soft)" if mode == "binary" else "")
            _check_unit_interval(onehot, valid, what)
    mask = None if valid is None else valid.to(dtype)
    if not include_background:
        probs, onehot, x = probs[:, 1:], onehot[:, 1:], x[:, 1:]
        if mask is not None and mask.shape[1] > 1:
            mask = mask[:, 1:]
    if mask is not None:
        probs, onehot = probs * mask, onehot * mask
    one_hot = mode == "multiclass" and not dense and include_background
    return DenseInput(probs, onehot, mask, x, one_hot)


def region_sums(d: DenseInput, reduce_over: str = "image", *, difference: bool = False):
    r"""Per-class sums of :math:`pg`, :math:`p`, :math:`g` (and :math:`|p-g|` when asked).

    Summed over each image's pixels, ``(N, C)``, or over the batch and the pixels, ``(1, C)``
    (``reduce_over="batch"``). Accumulated in the compute dtype (float32 for half input). For a
    one-hot target (``DenseInput.one_hot``) with at most :data:`ONE_HOT_PRODUCT_MAX_CLASSES`
    classes, :math:`\sum pg` and :math:`\sum p` come from one matrix product
    (:func:`_one_hot_sums`): the same values up to the order of the floating-point summation.
    """
    dims = (2,) if reduce_over == "image" else (0, 2)

    def total(x: Tensor) -> Tensor:
        s = x.sum(dims)
        return s if reduce_over == "image" else s.unsqueeze(0)

    p, g = d.probs, d.target
    diff = total((p - g).abs()) if difference else None
    if d.one_hot and p.shape[1] <= ONE_HOT_PRODUCT_MAX_CLASSES:
        intersection, prediction = _one_hot_sums(p, g, reduce_over)
        return RegionSums(intersection, prediction, total(g), diff)
    return RegionSums(total(p * g), total(p), total(g), diff)


#: Up to this many classes, :func:`region_sums` takes the one-hot path of
#: :func:`_one_hot_sums` (its matrix product costs C times the elementwise product's
#: multiplications, which for few classes is still the faster route).
ONE_HOT_PRODUCT_MAX_CLASSES = 8


def _one_hot_sums(p: Tensor, g: Tensor, reduce_over: str) -> tuple[Tensor, Tensor]:
    r""":math:`\sum pg` and :math:`\sum p` per class from one product
    :math:`M_{cc'} = \sum_i p_{ic} g_{ic'}` ``(N, C, C)``: the intersection is its diagonal
    and, since a one-hot target row sums to 1 at every kept pixel (and ``p`` is 0 at the
    ignored ones), the prediction sum is its row sum. The backward pass is then one matrix
    product that writes the input gradient, instead of a product, a sum and their gradients.
    Float32 under autocast (which would run the product in half precision)."""
    with torch.autocast(device_type=p.device.type, enabled=False):
        m = torch.bmm(p, g.transpose(1, 2))
    if reduce_over == "batch":
        m = m.sum(0, keepdim=True)
    return m.diagonal(dim1=1, dim2=2), m.sum(2)


def soft_tp_fp_fn(
    d: DenseInput, reduce_over: str = "image", form: str = "l1"
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Soft true positive, false positive and false negative mass per image and class.

    With :math:`P = \sum p`, :math:`G = \sum g`:

    * ``form="product"``: :math:`TP = \sum pg`, :math:`FP = \sum p(1-g) = P - TP`,
      :math:`FN = \sum (1-p)g = G - TP` (the usual soft counts; with a soft target they are not
      minimised by :math:`p = g`);
    * ``form="l1"`` (the default): :math:`TP = (P + G - \sum|p-g|)/2`, :math:`FP = P - TP`,
      :math:`FN = G - TP` (Wang & Blaschko, "Jaccard Metric Losses", NeurIPS 2023), which equals
      the product form on hard labels and keeps :math:`FP = FN = 0` at :math:`p = g` for soft
      labels.

    Each is ``(N, C)``, or ``(1, C)`` with ``reduce_over="batch"``.
    """
    check_choice(form, OVERLAP_FORMS, "form")
    return tp_fp_fn(region_sums(d, reduce_over, difference=form == "l1"))


def tp_fp_fn(s: RegionSums) -> tuple[Tensor, Tensor, Tensor]:
    """TP, FP, FN from the sums: the L1 form when ``s.difference`` is set, else the product."""
    tp = s.intersection if s.difference is None else (s.prediction + s.target - s.difference) / 2
    return tp, s.prediction - tp, s.target - tp


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``den`` clamped at the dtype's eps (0/0 gives 0, finite gradients)."""
    return num / den.clamp_min(torch.finfo(den.dtype).eps)


class DenseLoss(Loss):
    """Base class of the dense losses: holds the options of the contract (module docstring).

    Subclasses implement :meth:`per_sample` with :meth:`prepare` (validated, flattened input),
    :meth:`sums` and :meth:`mean_over_classes`, or derive from :class:`RegionLoss`.
    """

    input_kind: ClassVar[str] = "logits"
    target_kind: ClassVar[str] = "index"
    #: the conformance suite gives losses with a spatial dim a dense input
    min_spatial_dims: ClassVar[int] = 1
    #: the ``empty_target`` values a loss supports
    empty_target_choices: ClassVar[tuple[str, ...]] = EMPTY_TARGET

    def __init__(
        self,
        *,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.mode = check_choice(mode, MODES, "mode")
        self.from_logits = bool(from_logits)
        self.include_background = bool(include_background)
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise TypeError(f"`ignore_index` must be an int or None; got {ignore_index!r}.")
        if mode == "binary" and not include_background:
            raise ValueError(
                "`include_background=False` drops channel 0, but binary mode has only its one "
                "foreground channel; leave `include_background=True` in binary mode."
            )
        self.ignore_index = ignore_index
        self.reduce_over = check_choice(reduce_over, REDUCE_OVER, "reduce_over")
        # per instance: a batch-level ratio makes each sample's value depend on the batch
        self.batch_statistic = self.reduce_over == "batch"
        self.empty_target = check_choice(empty_target, self.empty_target_choices, "empty_target")

    def prepare(self, input: Tensor, target: Tensor) -> DenseInput:
        return prepare_dense(
            input,
            target,
            mode=self.mode,
            from_logits=self.from_logits,
            include_background=self.include_background,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )

    def sums(self, d: DenseInput, *, difference: bool = False) -> RegionSums:
        return region_sums(d, self.reduce_over, difference=difference)

    def mean_over_classes(self, d: DenseInput, per_class: Tensor, present: Tensor) -> PerSample:
        """Mean of per-class losses ``(N, C)`` / ``(1, C)`` under ``empty_target``, per sample.

        ``present`` ``(N, C)`` marks the classes whose target is not empty. Returns the values
        ``(N,)`` and the validity (None when no image can be invalid).
        """
        values, class_valid = apply_empty_target(per_class, present, self.empty_target)
        return self.per_sample_result(d, values, class_valid)

    def per_sample_result(
        self, d: DenseInput, values: Tensor, valid: Tensor | None = None
    ) -> PerSample:
        """Per-image values ``(N,)`` or the batch value ``(1,)``, broadcast to ``(N,)``, with
        the images that have no kept pixel (and those in ``valid`` False) marked invalid."""
        n = d.batch_size
        if values.shape[0] != n:  # reduce_over="batch": every sample carries the batch value
            values = values.expand(n)
            valid = None if valid is None else valid.expand(n)
        if d.mask is not None:
            kept = d.mask.reshape(n, -1).amax(1) > 0
            valid = kept if valid is None else valid & kept
        return PerSample(values, valid)

    def explain_error(self, input: Tensor, target: Tensor) -> None:
        # only multiclass index targets, (N, *spatial) or (N, 1, *spatial), hold class labels
        if not (self.mode == "multiclass" and isinstance(target, Tensor)):
            return
        index_layout = isinstance(input, Tensor) and (
            target.ndim == input.ndim - 1 or (target.ndim == input.ndim and target.shape[1] == 1)
        )
        if index_layout:
            explain_categorical(input, target, self.ignore_index)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, from_logits={self.from_logits}, include_background="
            f"{self.include_background}, ignore_index={self.ignore_index}, reduce_over="
            f"{self.reduce_over!r}, empty_target={self.empty_target!r}, "
            f"reduction={self.reduction!r}"
        )


def apply_empty_target(
    per_class: Tensor, present: Tensor, empty_target: str
) -> tuple[Tensor, Tensor | None]:
    """Class mean of ``per_class`` ``(N, C)`` with absent classes treated as ``empty_target``
    says (module docstring); returns the means and, for ``"skip"``, which rows had any class."""
    if empty_target == "keep":
        return per_class.mean(1), None
    if empty_target == "one":
        return torch.where(present, per_class, torch.ones_like(per_class)).mean(1), None
    kept = torch.where(present, per_class, torch.zeros_like(per_class))
    if empty_target == "zero":
        return kept.mean(1), None
    count = present.sum(1)
    return kept.sum(1) / count.clamp_min(1).to(kept.dtype), count > 0


class RegionLoss(DenseLoss):
    """A loss that is a class mean of per-class terms computed from the overlap sums.

    Subclasses implement :meth:`class_loss` on :class:`RegionSums` and say whether they need the
    L1 difference (``needs_difference``).
    """

    needs_difference: ClassVar[bool] = False

    def class_loss(self, s: RegionSums) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement class_loss")

    def uses_difference(self) -> bool:
        return self.needs_difference

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        d = self.prepare(input, target)
        s = self.sums(d, difference=self.uses_difference())
        return self.mean_over_classes(d, self.class_loss(s), s.present)


class SmoothedRegionLoss(RegionLoss):
    """A region loss with MONAI's separate smoothing terms :math:`s_{nr}`, :math:`s_{dr}` and,
    with ``soft_label=True``, the L1 form of the counts (:func:`soft_tp_fp_fn`)."""

    def __init__(
        self,
        *,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        soft_label: bool = False,
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        self.smooth_nr = check_positive(smooth_nr, "smooth_nr", allow_zero=True)
        self.smooth_dr = check_positive(smooth_dr, "smooth_dr", allow_zero=True)
        self.soft_label = bool(soft_label)

    def uses_difference(self) -> bool:
        return self.soft_label or self.needs_difference


#: Floor of a score before its ``-log`` (smp's ``eps``): the log form stays finite at score 0.
LOG_FLOOR = 1e-7


def overlap_loss(score: Tensor, log_loss: bool) -> Tensor:
    """``1 - score``, or ``-log(score)`` with the score floored at :data:`LOG_FLOOR`."""
    return -torch.log(score.clamp_min(LOG_FLOOR)) if log_loss else 1.0 - score
