"""Reliability diagram: accuracy per confidence bin against the diagonal, and bin counts.

Drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global
backend change, no display needed), so it is safe in training scripts and on servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_KEYS = ("confidence", "accuracy", "count")


def _as_array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"`bins[{name!r}]` must be 1-D, one value per bin; got shape {arr.shape}.")
    return arr


def plot_reliability_diagram(
    bins: Mapping[str, Any],
    path: str | PathLike[str] | None = None,
    title: str = "Reliability diagram",
    *,
    figsize: tuple[float, float] = (5.0, 6.0),
    dpi: int = 100,
) -> Figure:
    """Plot reliability-diagram data and, when ``path`` is given, save it as a PNG.

    The top panel shows the accuracy of each confidence bin as a bar, the diagonal of perfect
    calibration, and the gap between each bin's accuracy and its mean confidence as a shaded
    bar (red: over-confident, accuracy below confidence; orange: under-confident). The bottom
    panel shows how many samples fall in each bin. The title carries the ECE of the bins.

    Args:
        bins: the ``"reliability"`` entry of :meth:`CalibrationReport.compute`, or the result of
            :func:`reliability_bins`: a mapping with ``confidence``, ``accuracy`` and ``count``
            (one value per bin; tensors, arrays or lists), and optionally ``edges`` (B + 1 values;
            equal-width bins on [0, 1] if absent) and ``ece``.
        path: where to write the PNG (``figsize * dpi`` pixels), or None to only return it.
        title: title text; `` (ECE = ...)`` is appended.
        figsize: figure size in inches.
        dpi: resolution of the saved PNG.

    Returns:
        The :class:`~matplotlib.figure.Figure`.

    Example:
        >>> report = CalibrationReport(num_classes=10)
        >>> report.update(logits, labels)  # doctest: +SKIP
        >>> d = report.compute()  # doctest: +SKIP
        >>> fig = plot_reliability_diagram(d["reliability"], "rel.png")  # doctest: +SKIP
    """
    if not isinstance(bins, Mapping):
        raise TypeError(f"`bins` must be a mapping with keys {_KEYS}; got {type(bins).__name__}.")
    missing = [k for k in _KEYS if k not in bins]
    if missing:
        raise ValueError(f"`bins` lacks the key(s) {missing}; it must hold {_KEYS}.")
    conf, acc, count = (_as_array(bins[k], k) for k in _KEYS)
    n_bins = conf.size
    if n_bins < 1 or acc.size != n_bins or count.size != n_bins:
        raise ValueError(
            "`bins` entries must have the same length >= 1; got confidence "
            f"{conf.size}, accuracy {acc.size}, count {count.size}."
        )
    edges = (
        _as_array(bins["edges"], "edges") if "edges" in bins else np.linspace(0.0, 1.0, n_bins + 1)
    )
    if edges.size != n_bins + 1:
        raise ValueError(f"`bins['edges']` must have {n_bins + 1} entries; got {edges.size}.")
    total = count.sum()
    if "ece" in bins:
        ece = float(bins["ece"])
    else:
        ece = float((np.abs(acc - conf) * count).sum() / total) if total > 0 else 0.0

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    left, width = edges[:-1], np.diff(edges)
    filled = count > 0
    top.bar(
        left[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    gap = conf - acc
    over = filled & (gap > 0)
    under = filled & (gap < 0)
    for mask, color, label in (
        (over, "#d62728", "over-confident"),
        (under, "#ff7f0e", "under-confident"),
    ):
        if mask.any():
            top.bar(
                left[mask],
                gap[mask],
                bottom=acc[mask],
                width=width[mask],
                align="edge",
                color=color,
                alpha=0.3,
                edgecolor=color,
                hatch="//",
                linewidth=0.6,
                label=f"gap ({label})",
            )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title} (ECE = {ece:.4f})")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(left, count, width=width, align="edge", color="gray", edgecolor="black", lw=0.6)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    bottom.grid(alpha=0.3)
    if path is not None:
        fig.savefig(path, format="png", dpi=dpi)
    return fig
