r"""Temperature scaling (Guo et al., On Calibration of Modern Neural Networks, ICML 2017).

A single scalar :math:`T > 0` divides the logits; it is fitted after training, on held-out
logits, by minimising the negative log-likelihood

.. math::
    T^\star = \arg\min_{T > 0}\; -\frac{1}{N} \sum_i \log \mathrm{softmax}(z_i / T)_{y_i}

over :math:`\log T` (unconstrained, so :math:`T` stays positive) with L-BFGS and a strong-Wolfe
line search. Dividing by :math:`T` never changes the arg-max, so accuracy is unchanged; only
the confidences move.

**When the split gives no signal.** On a perfectly separated split (every prediction correct)
the NLL keeps falling as :math:`T \to 0`: there is no finite minimiser, and the fitted
temperature collapses towards 0, which makes every later mistake catastrophically confident.
With only a few mistakes the minimiser is finite but set by those few samples' margins (one
wrong prediction out of 180 gives :math:`T \approx 0.07`, which multiplies the NLL of a test
split several-fold); so a split with fewer than ``min_errors`` (default 5) wrong predictions is
not used. Likewise an optimum outside ``bounds`` (default :math:`[0.05, 20]`) says the split is
too small or too easy to estimate :math:`T`. In these cases :func:`fit_temperature_checked`
keeps :math:`T = 1` and says why in :attr:`TemperatureFit.status`.

Fit on a validation split, never on the test split you report. Under DDP, gather the
validation logits of every process first (e.g. ``LightningModule.all_gather``) so that every
process fits the same :math:`T`.

Example:
    >>> scaler = TemperatureScaler().fit(val_logits, val_labels)  # doctest: +SKIP
    >>> calibrated = scaler(test_logits)  # logits / T  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ._inputs import flatten_scores


def _nll(logits: Tensor, labels: Tensor, log_t: Tensor) -> Tensor:
    return F.cross_entropy(logits * torch.exp(-log_t), labels)


#: Temperatures outside these bounds are not trusted: the split cannot estimate them.
DEFAULT_BOUNDS = (0.05, 20.0)
#: Fewer wrong predictions than this on the fitting split: the fit is not trusted.
DEFAULT_MIN_ERRORS = 5


class TemperatureFit(NamedTuple):
    """The outcome of a temperature fit, with the NLL it was judged on."""

    temperature: float  # the temperature to use (1.0 when the fit was not trusted)
    status: str  # "fitted", "unchanged" or "skipped: <why>"
    nll_before: float  # NLL of the fitting split at T = 1
    nll_after: float  # NLL of the fitting split at the returned temperature

    @property
    def skipped(self) -> bool:
        return self.status.startswith("skipped")


def fit_temperature(
    logits: Tensor,
    labels: Tensor,
    max_iter: int = 50,
    *,
    ignore_index: int | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    min_errors: int = DEFAULT_MIN_ERRORS,
) -> float:
    r"""The temperature :math:`T` that minimises the NLL of ``softmax(logits / T)``.

    :func:`fit_temperature_checked`'s temperature: 1.0 when the split gives no finite,
    in-bounds minimiser or when fitting does not lower the NLL.

    Args:
        logits: (N, K) logits, or dense (N, K, *d).
        labels: (N,) class indices, or (N, *d).
        max_iter: maximum L-BFGS iterations (>= 1); 50 is ample for one scalar.
        ignore_index: elements whose label equals it are left out (dense tasks), or None.
        bounds: the range of temperatures trusted, ``(low, high)``.
        min_errors: the fewest wrong predictions the split must hold for a trusted fit.

    Returns:
        The fitted temperature as a Python float.
    """
    return fit_temperature_checked(
        logits, labels, max_iter, ignore_index=ignore_index, bounds=bounds, min_errors=min_errors
    ).temperature


def fit_temperature_checked(
    logits: Tensor,
    labels: Tensor,
    max_iter: int = 50,
    *,
    ignore_index: int | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    min_errors: int = DEFAULT_MIN_ERRORS,
) -> TemperatureFit:
    r"""Fit :math:`T` and say whether the fit can be trusted (see the module docstring).

    The optimisation runs in float64 on detached copies, starting from :math:`T = 1`. The
    result keeps :math:`T = 1` when every prediction of the split is already correct (no finite
    minimiser), when fewer than ``min_errors`` are wrong, when the optimum lies outside
    ``bounds``, or when fitting does not lower the NLL below that of :math:`T = 1` (an already
    calibrated model); so fitting never makes the NLL on the fitting data worse, and never
    returns a degenerate temperature.
    """
    check_int(max_iter, "max_iter", 1)
    check_int(min_errors, "min_errors", 0)
    low, high = bounds
    if not 0 < low < 1 < high or not math.isfinite(high):
        raise ValueError(
            f"`bounds` must be (low, high) with 0 < low < 1 < high < inf; got {bounds!r}."
        )
    z, y = flatten_scores(logits, labels, scores_arg="logits", ignore_index=ignore_index)
    if z.shape[0] == 0:
        raise ValueError("`labels` has no element to fit on (all are `ignore_index` or N = 0).")
    z = z.detach().to(torch.float64)
    y = y.detach()
    zero = torch.zeros((), dtype=torch.float64, device=z.device)
    nll_one = float(_nll(z, y, zero))
    errors = int((z.argmax(1) != y).sum())
    if errors == 0:
        return TemperatureFit(
            1.0,
            f"skipped: all {z.shape[0]} predictions of the fitting split are correct, so its "
            "NLL falls as T -> 0 and has no finite minimiser; T kept at 1",
            nll_one,
            nll_one,
        )
    if errors < min_errors:
        return TemperatureFit(
            1.0,
            f"skipped: only {errors} of {z.shape[0]} predictions of the fitting split are wrong "
            f"(fewer than min_errors={min_errors}), so the NLL's minimiser is set by those few "
            "margins; T kept at 1",
            nll_one,
            nll_one,
        )
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = _nll(z, y, log_t)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        fitted = float(_nll(z, y, log_t))
    t = math.exp(float(log_t.detach())) if bool(torch.isfinite(log_t)) else math.nan
    if not low <= t <= high:
        return TemperatureFit(
            1.0,
            f"skipped: the fitted T = {t:.3g} lies outside the trusted range [{low:g}, {high:g}] "
            "(the split is too small or too easy to estimate it); T kept at 1",
            nll_one,
            nll_one,
        )
    if not fitted < nll_one:
        return TemperatureFit(1.0, "unchanged", nll_one, nll_one)
    return TemperatureFit(t, "fitted", nll_one, fitted)


class TemperatureScaler(nn.Module):
    r"""Post-hoc temperature scaling as a module: ``forward(logits) = logits / T``.

    :math:`\log T` is a persistent buffer (not a parameter: an optimiser of the surrounding
    model must not train it), so it moves with ``.to()`` and is saved in checkpoints.
    :meth:`fit` sets it with :func:`fit_temperature_checked` and keeps the outcome in
    :attr:`last_fit` (status and the NLL of the fitting split before and after).

    Args:
        temperature: initial :math:`T > 0`; 1 (identity).

    Example:
        >>> scaler = TemperatureScaler()
        >>> scaler.fit(val_logits, val_labels)  # doctest: +SKIP
        >>> probs = scaler(test_logits).softmax(-1)  # doctest: +SKIP
    """

    log_temperature: Tensor

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"`temperature` must be finite and > 0; got {temperature!r}.")
        self.register_buffer("log_temperature", torch.tensor(math.log(temperature)))
        self.last_fit: TemperatureFit | None = None

    @property
    def temperature(self) -> float:
        return math.exp(float(self.log_temperature))

    def fit(
        self,
        logits: Tensor,
        labels: Tensor,
        max_iter: int = 50,
        *,
        ignore_index: int | None = None,
        bounds: tuple[float, float] = DEFAULT_BOUNDS,
        min_errors: int = DEFAULT_MIN_ERRORS,
    ) -> TemperatureScaler:
        """Fit :math:`T` on held-out ``logits`` and ``labels`` (see
        :func:`fit_temperature_checked`)."""
        self.last_fit = fit_temperature_checked(
            logits,
            labels,
            max_iter,
            ignore_index=ignore_index,
            bounds=bounds,
            min_errors=min_errors,
        )
        self.log_temperature.fill_(math.log(self.last_fit.temperature))
        return self

    def forward(self, logits: Tensor) -> Tensor:
        """``logits / T`` for logits of any shape with classes along dim 1 (or the last dim)."""
        return logits * torch.exp(-self.log_temperature).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4f}"
