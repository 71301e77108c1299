"""Figures of the curvature and landscape diagnostics (numpy + matplotlib only).

Every function takes plain arrays (numpy arrays, lists or tensors; results of this package can
be passed field by field), draws on a :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot, no global backend change, no display needed) and, when ``path`` is given, also saves it
as a PNG. The :class:`~lightning_losses.callbacks.loss_landscape.LossLandscape` callback hands
the returned figures to the attached logger.

* :func:`plot_spectral_density` — the SLQ eigenvalue density on a log scale, with the top
  eigenvalues marked;
* :func:`plot_line_slice` — ``L(θ + α d)`` along one filter-normalised direction;
* :func:`plot_plane_slice` — filled contours of ``L(θ + α δ + β η)``;
* :func:`plot_sharpness_history` — λ_max against the stability threshold over training
  (edge of stability, Cohen et al., ICLR 2021);
* :func:`plot_per_class` — per-class top eigenvalue and trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_line_slice",
    "plot_per_class",
    "plot_plane_slice",
    "plot_sharpness_history",
    "plot_spectral_density",
]

PathArg = str | PathLike[str] | None


def _array(value: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty {ndim}-D array; got shape {arr.shape}.")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    sizes = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"these arrays must have the same length; got {sizes}.")


def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: PathArg, dpi: int) -> Figure:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png", dpi=dpi)
    return fig


def plot_spectral_density(
    grid: Any,
    density: Any,
    path: PathArg = None,
    *,
    eigenvalues: Any = None,
    title: str = "Hessian eigenvalue density (SLQ)",
    floor: float = 1e-12,
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Figure:
    """The smoothed density ``φ_σ(t)`` (log y-axis, clipped below at ``floor``).

    Args:
        grid: points ``t`` (G,), e.g. ``SpectralDensity.grid()``.
        density: ``φ_σ(t)`` at those points (G,), e.g. ``SpectralDensity.density(grid)``.
        path: where to write the PNG, or None.
        eigenvalues: optional top eigenvalues (k,) drawn as dashed vertical lines.
        title: figure title.
        floor: smallest density shown (the log scale cannot show 0).
        figsize, dpi: figure size in inches and PNG resolution.
    """
    t = _array(grid, "grid", 1)
    phi = _array(density, "density", 1)
    _same_length(grid=t, density=phi)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    ax.semilogy(t, np.maximum(phi, floor), color="#4c72b0", linewidth=1.2)
    if eigenvalues is not None:
        for i, lam in enumerate(_array(eigenvalues, "eigenvalues", 1)):
            ax.axvline(
                lam,
                color="#d62728",
                linestyle="--",
                linewidth=0.8,
                label="top eigenvalues (Lanczos)" if i == 0 else None,
            )
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_line_slice(
    alphas: Any,
    losses: Any,
    path: PathArg = None,
    *,
    title: str = "Loss along a filter-normalised direction",
    figsize: tuple[float, float] = (5.0, 4.0),
    dpi: int = 100,
) -> Figure:
    """``L(θ + α d)`` against ``α`` (the point α = 0 is the current model)."""
    a = _array(alphas, "alphas", 1)
    values = _array(losses, "losses", 1)
    _same_length(alphas=a, losses=values)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    ax.plot(a, values, marker="o", markersize=3, color="#4c72b0")
    ax.axvline(0.0, color="gray", linestyle=":", linewidth=1.0)
    ax.set_xlabel("α")
    ax.set_ylabel("probe loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_plane_slice(
    alphas: Any,
    betas: Any,
    losses: Any,
    path: PathArg = None,
    *,
    levels: int = 20,
    log_scale: bool = False,
    title: str = "Loss on a filter-normalised plane",
    figsize: tuple[float, float] = (5.5, 4.5),
    dpi: int = 100,
) -> Figure:
    """Filled contours of ``losses[i, j] = L(θ + alphas[i]·δ + betas[j]·η)``.

    Args:
        alphas, betas: the grid coordinates (A,) and (B,).
        losses: (A, B); non-finite values (a diverged point) are left blank.
        levels: number of contour levels (>= 2).
        log_scale: contour ``log10(loss)`` instead of the loss (for a wide range of values).
    """
    a = _array(alphas, "alphas", 1)
    b = _array(betas, "betas", 1)
    z = _array(losses, "losses", 2)
    if z.shape != (a.size, b.size):
        raise ValueError(
            f"`losses` must have shape (len(alphas), len(betas)) = ({a.size}, {b.size}); got "
            f"{z.shape}."
        )
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"`levels` must be an integer >= 2; got {levels!r}.")
    if log_scale:
        z = np.log10(np.where(z > 0, z, np.nan))
    z = np.ma.masked_invalid(z)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    # contourf takes (x, y, Z[y, x]): β on the vertical axis, α on the horizontal one.
    filled = ax.contourf(a, b, z.T, levels=levels, cmap="viridis")
    ax.contour(a, b, z.T, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(filled, ax=ax, label="log10 probe loss" if log_scale else "probe loss")
    ax.plot([0.0], [0.0], marker="*", color="#d62728", markersize=10)
    ax.set_xlabel("α (direction δ)")
    ax.set_ylabel("β (direction η)")
    ax.set_title(title)
    return _finish(fig, path, dpi)


def plot_sharpness_history(
    steps: Any,
    lambda_max: Any,
    path: PathArg = None,
    *,
    threshold: Any = None,
    threshold_label: str = "2/η",
    title: str = "Sharpness against the stability threshold",
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Figure:
    """λ_max over training, with the stability threshold (2/η, or (2+2β)/η) when given.

    Gradient descent with step size η on a quadratic diverges along directions with curvature
    above 2/η; full-batch training drives λ_max up to that value and hovers there (the edge of
    stability, Cohen et al., ICLR 2021). ``threshold`` entries that are NaN (no threshold known,
    e.g. for Adam) are not drawn.
    """
    x = _array(steps, "steps", 1)
    lam = _array(lambda_max, "lambda_max", 1)
    _same_length(steps=x, lambda_max=lam)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    ax.plot(x, lam, marker="o", markersize=4, color="#4c72b0", label="λ_max (probe set)")
    if threshold is not None:
        thr = _array(threshold, "threshold", 1)
        _same_length(steps=x, threshold=thr)
        if np.isfinite(thr).any():
            ax.plot(x, thr, linestyle="--", color="#d62728", label=threshold_label)
    ax.set_xlabel("global step")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi)


def plot_per_class(
    classes: Sequence[int] | Any,
    lambda_max: Any,
    trace: Any = None,
    path: PathArg = None,
    *,
    title: str = "Per-class curvature",
    figsize: tuple[float, float] = (6.0, 4.0),
    dpi: int = 100,
) -> Figure:
    """Bars of each class's top Hessian eigenvalue and, when given, its trace (second panel).

    A negative top eigenvalue, or a trace far below the others, flags a class whose loss sits
    near a saddle point (Rangwani et al., NeurIPS 2022).
    """
    c = _array(classes, "classes", 1)
    lam = _array(lambda_max, "lambda_max", 1)
    _same_length(classes=c, lambda_max=lam)
    panels = 1 if trace is None else 2
    fig = _figure(figsize, dpi)
    axes = np.atleast_1d(fig.subplots(1, panels))
    labels = [str(int(v)) for v in c]
    axes[0].bar(labels, lam, color="#4c72b0")
    axes[0].set_ylabel("top eigenvalue")
    axes[0].set_xlabel("class")
    axes[0].grid(alpha=0.3, axis="y")
    if trace is not None:
        tr = _array(trace, "trace", 1)
        _same_length(classes=c, trace=tr)
        axes[1].bar(labels, tr, color="#55a868")
        axes[1].set_ylabel("Hessian trace")
        axes[1].set_xlabel("class")
        axes[1].grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    return _finish(fig, path, dpi)
