r"""Temperature scaling (Guo et al., On Calibration of Modern Neural Networks, ICML 2017).

A single scalar :math:`T > 0` divides the logits; it is fitted after training, on held-out
logits, by minimising the negative log-likelihood

.. math::
    T^\star = \arg\min_{T > 0}\; -\frac{1}{N} \sum_i \log \mathrm{softmax}(z_i / T)_{y_i}

over :math:`\log T` (unconstrained, so :math:`T` stays positive) with L-BFGS and a strong-Wolfe
line search. Dividing by :math:`T` never changes the arg-max, so accuracy is unchanged; only
the confidences move.

Fit on a validation split, never on the test split you report. Under DDP, gather the
validation logits of every process first (e.g. ``LightningModule.all_gather``) so that every
process fits the same :math:`T`.

Example:
    >>> scaler = TemperatureScaler().fit(val_logits, val_labels)  # doctest: +SKIP
    >>> calibrated = scaler(test_logits)  # logits / T  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ._inputs import flatten_scores


def _nll(logits: Tensor, labels: Tensor, log_t: Tensor) -> Tensor:
    return F.cross_entropy(logits * torch.exp(-log_t), labels)


def fit_temperature(
    logits: Tensor,
    labels: Tensor,
    max_iter: int = 50,
    *,
    ignore_index: int | None = None,
) -> float:
    r"""The temperature :math:`T` that minimises the NLL of ``softmax(logits / T)``.

    The optimisation runs in float64 on detached copies, starting from :math:`T = 1`. If it
    does not lower the NLL below that of :math:`T = 1` (an already calibrated model), 1.0 is
    returned, so fitting never makes the NLL on the fitting data worse.

    Args:
        logits: (N, K) logits, or dense (N, K, *d).
        labels: (N,) class indices, or (N, *d).
        max_iter: maximum L-BFGS iterations (>= 1); 50 is ample for one scalar.
        ignore_index: elements whose label equals it are left out (dense tasks), or None.

    Returns:
        The fitted temperature as a Python float.
    """
    check_int(max_iter, "max_iter", 1)
    z, y = flatten_scores(logits, labels, scores_arg="logits", ignore_index=ignore_index)
    if z.shape[0] == 0:
        raise ValueError("`labels` has no element to fit on (all are `ignore_index` or N = 0).")
    z = z.detach().to(torch.float64)
    y = y.detach()
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
        zero = torch.zeros_like(log_t)
        fitted, start = _nll(z, y, log_t), _nll(z, y, zero)
        if not bool(torch.isfinite(log_t)) or not bool(fitted < start):
            return 1.0
    return math.exp(float(log_t.detach()))


class TemperatureScaler(nn.Module):
    r"""Post-hoc temperature scaling as a module: ``forward(logits) = logits / T``.

    :math:`\log T` is a persistent buffer (not a parameter: an optimiser of the surrounding
    model must not train it), so it moves with ``.to()`` and is saved in checkpoints.
    :meth:`fit` sets it with :func:`fit_temperature`.

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
    ) -> TemperatureScaler:
        """Fit :math:`T` on held-out ``logits`` and ``labels`` (see :func:`fit_temperature`)."""
        t = fit_temperature(logits, labels, max_iter, ignore_index=ignore_index)
        self.log_temperature.fill_(math.log(t))
        return self

    def forward(self, logits: Tensor) -> Tensor:
        """``logits / T`` for logits of any shape with classes along dim 1 (or the last dim)."""
        return logits * torch.exp(-self.log_temperature).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4f}"
