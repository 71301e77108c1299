r"""Correctness-aware post-hoc calibration (Liu et al., *Optimizing Calibration by Gaining Aware
of Prediction Correctness*, arXiv 2404.13016, 2024).

A small network predicts one temperature per sample from *cues*, and the calibrated logits are
:math:`z / T(\text{cues})`. It is trained on held-out logits with the correctness-aware loss
(:class:`~lightning_losses.losses.CorrectnessAwareLoss`), the squared gap between the calibrated
top-label confidence and the 0/1 correctness of the classifier's prediction:

.. math::
    \min_\theta \; \frac{\sum_i \omega_i\,\big(\max_k \mathrm{softmax}(z_i / T_\theta(u_i))_k
        - 1[\arg\max_k z_{ik} = y_i]\big)^2}{\sum_i \omega_i},
    \qquad \omega_i = \begin{cases} 1 - \mathrm{acc} & \text{correct} \\
                                     \mathrm{acc} & \text{wrong} \end{cases}

A positive temperature never changes the arg-max, so accuracy is unchanged.

The cues :math:`u_i`. A sample alone says little about whether its prediction is right, so the
paper feeds the calibrator the classifier's outputs on *transformed copies* of the input
(rotated, greyscaled, colour-jittered): for every view :math:`v`, the view's softmax
probabilities at the original prediction's top-:math:`k` classes (:math:`k = 4`, three views,
12 inputs in the authors' code). Pass the views' logits as ``views`` (a list of (N, K) tensors
or one (V, N, K) tensor; :func:`augmentation_views` makes the three image views). Without
views the cues are the sorted top-:math:`k` softmax probabilities of the logits themselves
(a per-sample temperature from the logits only; weaker, but needs no extra forward passes).

Example:
    >>> views = [model(v) for v in augmentation_views(val_images)]  # doctest: +SKIP
    >>> cal = CorrectnessAwareCalibrator(num_views=3).fit(val_logits, val_labels, views=views)
    >>> calibrated = cal(test_logits, views=test_views)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_finite, check_float, check_int, check_tensor
from ..losses.calibration import CorrectnessAwareLoss

#: ITU-R BT.601 luma weights (torchvision's ``rgb_to_grayscale``).
_LUMA = (0.299, 0.587, 0.114)


def _check_positive_float(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0; got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    return float(value)


def augmentation_views(images: Tensor, *, rotation: int = 1) -> list[Tensor]:
    r"""The three transformed copies the paper uses as correctness cues: rotated, greyscale,
    colour-jittered.

    Deterministic, pure tensor operations on a batch of RGB images (N, 3, H, W), values in
    [0, 1] (apply the classifier's normalisation afterwards):

    * rotation by ``rotation`` x 90 degrees (:func:`torch.rot90`; needs H = W);
    * greyscale: :math:`0.299 R + 0.587 G + 0.114 B`, repeated on the three channels;
    * colour jitter with fixed factors: brightness x 1.2, contrast x 1.2 (around the image's
      mean grey level), saturation x 1.2, clipped to [0, 1].

    The paper names the three transformations; its angle and jitter strengths are not given in
    the authors' released code (it reads pre-computed logits), so these values are this
    library's choice. Feed the classifier each view and pass the logits to
    :class:`CorrectnessAwareCalibrator` in this order, the same at fit and at test time.
    """
    check_tensor(images, "images")
    check_float(images, "images")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"`images` must be RGB images of shape (N, 3, H, W); got {tuple(images.shape)}."
        )
    if rotation % 4 != 0 and images.shape[2] != images.shape[3]:
        raise ValueError(
            f"a 90-degree `rotation` needs square `images`; got H, W = {tuple(images.shape[2:])}."
        )
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)[None, :, None, None]
    grey = (images * luma).sum(dim=1, keepdim=True)
    rotated = torch.rot90(images, k=rotation, dims=(2, 3))
    greyscale = grey.expand_as(images).clone()
    jitter = (images * 1.2).clamp(0, 1)
    mean = (jitter * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    jitter = (mean + 1.2 * (jitter - mean)).clamp(0, 1)
    g = (jitter * luma).sum(dim=1, keepdim=True)
    jitter = (g + 1.2 * (jitter - g)).clamp(0, 1)
    return [rotated, greyscale, jitter]


class CorrectnessAwareCalibrator(nn.Module):
    r"""Per-sample temperature scaling trained with the correctness-aware loss.

    ``forward(logits, views=None) = logits / T`` with :math:`T \in (t_{\min}, t_{\max})` one
    temperature per sample:

    .. math::
        h = \mathrm{ReLU}(W_1 u + b_1), \qquad
        \log T = \log t_{\min} + (\log t_{\max} - \log t_{\min})\, \sigma(w_2^\top h + b_2)

    The authors' network is the same two layers (``Linear(12, 5)``, ReLU, ``Linear(5, 1)``)
    with the output clamped to [0.1, 10]; a clamp has no gradient outside its range, so here
    the same range is reached through a sigmoid in log space. The last layer starts at zero,
    and its bias puts :math:`T` at 1, so an unfitted calibrator is the identity (when
    :math:`t_{\min} < 1 < t_{\max}`; otherwise it starts at :math:`\sqrt{t_{\min} t_{\max}}`).

    Args:
        num_views: number of transformed views whose logits are passed as ``views`` (3 in the
            paper: rotation, greyscale, colour jitter); 0 uses the logits' own top-k
            probabilities as cues.
        top_k: classes per view fed to the network, the original prediction's top-k; 4 (the
            authors' code). Needs K >= top_k.
        hidden: width of the hidden layer; 5 (the authors' code).
        t_min, t_max: temperature range; 0.1 and 10 (the authors' clamp).

    The parameters are ``nn.Parameter``s with ``requires_grad=False`` outside :meth:`fit`, so an
    optimiser of a surrounding model leaves them alone.
    """

    def __init__(
        self,
        num_views: int = 0,
        top_k: int = 4,
        hidden: int = 5,
        *,
        t_min: float = 0.1,
        t_max: float = 10.0,
    ) -> None:
        super().__init__()
        self.num_views = check_int(num_views, "num_views", 0)
        self.top_k = check_int(top_k, "top_k", 1)
        self.hidden = check_int(hidden, "hidden", 1)
        self.t_min = _check_positive_float(t_min, "t_min")
        self.t_max = _check_positive_float(t_max, "t_max")
        if not self.t_min < self.t_max:
            raise ValueError(f"`t_min` must be < `t_max`; got {t_min!r} and {t_max!r}.")
        self.in_features = self.top_k * max(self.num_views, 1)
        self.embed = nn.Linear(self.in_features, self.hidden)
        self.head = nn.Linear(self.hidden, 1)
        self.reset_parameters()
        self.requires_grad_(False)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform(+-1/sqrt(fan_in)) first layer, zero last layer (identity calibrator)."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            w = torch.rand(self.embed.weight.shape, generator=generator, dtype=torch.float64)
            b = torch.rand(self.embed.bias.shape, generator=generator, dtype=torch.float64)
            self.embed.weight.copy_((2 * w - 1) * bound)
            self.embed.bias.copy_((2 * b - 1) * bound)
            self.head.weight.zero_()
            lo, hi = math.log(self.t_min), math.log(self.t_max)
            # sigmoid(b) = -lo / (hi - lo) puts log T at 0 (T = 1) when t_min < 1 < t_max
            self.head.bias.fill_(math.log(-lo / hi) if lo < 0 < hi else 0.0)

    def _logits(self, logits: Tensor, name: str = "logits") -> Tensor:
        check_tensor(logits, name)
        check_float(logits, name)
        if logits.ndim != 2:
            raise ValueError(f"`{name}` must be logits of shape (N, K); got {tuple(logits.shape)}.")
        if logits.shape[1] < max(self.top_k, 2):
            raise ValueError(
                f"`{name}` has {logits.shape[1]} classes; the calibrator needs K >= "
                f"max(top_k, 2) = {max(self.top_k, 2)} (lower `top_k`)."
            )
        return logits

    def _views(self, logits: Tensor, views: Sequence[Tensor] | Tensor | None) -> list[Tensor]:
        if self.num_views == 0:
            if views is not None:
                raise ValueError(
                    "`views` was given but the calibrator was built with num_views=0; build it "
                    "with num_views=len(views)."
                )
            return []
        if views is None:
            raise ValueError(
                f"`views` is required: the calibrator was built with num_views={self.num_views} "
                "(the logits of the transformed copies of the same samples)."
            )
        items = list(views.unbind(0)) if isinstance(views, Tensor) else list(views)
        if len(items) != self.num_views:
            raise ValueError(f"`views` must hold {self.num_views} views; got {len(items)}.")
        for i, v in enumerate(items):
            self._logits(v, f"views[{i}]")
            if v.shape != logits.shape:
                raise ValueError(
                    f"`views[{i}]` must have the logits' shape {tuple(logits.shape)}; got "
                    f"{tuple(v.shape)}."
                )
        return items

    def cues(self, logits: Tensor, views: Sequence[Tensor] | Tensor | None = None) -> Tensor:
        """The calibrator's inputs (N, top_k x max(num_views, 1)), see the module docstring."""
        logits = self._logits(logits)
        items = self._views(logits, views)
        z = logits.detach().float() if logits.dtype != torch.float64 else logits.detach()
        top = z.topk(self.top_k, dim=1).indices
        if not items:
            return F.softmax(z, dim=1).gather(1, top)
        probs = [F.softmax(v.detach().to(z.dtype), dim=1).gather(1, top) for v in items]
        return torch.cat(probs, dim=1)

    def temperature(self, logits: Tensor, views: Sequence[Tensor] | Tensor | None = None) -> Tensor:
        """One temperature per sample, shape (N,), in (t_min, t_max)."""
        return self._temperature_of_cues(self.cues(logits, views))

    def _temperature_of_cues(self, u: Tensor) -> Tensor:
        s = torch.sigmoid(self.head(F.relu(self.embed(u.to(self.head.weight.dtype))))).squeeze(1)
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        return torch.exp(lo + (hi - lo) * s)

    def forward(self, logits: Tensor, views: Sequence[Tensor] | Tensor | None = None) -> Tensor:
        """``logits / T`` with one temperature per row; the arg-max is unchanged."""
        t = self.temperature(logits, views)
        return logits / t.to(logits.dtype)[:, None]

    def fit(
        self,
        logits: Tensor,
        labels: Tensor,
        views: Sequence[Tensor] | Tensor | None = None,
        *,
        epochs: int = 500,
        lr: float = 1e-2,
        batch_size: int | None = None,
        balanced: bool = True,
        seed: int = 0,
    ) -> CorrectnessAwareCalibrator:
        r"""Train on held-out ``logits`` (N, K) and ``labels`` (N,) with Adam; returns self.

        The parameters are re-initialised from ``seed`` (and mini-batches shuffled with it), so
        the same data and seed give the same calibrator.

        Args:
            views: the transformed views' logits, as in :meth:`forward`.
            epochs: passes over the data; 500 full-batch steps by default. The authors run 10
                epochs of mini-batches of 1000 at lr 1e-4 on ImageNet's 50 000 validation
                images (500 steps); full-batch steps at lr 1e-2 converge in as many steps on
                the small problems a held-out split usually is.
            lr: Adam learning rate; 1e-2.
            batch_size: mini-batch size, or None for full batch.
            balanced: weigh correct samples by :math:`1-\mathrm{acc}` and wrong ones by
                :math:`\mathrm{acc}` (the authors' code), so that the rarer outcome is not
                drowned out; acc is the accuracy of each (mini-)batch.
            seed: seed of the initialisation and the shuffling.
        """
        self._logits(logits)
        check_finite(logits, "logits")
        check_tensor(labels, "labels")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"`labels` must hold integer class indices; got dtype {labels.dtype}.")
        if labels.shape != (logits.shape[0],):
            raise ValueError(
                f"`labels` must have shape ({logits.shape[0]},) for `logits` of shape "
                f"{tuple(logits.shape)}; got {tuple(labels.shape)}."
            )
        k = logits.shape[1]
        if logits.shape[0] == 0:
            raise ValueError("`logits` has no sample to fit on (N = 0).")
        if bool(((labels < 0) | (labels >= k)).any()):
            raise ValueError(f"`labels` holds labels outside [0, {k - 1}] ({k} classes).")
        check_int(epochs, "epochs", 1)
        lr = _check_positive_float(lr, "lr")
        if batch_size is not None:
            check_int(batch_size, "batch_size", 1)
        z = logits.detach().to(self.head.weight.dtype)
        u = self.cues(logits, views)  # fixed inputs: computed once
        y = labels.detach().long()
        correct = z.argmax(dim=1) == y
        n = z.shape[0]
        criterion = CorrectnessAwareLoss(reduction="mean")

        generator = torch.Generator().manual_seed(seed)
        self.reset_parameters(generator)
        self.requires_grad_(True)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        bs = n if batch_size is None else min(batch_size, n)
        try:
            with torch.enable_grad():
                for _ in range(epochs):
                    order = torch.randperm(n, generator=generator) if bs < n else None
                    for start in range(0, n, bs):
                        idx = order[start : start + bs].to(z.device) if order is not None else None
                        zb = z if idx is None else z[idx]
                        yb = y if idx is None else y[idx]
                        ub = u if idx is None else u[idx]
                        weight = None
                        if balanced:
                            cb = correct if idx is None else correct[idx]
                            acc = cb.to(zb.dtype).mean()
                            if 0 < float(acc) < 1:
                                w = torch.where(cb, 1 - acc, acc)
                                weight = w / w.mean()  # mean(w * l) / mean(w) = sum(w l) / sum(w)
                        optimizer.zero_grad()
                        calibrated = zb / self._temperature_of_cues(ub)[:, None]
                        loss = criterion(calibrated, yb, sample_weight=weight)
                        loss.backward()
                        optimizer.step()
        finally:
            self.requires_grad_(False)
        return self

    def extra_repr(self) -> str:
        return (
            f"num_views={self.num_views}, top_k={self.top_k}, hidden={self.hidden}, "
            f"t_min={self.t_min}, t_max={self.t_max}"
        )
