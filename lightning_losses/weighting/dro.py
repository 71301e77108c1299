r"""Distributionally robust best responses: per-sample losses in, simplex weights out.

Each oracle maps the losses of a batch :math:`v \in \mathbb{R}^m` to weights :math:`p` on the
simplex :math:`\Delta_m` (non-negative, summing to 1) that maximise a stated objective
:math:`\langle p, v\rangle - \text{penalty}(p)` over an uncertainty set around the uniform
weights :math:`u = \mathbf{1}/m`. The weights are computed **without gradient**: the caller
forms the robust loss ``(p * losses).sum()`` with ``p`` detached, which by Danskin's theorem has
the gradient of the robust objective. Weights keep the dtype and device of ``losses``; the
computation runs in float64 and is cast back.

To use a result as ``sample_weight`` of a loss (whose ``"mean"`` is ``sum(w * l) / N``), pass
``m * p``: then the mean equals ``sum(p * l)``.

The dual solvers (CVaR-KL, chi-square ball, chi-square penalty) all find one scalar
:math:`\eta` with :func:`_bisect`, a fixed number of bisection steps on a bracket known in
closed form, so they contain no data-dependent Python branches. The spectral-risk oracle with a
shift cost solves an isotonic regression with the min-max formula (:func:`_isotonic_fit`), a
vectorised O(m²) search. No oracle reads a value back to the host: tied losses are grouped
without ``unique`` (whose output size depends on the data) and the checks of ``losses`` and of a
spectrum run on the device (:func:`~lightning_losses._checks.check_on_device`), so a GPU never
waits for its queue to drain.

References: Levy, Carmon, Duchi, Sidford, *Large-Scale Methods for Distributionally Robust
Optimization*, NeurIPS 2020 (CVaR, KL-CVaR, chi-square); Mehta, Roulet, Pillutla, Harchaoui,
*Distributionally Robust Optimization with Bias and Variance Reduction*, ICLR 2024 (spectral
risk, PAV); Sagawa, Koh, Hashimoto, Liang, *Distributionally Robust Neural Networks for Group
Shifts*, ICLR 2020 (group DRO).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_int,
    check_on_device,
    check_positive,
    check_range,
    check_tensor,
)

#: Bisection steps of every dual solver. Each step halves the bracket, so 100 steps reach the
#: resolution of float64 for any bracket a batch of finite losses can produce.
BISECTION_STEPS = 100
PENALTIES = ("chi2", "kl")
_WORK = torch.float64


# ----------------------------------------------------------------------------- helpers


def _prepare(losses: Tensor) -> Tensor:
    """Validate a loss vector and return a detached float64 copy."""
    check_tensor(losses, "losses")
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(
            f"`losses` must be a non-empty 1-D tensor (m,) of per-sample losses; got shape "
            f"{tuple(losses.shape)}."
        )
    if not losses.is_floating_point():
        raise TypeError(f"`losses` must be a floating-point tensor; got dtype {losses.dtype}.")
    check_finite(losses, "losses")
    return losses.detach().to(_WORK)


def _bisect(fn: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor) -> Tensor:
    r"""Root of a non-increasing scalar function on ``[lo, hi]`` with ``fn(lo) >= 0 >= fn(hi)``.

    Runs :data:`BISECTION_STEPS` halvings (no early exit, so no data-dependent branch) and
    returns the lower end of the final bracket, the side where ``fn >= 0``.
    """
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        above = fn(mid) >= 0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return lo


def _top_set(v: Tensor) -> Tensor:
    """Uniform weights on the maximal losses (ties share the mass)."""
    top = (v == v.max()).to(v.dtype)
    return top / top.sum()


def _positional(v: Tensor, sigma: Tensor) -> Tensor:
    """Weight ``sigma[j]`` on the loss of ascending rank ``j``; tied losses share their weights.

    Averaging within a tie keeps the objective value (tied losses are interchangeable) and the
    feasibility (a convex combination of permutations of ``sigma``), and makes the result
    independent of the order of the input.
    """
    order = torch.argsort(v, stable=True)
    group = _runs(v[order])
    ones = torch.ones_like(v)
    counts = torch.zeros_like(v).index_add(0, group, ones)  # one slot per run, unused ones 0
    tie_mean = torch.zeros_like(v).index_add(0, group, sigma) / counts.clamp_min(1)
    return torch.empty_like(v).scatter(0, order, tie_mean[group])


def _runs(sorted_values: Tensor) -> Tensor:
    """Index of the run of equal values each entry of a sorted vector belongs to, (m,).

    What ``unique_consecutive(..., return_inverse=True)`` returns, without its data-dependent
    output size: the runs are numbered 0, 1, ... and at most m of them exist.
    """
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return torch.cumsum(starts, 0) - 1


def _out(p: Tensor, like: Tensor) -> Tensor:
    return p.to(dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------- CVaR


@torch.no_grad()
def cvar_weights(losses: Tensor, alpha: float) -> Tensor:
    r"""Best response for the conditional value at risk at level :math:`\alpha`.

    .. math::
        p^\star = \arg\max_{p \in \Delta_m,\ p_i \le 1/(\alpha m)} \langle p, v\rangle

    The top :math:`\lfloor \alpha m\rfloor` losses get :math:`1/(\alpha m)`, the next one the
    remainder :math:`1 - \lfloor \alpha m\rfloor/(\alpha m)`, and :math:`\langle p^\star,
    v\rangle` is the mean of the worst :math:`\alpha`-fraction. Tied losses share their mass
    equally, so the weights do not depend on the order of the batch. :math:`\alpha = 1` gives
    the uniform weights (the empirical mean).

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        alpha: tail fraction :math:`\alpha \in (0, 1]`; no default, it is task-specific
            (0.02 in the MNIST runs of Levy et al.).

    Cost: one sort, O(m log m).
    """
    v = _prepare(losses)
    alpha = check_range(alpha, "alpha", 0.0, 1.0, closed="right")
    return _out(_positional(v, spectrum_superquantile(v.numel(), alpha, device=v.device)), losses)


@torch.no_grad()
def cvar_kl_weights(losses: Tensor, alpha: float, reg: float) -> Tensor:
    r"""Best response for CVaR with a KL penalty towards the uniform weights.

    .. math::
        p^\star = \arg\max_{p \in \Delta_m,\ p_i \le 1/(\alpha m)}
            \langle p, v\rangle - \lambda\, \mathrm{KL}(p \,\|\, u),
        \qquad p^\star_i = \frac{1}{m}\min\!\Big(e^{(v_i - \eta)/\lambda},\ \frac{1}{\alpha}\Big)

    with :math:`\eta` found by bisection so that :math:`\sum_i p^\star_i = 1`. The bracket is
    :math:`[\min v + \lambda \log\alpha,\ \lambda \log \frac{1}{m}\sum_i e^{v_i/\lambda}]`: at
    the left end every weight is capped (sum :math:`1/\alpha \ge 1`), at the right end the
    uncapped weights sum to 1. :math:`\lambda \to 0` recovers :func:`cvar_weights`,
    :math:`\alpha = 1` the uniform weights.

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        alpha: tail fraction :math:`\alpha \in (0, 1]`.
        reg: KL strength :math:`\lambda > 0`.

    Cost: :data:`BISECTION_STEPS` passes over the batch, O(m) each.
    """
    v = _prepare(losses)
    alpha = check_range(alpha, "alpha", 0.0, 1.0, closed="right")
    reg = check_positive(reg, "reg")
    m = v.numel()
    log_cap = -math.log(alpha)

    def weights(eta: Tensor) -> Tensor:
        return torch.exp(torch.clamp((v - eta) / reg, max=log_cap)) / m

    lo = v.min() - reg * log_cap
    hi = reg * (torch.logsumexp(v / reg, 0) - math.log(m))
    p = weights(_bisect(lambda eta: weights(eta).sum() - 1.0, lo, hi))
    return _out(p / p.sum(), losses)


# ----------------------------------------------------------------------------- chi-square


def _relu_root(v: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Bracket ``[lo, max v]`` for ``eta`` with ``sum relu(v - eta) = level`` (``level > 0``).

    When ``eta <= min v`` the sum is linear, ``m (mean v - eta)``, so its root ``mean v -
    level / m`` is exact when it lies below ``min v``; otherwise the root is in ``[min v, max v]``.
    """
    return torch.minimum(v.mean() - level / v.numel(), v.min()), v.max()


@torch.no_grad()
def chi_square_weights(losses: Tensor, rho: float) -> Tensor:
    r"""Best response over a :math:`\chi^2` ball around the uniform weights.

    .. math::
        p^\star = \arg\max_{p \in \Delta_m} \langle p, v\rangle
        \quad\text{s.t.}\quad \tfrac{1}{2}\,\tfrac{1}{m}\sum_i (m p_i - 1)^2 \le \rho,
        \qquad p^\star_i = \frac{(v_i - \eta)_+}{\sum_j (v_j - \eta)_+}

    with :math:`\eta` chosen by bisection so that the constraint is tight. The divergence of
    :math:`p(\eta)` grows with :math:`\eta`; for :math:`\eta \le \min v` it equals
    :math:`\tfrac{1}{2}\mathrm{Var}(v)/(\bar v - \eta)^2`, which gives the left end of the
    bracket :math:`\min(\bar v - \mathrm{sd}(v)/\sqrt{2\rho},\ \min v)` in closed form.

    Inactive constraint: a point mass has divergence :math:`(m-1)/2`, so when
    :math:`m \le 1 + 2\rho` (the fallback of fast-dro) every point of the simplex is feasible
    and the answer is the uniform weight on the largest losses. The same answer comes out of the
    bisection whenever the ball contains it. Equal losses give uniform weights; :math:`\rho = 0`
    gives the uniform weights.

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        rho: radius :math:`\rho \ge 0` (1.0 in the ImageNet runs of Levy et al., batch 500).

    Cost: :data:`BISECTION_STEPS` passes over the batch, O(m) each.
    """
    v = _prepare(losses)
    rho = check_positive(rho, "rho", allow_zero=True)
    m = v.numel()
    if rho == 0.0:
        return _out(torch.full_like(v, 1.0 / m), losses)
    if m <= 1 + 2 * rho:
        return _out(_top_set(v), losses)

    def weights(eta: Tensor) -> Tensor:
        r = torch.relu(v - eta)
        s = r.sum()
        return torch.where(s > 0, r / s.clamp_min(torch.finfo(_WORK).tiny), _top_set(v))

    def slack(eta: Tensor) -> Tensor:  # >= 0 inside the ball, non-increasing in eta
        return rho - 0.5 * (m * weights(eta) - 1.0).square().mean()

    lo = torch.minimum(v.mean() - v.std(correction=0) / math.sqrt(2 * rho), v.min())
    return _out(weights(_bisect(slack, lo, v.max())), losses)


@torch.no_grad()
def chi_square_penalized_weights(losses: Tensor, reg: float) -> Tensor:
    r"""Best response with a :math:`\chi^2` penalty towards the uniform weights.

    .. math::
        p^\star = \arg\max_{p \in \Delta_m} \langle p, v\rangle
            - \lambda\, \tfrac{1}{2}\,\tfrac{1}{m}\sum_i (m p_i - 1)^2,
        \qquad p^\star_i = \frac{(v_i - \eta)_+}{\lambda m}

    with :math:`\eta` found by bisection so that :math:`\sum_i (v_i - \eta)_+ = \lambda m`
    (closed form :math:`\eta = \bar v - \lambda` when that lies below :math:`\min v`, i.e. when
    every weight is positive). Large :math:`\lambda` tends to the uniform weights, small
    :math:`\lambda` to the largest losses.

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        reg: penalty strength :math:`\lambda > 0`.

    Cost: :data:`BISECTION_STEPS` passes over the batch, O(m) each.
    """
    v = _prepare(losses)
    reg = check_positive(reg, "reg")
    m = v.numel()
    lo, hi = _relu_root(v, reg * m)
    eta = _bisect(lambda e: torch.relu(v - e).sum() - reg * m, lo, hi)
    p = torch.relu(v - eta) / (reg * m)
    return _out(p / p.sum(), losses)


# ----------------------------------------------------------------------------- KL


@torch.no_grad()
def kl_weights(losses: Tensor, temperature: float) -> Tensor:
    r"""Best response with a KL penalty: the softmax of the losses.

    .. math::
        p^\star = \arg\max_{p \in \Delta_m} \langle p, v\rangle - r\,\mathrm{KL}(p \,\|\, u)
            = \mathrm{softmax}(v / r),
        \qquad \langle p^\star, v\rangle - r\,\mathrm{KL} = r \log \tfrac{1}{m}\sum_i e^{v_i/r}

    :math:`r \to \infty` gives the uniform weights, :math:`r \to 0` the largest loss. No
    default: the temperature is tuned per task (Doubly Robust Instance-Reweighted Adversarial
    Training, ICLR 2024).

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        temperature: :math:`r > 0`.

    Cost: one softmax, O(m).
    """
    v = _prepare(losses)
    temperature = check_positive(temperature, "temperature")
    return _out(torch.softmax(v / temperature, 0), losses)


# ----------------------------------------------------------------------------- spectral risk


def _grid(m: int, device: torch.device | str | None) -> Tensor:
    check_int(m, "m", 1)
    return torch.arange(m + 1, dtype=_WORK, device=device) / m


def spectrum_superquantile(
    m: int, alpha: float, *, device: torch.device | str | None = None
) -> Tensor:
    r"""Spectrum of the superquantile (CVaR) of tail fraction :math:`\alpha`, ascending, (m,).

    .. math::
        \sigma_i = \frac{1}{\alpha}\,\Big|\Big[\tfrac{i-1}{m}, \tfrac{i}{m}\Big] \cap
            [1-\alpha, 1]\Big|,\qquad i = 1, \dots, m

    so the top :math:`\lfloor\alpha m\rfloor` sorted losses get :math:`1/(\alpha m)` and one
    more the remainder. ``deshift.make_superquantile_spectrum(m, 1 - alpha)`` is the same vector
    (its argument is the quantile level :math:`1-\alpha`). Float64.
    """
    alpha = check_range(alpha, "alpha", 0.0, 1.0, closed="right")
    t = _grid(m, device)
    cdf = torch.clamp(t - (1.0 - alpha), min=0.0) / alpha
    return (cdf[1:] - cdf[:-1]).clamp_min(0.0)


def spectrum_extremile(m: int, r: float, *, device: torch.device | str | None = None) -> Tensor:
    r"""Spectrum of the :math:`r`-extremile, ascending, (m,).

    .. math:: \sigma_i = \Big(\frac{i}{m}\Big)^r - \Big(\frac{i-1}{m}\Big)^r

    The expected maximum of :math:`r` draws from the empirical distribution (Daouia et al.,
    2019); :math:`r = 1` is the mean. Non-decreasing for :math:`r \ge 1`, which is required.
    As ``deshift.make_extremile_spectrum``. Float64.
    """
    r = check_range(r, "r", 1.0, math.inf, closed="left")
    t = _grid(m, device).pow(r)
    return t[1:] - t[:-1]


def spectrum_esrm(m: int, rho: float, *, device: torch.device | str | None = None) -> Tensor:
    r"""Spectrum of the exponential spectral risk measure with risk aversion :math:`\rho`, (m,).

    .. math::
        \sigma_i = \frac{e^{\rho\, i/m} - e^{\rho (i-1)/m}}{e^{\rho} - 1}
            = e^{\rho (i/m - 1)}\,\frac{1 - e^{-\rho/m}}{1 - e^{-\rho}}

    (Cotter and Dowd, 2006; ``deshift.make_esrm_spectrum``), computed in the second, overflow-free
    form; :math:`\rho = 0` is the mean. Float64.
    """
    rho = check_positive(rho, "rho", allow_zero=True)
    t = _grid(m, device)[1:]
    if rho == 0.0:
        return torch.full_like(t, 1.0 / m)
    return torch.exp(rho * (t - 1.0)) * (math.expm1(-rho / m) / math.expm1(-rho))


def _check_spectrum(spectrum: Tensor, m: int) -> Tensor:
    check_tensor(spectrum, "spectrum")
    if spectrum.shape != (m,):
        raise ValueError(
            f"`spectrum` must have one weight per loss, shape ({m},); got {tuple(spectrum.shape)}."
        )
    s = spectrum.detach().to(_WORK)
    check_finite(s, "spectrum")
    tol = 1e-9 if spectrum.dtype == torch.float64 else 1e-4
    order = "`spectrum` must be non-negative and non-decreasing (ascending order)."
    check_on_device(~((s < -tol).any() | (s[1:] < s[:-1] - tol).any()), order)
    total = s.sum()
    check_on_device(
        (total - 1.0).abs() <= tol,
        "`spectrum` must sum to 1; got another sum.",
        lambda: f"`spectrum` must sum to 1; got {float(total)!r}.",
    )
    s = s.clamp_min(0.0)
    return s / s.sum()


#: Rows of the (rows, m) blocks that :func:`_isotonic_fit` works on at a time: at most about
#: 2**22 entries (32 MiB in float64) per temporary.
_ISOTONIC_BLOCK = 1 << 22


def _isotonic_fit(
    m: int, like: Tensor, block_value: Callable[[int, Tensor, Tensor], Tensor]
) -> Tensor:
    r"""The non-decreasing fit of :math:`m` elements whose pooled blocks take ``block_value``.

    ``block_value(start, j, k)`` returns the value :math:`M(\{j, \dots, k\})` of every block of
    consecutive elements, for the rows ``j`` (a column of indices) and the columns
    ``k >= start`` (a row of indices) it is given; entries with :math:`k < j` are ignored. For
    a value that lies between the values of any two parts a block is split into (a Cauchy mean:
    the mean of the chi-square case, the log-mean-exp of the KL case), the fit that pool
    adjacent violators computes by merging is (Robertson, Wright, Dykstra, *Order Restricted
    Statistical Inference*, 1988, Thm 1.4.4)

    .. math:: x_i = \max_{j \le i}\ \min_{k \ge i}\ M(\{j, \dots, k\}).

    Here all blocks are evaluated at once, a band of rows :math:`j` at a time (about
    :data:`_ISOTONIC_BLOCK` entries per temporary): O(m²) work in O(m²/_ISOTONIC_BLOCK) steps
    whose number depends only on :math:`m`, and nothing read back to the host (pool adjacent
    violators is a sequential loop with a branch on every comparison).
    """
    idx = torch.arange(m, device=like.device)
    fit = torch.full((m,), -math.inf, dtype=like.dtype, device=like.device)
    rows = max(1, _ISOTONIC_BLOCK // m)
    for start in range(0, m, rows):  # rows j of the band; only columns k >= start matter
        j, k = idx[start : start + rows, None], idx[None, start:]
        upper = k >= j
        block = torch.where(upper, block_value(start, j, k), math.inf)
        tail_min = block.flip(1).cummin(1).values.flip(1)  # min over k >= i, per row j
        tail_min = torch.where(upper, tail_min, -math.inf)  # only rows j <= i
        fit[start:] = torch.maximum(fit[start:], tail_min.amax(0))
    return fit


@torch.no_grad()
def spectral_risk_weights(
    losses: Tensor, spectrum: Tensor, shift_cost: float = 0.0, penalty: str = "chi2"
) -> Tensor:
    r"""Best response of a spectral risk measure with an optional shift cost.

    The uncertainty set is the permutahedron :math:`\mathcal{P}(\sigma)`, the convex hull of the
    permutations of a non-decreasing spectrum :math:`\sigma` (summing to 1):

    .. math::
        p^\star = \arg\max_{q \in \mathcal{P}(\sigma)} \langle q, v\rangle - \nu\, D(q \,\|\, u)

    * :math:`\nu = 0`: :math:`p^\star_{(i)} = \sigma_i`, the :math:`i`-th smallest loss gets the
      :math:`i`-th spectrum weight (tied losses share their weights).
    * ``penalty="chi2"``: :math:`D(q\|u) = \tfrac{1}{2}\|q - u\|_2^2`; :math:`p^\star` is the
      Euclidean projection of :math:`u + v/\nu` onto :math:`\mathcal{P}(\sigma)`:
      with :math:`s` the losses over :math:`\nu` sorted ascending, :math:`q = s + u - x` where
      :math:`x` is the non-decreasing least-squares fit of :math:`s + u - \sigma` (PAV).
    * ``penalty="kl"``: :math:`D(q\|u) = \mathrm{KL}(q \,\|\, u)`; :math:`q_i = e^{s_i - x_i}/m`
      with :math:`x` the non-decreasing fit under the entropy geometry: on a pooled block
      :math:`B`, :math:`x_B = \log\sum_B e^{s_i} - \log\sum_B \sigma_i - \log m`, so the block's
      mass is :math:`\sum_B \sigma_i`, spread as a softmax of its losses.

    :math:`\nu` uses the scaling of the ``deshift`` package (``shift_cost``), so its values carry
    over. :math:`\nu \to \infty` gives the uniform weights, :math:`\nu \to 0` the spectrum.

    Args:
        losses: per-sample losses :math:`v`, shape (m,).
        spectrum: :math:`\sigma`, shape (m,), non-negative, non-decreasing, summing to 1
            (:func:`spectrum_superquantile`, :func:`spectrum_extremile`, :func:`spectrum_esrm`).
        shift_cost: :math:`\nu \ge 0`; 0 by default (the plain spectral risk).
        penalty: ``"chi2"`` or ``"kl"``.

    Cost: one sort; with :math:`\nu > 0` also the isotonic fit (:func:`_isotonic_fit`), O(m²)
    vectorised work on the losses' device, in blocks of about 2**22 entries, with no read back to
    the host (the same fit as pool adjacent violators, up to rounding).
    """
    v = _prepare(losses)
    m = v.numel()
    sigma = _check_spectrum(spectrum, m).to(v.device)
    shift_cost = check_positive(shift_cost, "shift_cost", allow_zero=True)
    check_choice(penalty, PENALTIES, "penalty")
    if shift_cost == 0.0:
        return _out(_positional(v, sigma), losses)

    order = torch.argsort(v, stable=True)
    s = v[order] / shift_cost
    log_m = math.log(m)
    if penalty == "chi2":  # block value: the mean of y = s + 1/m - sigma over the block
        y = s + 1.0 / m - sigma

        def mean(start: int, j: Tensor, k: Tensor) -> Tensor:
            sums = torch.where(k >= j, y[start:], 0.0).cumsum(1)
            return sums / (k - j + 1)

        q = (s + 1.0 / m - _isotonic_fit(m, v, mean)).clamp_min(0.0)
    else:  # block value: log sum exp(s) - log sum sigma - log m over the block

        def log_mean(start: int, j: Tensor, k: Tensor) -> Tensor:
            upper = k >= j
            top = torch.where(upper, s[start:], -math.inf).logcumsumexp(1)
            mass = torch.where(upper, sigma[start:], 0.0).cumsum(1)
            return top - mass.log() - log_m

        q = torch.exp(s - _isotonic_fit(m, v, log_mean) - log_m)
    p = torch.empty_like(v).scatter(0, order, q)
    return _out(p / p.sum(), losses)


# ----------------------------------------------------------------------------- group DRO


@torch.no_grad()
def group_dro_update(
    q: Tensor,
    group_losses: Tensor,
    group_counts: Tensor,
    step_size: float = 0.01,
    adjustment: float = 0.0,
    group_sizes: Tensor | None = None,
) -> Tensor:
    r"""One exponentiated-gradient step of group DRO on the group weights :math:`q`.

    .. math::
        \tilde L_g = L_g + \frac{C}{\sqrt{n_g}},\qquad
        q_g \leftarrow \frac{q_g\, e^{\eta \tilde L_g}}{\sum_h q_h\, e^{\eta \tilde L_h}}

    and the training loss is :math:`\sum_g q_g L_g` with :math:`q` detached. Groups absent from
    the batch (``group_counts == 0``) get no step and keep their weight exactly; the groups
    present share the remaining mass :math:`\sum_{g\ \mathrm{present}} q_g` in proportion to
    :math:`q_g e^{\eta \tilde L_g}`. (The reference code gives an absent group the loss 0, so its
    weight shrinks when the others grow; absence from one batch is no evidence of a small loss.)
    A batch with no group present returns ``q`` unchanged. The losses of absent groups are not
    read, so they may be NaN (a 0/0 mean).

    Pure: returns a new tensor; the state (``q``) lives with the caller (a callback that saves it
    in its ``state_dict`` and, under DDP, updates it from all-reduced group sums so that every
    rank holds the same ``q``).

    Args:
        q: current group weights (G,), on the simplex (start from uniform).
        group_losses: mean loss of each group in the batch :math:`L_g`, (G,).
        group_counts: number of samples of each group in the batch, (G,).
        step_size: :math:`\eta \ge 0`; 0.01 (Sagawa et al.).
        adjustment: :math:`C \ge 0`, the generalisation adjustment; 0 (Sagawa et al. tune it).
        group_sizes: :math:`n_g`, the training-set group sizes (G,) the adjustment divides by, as
            in the reference code; required when ``adjustment > 0``.

    Cost: O(G).
    """
    check_tensor(q, "q")
    check_tensor(group_losses, "group_losses")
    check_tensor(group_counts, "group_counts")
    if q.ndim != 1 or q.numel() == 0 or not q.is_floating_point():
        raise ValueError(f"`q` must be a non-empty 1-D float tensor (G,); got {tuple(q.shape)}.")
    g = q.numel()
    for name, t in (("group_losses", group_losses), ("group_counts", group_counts)):
        if t.shape != (g,):
            raise ValueError(
                f"`{name}` must have one entry per group, shape ({g},); got {tuple(t.shape)}."
            )
    step_size = check_positive(step_size, "step_size", allow_zero=True)
    adjustment = check_positive(adjustment, "adjustment", allow_zero=True)
    present = group_counts.to(q.device) > 0
    loss = torch.where(present, group_losses.detach().to(q.device, _WORK), 0.0)
    check_finite(loss, "group_losses")
    if adjustment > 0:
        if group_sizes is None:
            raise ValueError(
                "`group_sizes` (training-set samples per group, (G,)) is required when "
                "`adjustment` > 0: the adjustment is C / sqrt(n_g)."
            )
        check_tensor(group_sizes, "group_sizes")
        sizes = group_sizes.detach().to(q.device, _WORK)
        expected = f"`group_sizes` must be positive, shape ({g},)"
        if sizes.shape != (g,):
            raise ValueError(f"{expected}; got shape {tuple(sizes.shape)}.")
        check_on_device(
            (sizes > 0).all(),
            f"{expected}; got a size <= 0.",
            lambda: f"{expected}; got {sizes.tolist()}.",
        )
        loss = loss + adjustment / sizes.sqrt()
    q64 = q.detach().to(_WORK)
    logits = torch.where(present, torch.log(q64) + step_size * loss, -math.inf)
    mass = torch.where(present, q64, 0.0).sum()
    stepped = torch.where(present, mass * torch.softmax(logits, 0), q64)
    new = torch.where(present.any(), stepped, q64)
    return (new / new.sum()).to(q.dtype)


__all__ = [
    "BISECTION_STEPS",
    "PENALTIES",
    "chi_square_penalized_weights",
    "chi_square_weights",
    "cvar_kl_weights",
    "cvar_weights",
    "group_dro_update",
    "kl_weights",
    "spectral_risk_weights",
    "spectrum_esrm",
    "spectrum_extremile",
    "spectrum_superquantile",
]
