r"""Topology metrics of segmentations as torchmetrics ``Metric``\ s: clDice, Betti number errors
and the Betti matching error.

Each metric binarises the prediction, splits it into one binary mask per image and class, and
scores every (image, class) pair on the CPU with scikit-image, SciPy and cripser
(:mod:`lightning_losses.topology.persistence`). The states are sums of the per-pair values and
the number of pairs, reduced across processes by addition, so a distributed run gives the same
value as one process seeing every batch; ``compute`` returns the mean over pairs. ``update``
copies the masks to the host: these are evaluation metrics, not training-step code.

Inputs (``mode`` as in the dense losses, ``spatial_dims`` 2 or 3 to tell a channel axis from a
depth axis):

- ``"binary"``: ``preds`` ``(N, *spatial)`` or ``(N, 1, *spatial)``, foreground probabilities or
  a {0, 1} mask, foreground where ``preds > threshold``; ``target`` the same layout in {0, 1}.
- ``"multiclass"``: ``preds`` ``(N, C, *spatial)`` scores (probabilities or logits; the class
  is their argmax) or class indices ``(N, *spatial)``; ``target`` class indices
  ``(N, *spatial)``; one mask per class of ``num_classes``.
- ``"multilabel"``: ``preds`` ``(N, C, *spatial)`` probabilities, foreground where
  ``preds > threshold``; ``target`` ``(N, C, *spatial)`` in {0, 1}; one mask per channel.

``include_background=False`` (the default, as in the dense losses) leaves out class (channel) 0
in multiclass and multilabel mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from skimage.morphology import skeletonize
from torch import Tensor
from torchmetrics import Metric

from .._checks import check_choice, check_int, check_number, check_tensor
from ..topology.persistence import betti_matching_error, betti_numbers

__all__ = ["BettiMatchingError", "BettiNumberError", "ClDiceScore", "cl_dice"]

MODES = ("binary", "multiclass", "multilabel")


class _MaskPairs(Metric):
    """Turns (preds, target) into binary (prediction, ground truth) pairs per image and class."""

    full_state_update = False
    is_differentiable = False

    def __init__(
        self,
        mode: str = "binary",
        *,
        threshold: float = 0.5,
        num_classes: int | None = None,
        include_background: bool = False,
        spatial_dims: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.mode = check_choice(mode, MODES, "mode")
        self.threshold = check_number(threshold, "threshold")
        if mode == "multiclass":
            if num_classes is None:
                raise ValueError("`num_classes` is required in mode 'multiclass'; got None.")
            check_int(num_classes, "num_classes", 2)
        self.num_classes = num_classes
        self.include_background = bool(include_background)
        if spatial_dims not in (2, 3):
            raise ValueError(f"`spatial_dims` must be 2 or 3; got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims

    def _pairs(self, preds: Tensor, target: Tensor) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        check_tensor(preds, "preds")
        check_tensor(target, "target")
        d = self.spatial_dims
        if self.mode == "binary":
            preds, target = (
                _squeeze_channel(preds, d, "preds"),
                _squeeze_channel(target, d, "target"),
            )
            _check_same(preds, target)
            p, g = (preds > self.threshold)[:, None], _binary(target, "target")[:, None]
        elif self.mode == "multilabel":
            _check_ndim(preds, d + 2, "preds", "(N, C, *spatial)")
            _check_same(preds, target)
            p, g = preds > self.threshold, _binary(target, "target")
        else:
            k = self.num_classes
            if preds.ndim == d + 2:
                if preds.shape[1] != k:
                    raise ValueError(
                        f"`preds` must have num_classes={k} channels; got shape "
                        f"{tuple(preds.shape)}."
                    )
                preds = preds.argmax(1)
            _check_ndim(preds, d + 1, "preds", "(N, C, *spatial) scores or (N, *spatial) indices")
            _check_same(preds, target)
            for name, labels in (("preds", preds), ("target", target)):
                if labels.is_floating_point() or (
                    labels.numel() and (labels.min() < 0 or labels.max() >= k)
                ):
                    raise ValueError(f"`{name}` class indices must be integers in [0, {k - 1}].")
            classes = torch.arange(k, device=preds.device).reshape(1, k, *[1] * d)
            p, g = preds[:, None] == classes, target[:, None] == classes
        start = 0 if self.include_background or self.mode == "binary" else 1
        p, g = p[:, start:].cpu().numpy(), g[:, start:].cpu().numpy()
        for i in range(p.shape[0]):
            for c in range(p.shape[1]):
                yield p[i, c], g[i, c]


def _squeeze_channel(x: Tensor, d: int, arg: str) -> Tensor:
    if x.ndim == d + 2 and x.shape[1] == 1:
        return x[:, 0]
    _check_ndim(x, d + 1, arg, "(N, *spatial) or (N, 1, *spatial)")
    return x


def _check_ndim(x: Tensor, ndim: int, arg: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"`{arg}` must be {layout}; got shape {tuple(x.shape)}.")


def _check_same(preds: Tensor, target: Tensor) -> None:
    if preds.shape != target.shape:
        raise ValueError(
            f"`target` must match `preds` in shape; got {tuple(target.shape)} for preds "
            f"{tuple(preds.shape)}."
        )


def _binary(target: Tensor, arg: str) -> Tensor:
    if not ((target == 0) | (target == 1)).all():
        raise ValueError(f"`{arg}` must hold only 0 and 1 in this mode.")
    return target.bool()


def _skeleton(mask: np.ndarray) -> np.ndarray:
    skel = skeletonize(mask)
    return skel if skel.any() else mask


def cl_dice(pred: np.ndarray, target: np.ndarray) -> float:
    r"""clDice of two binary masks with hard (scikit-image) skeletons.

    .. math::
        T_{prec} = \frac{|S(P) \cap G|}{|S(P)|},\qquad
        T_{sens} = \frac{|S(G) \cap P|}{|S(G)|},\qquad
        \mathrm{clDice} = \frac{2\,T_{prec}\,T_{sens}}{T_{prec} + T_{sens}}.

    Two empty masks score 1; one empty mask (or :math:`T_{prec} + T_{sens} = 0`) scores 0.
    scikit-image's 3-D thinning can erase a compact blob entirely (a cube of even side); such a
    mask is its own skeleton here, so that every non-empty mask has one.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    if not pred.any() or not target.any():
        return float(pred.any() == target.any())
    s_pred, s_target = _skeleton(pred), _skeleton(target)
    t_prec = (s_pred & target).sum() / s_pred.sum()
    t_sens = (s_target & pred).sum() / s_target.sum()
    if t_prec + t_sens == 0:
        return 0.0
    return float(2 * t_prec * t_sens / (t_prec + t_sens))


class ClDiceScore(_MaskPairs):
    r"""clDice with hard skeletons, mean over images (and classes): :func:`cl_dice` per pair.

    Ref: Shit et al., "clDice – a Novel Topology-Preserving Loss Function for Tubular Structure
    Segmentation" (CVPR 2021); the hard skeletons are scikit-image's ``skeletonize`` (Zhang's
    thinning in 2-D, Lee's in 3-D).

    Args:
        mode, threshold, num_classes, include_background, spatial_dims: module docstring.

    Example:
        >>> metric = ClDiceScore()
        >>> metric.update(probs, masks)  # (N, H, W) each  # doctest: +SKIP
        >>> metric.compute()  # doctest: +SKIP
    """

    higher_is_better = True

    def __init__(self, mode: str = "binary", **kwargs) -> None:
        super().__init__(mode, **kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        scores = [cl_dice(p, g) for p, g in self._pairs(preds, target)]
        self.total += sum(scores)
        self.count += len(scores)

    def compute(self) -> Tensor:
        return self.total / self.count  # NaN before any update


class BettiNumberError(_MaskPairs):
    r"""Betti number errors :math:`|\beta_k(P) - \beta_k(G)|`, mean over images (and classes).

    ``compute`` returns ``{"betti_0": ..., "betti_1": ...}`` (and ``"betti_2"`` in 3-D).
    Foreground 8- (26-) connected, background 4- (6-) connected; see
    :func:`~lightning_losses.topology.persistence.betti_numbers`.

    Args:
        mode, threshold, num_classes, include_background, spatial_dims: module docstring.

    Example:
        >>> metric = BettiNumberError()
        >>> metric.update(probs, masks)  # doctest: +SKIP
        >>> metric.compute()["betti_1"]  # doctest: +SKIP
    """

    higher_is_better = False

    def __init__(self, mode: str = "binary", **kwargs) -> None:
        super().__init__(mode, **kwargs)
        dims = self.spatial_dims
        self.add_state("total", torch.zeros(dims, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        for p, g in self._pairs(preds, target):
            diff = np.abs(betti_numbers(p) - betti_numbers(g))
            self.total += torch.as_tensor(diff, dtype=torch.float64, device=self.total.device)
            self.count += 1

    def compute(self) -> dict[str, Tensor]:
        mean = self.total / self.count
        return {f"betti_{k}": mean[k] for k in range(self.spatial_dims)}


class BettiMatchingError(_MaskPairs):
    r"""Betti matching error per dimension, mean over images (and classes).

    The number of persistence bars of the prediction and of the ground truth left unmatched by
    the matching through their intersection, per dimension:
    :func:`~lightning_losses.topology.persistence.betti_matching_error`, which documents how it
    follows and where it departs from the induced matching of Stucki et al. (ICML 2023).
    ``compute`` returns ``{"betti_matching_0": ..., "betti_matching_1": ...}`` in 2-D and
    ``{"betti_matching_0": ..., "betti_matching_2": ...}`` in 3-D (tunnels are not matched).

    Args:
        mode, threshold, num_classes, include_background, spatial_dims: module docstring.

    Example:
        >>> metric = BettiMatchingError()
        >>> metric.update(probs, masks)  # doctest: +SKIP
        >>> metric.compute()["betti_matching_0"]  # doctest: +SKIP
    """

    higher_is_better = False

    def __init__(self, mode: str = "binary", **kwargs) -> None:
        super().__init__(mode, **kwargs)
        self.dims = (0, self.spatial_dims - 1)
        self.add_state("total", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        for p, g in self._pairs(preds, target):
            errors = betti_matching_error(p, g)
            values = [errors[k] for k in self.dims]
            self.total += torch.tensor(values, dtype=torch.float64, device=self.total.device)
            self.count += 1

    def compute(self) -> dict[str, Tensor]:
        mean = self.total / self.count
        return {f"betti_matching_{k}": mean[i] for i, k in enumerate(self.dims)}
