r"""Weight perturbations of flatness-seeking training: SAM, ASAM and AWP (pure PyTorch).

All three methods take the gradient :math:`g` at the weights :math:`w`, move the weights to
:math:`w + e` (an approximate worst case in a small neighbourhood), take the gradient there and
apply it at :math:`w`. They differ only in :math:`e`, which the functions below compute; the
Lightning side (two passes, precision, DDP) is :mod:`lightning_losses.callbacks.sam`.

Every function takes parallel sequences of weight tensors and their gradients and returns one
perturbation per tensor (new tensors; the inputs are left untouched). The norms are accumulated in
at least float32, and the perturbations come back in each weight's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_positive

#: Added to the norms a perturbation divides by, so that a zero gradient gives ``e = 0``
#: (davda54/sam adds 1e-12; SamsungLabs/ASAM adds 1e-16; both are far below any real norm).
EPS = 1e-12


def _check_pairs(weights: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    if len(weights) != len(grads):
        raise ValueError(
            f"`grads` must hold one gradient per weight tensor ({len(weights)}); got {len(grads)}."
        )
    for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
        if w.shape != g.shape:
            raise ValueError(
                f"`grads[{i}]` must have the shape of `weights[{i}]`, {tuple(w.shape)}; got "
                f"{tuple(g.shape)}."
            )


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 at least (float64 stays float64), for norms and products."""
    return x if x.dtype == torch.float64 else x.float()


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    r""":math:`\sqrt{\sum_i \lVert t_i \rVert_2^2}` over all tensors: 0-d, float32 at least.

    Non-finite entries give a non-finite norm, which is how callers detect an overflowed
    gradient. An empty sequence gives 0.
    """
    if not tensors:
        return torch.zeros(())
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(_wide(t)).to(device) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


def sam_perturbation(
    weights: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float,
    *,
    adaptive: bool | Sequence[bool] = False,
    eta: float = 0.01,
) -> list[Tensor]:
    r"""SAM's (and ASAM's) ascent step :math:`\hat e = \rho\, T^2 g / \lVert T g \rVert_2`.

    With :math:`T = I` this is SAM (Foret et al., ICLR 2021, eq. 2):
    :math:`\hat e = \rho\, g / \lVert g \rVert_2`, the maximiser of the first-order expansion of
    :math:`L(w + e)` over :math:`\lVert e \rVert_2 \le \rho`. ASAM (Kwon et al., ICML 2021)
    maximises over the adaptive ball :math:`\lVert T_w^{-1} e \rVert_2 \le \rho` with the
    element-wise :math:`T_w = |w| + \eta`, which gives
    :math:`\hat e = \rho\, T_w^2 g / \lVert T_w g \rVert_2`. One norm runs over **all** tensors
    (a single ball in the full parameter space).

    Args:
        weights: the weight tensors :math:`w_i`.
        grads: their gradients :math:`g_i` (same shapes).
        rho: radius :math:`\rho \ge 0`; ``0`` gives exact zeros.
        adaptive: ``False`` for SAM; ``True`` for ASAM on every tensor; or one flag per tensor
            (SamsungLabs/ASAM scales only parameters whose name contains ``"weight"`` and uses
            :math:`T = I` for the others, biases for example).
        eta: ASAM's :math:`\eta \ge 0` (its default 0.01); ignored where ``adaptive`` is off.

    Returns:
        The perturbations :math:`\hat e_i`, one per weight tensor, in the weights' dtypes.

    Example:
        >>> w, g = [torch.tensor([3.0, 4.0])], [torch.tensor([0.0, 2.0])]
        >>> sam_perturbation(w, g, rho=0.5)
        [tensor([0.0000, 0.5000])]
    """
    rho = check_positive(rho, "rho", allow_zero=True)
    eta = check_positive(eta, "eta", allow_zero=True)
    _check_pairs(weights, grads)
    flags = [bool(adaptive)] * len(weights) if isinstance(adaptive, bool) else list(adaptive)
    if len(flags) != len(weights):
        raise ValueError(
            f"`adaptive` must be a bool or one flag per weight tensor ({len(weights)}); got "
            f"{len(flags)} flags."
        )
    scales = [_wide(w).abs() + eta if a else None for w, a in zip(weights, flags, strict=True)]
    scaled = [_wide(g) if t is None else t * _wide(g) for g, t in zip(grads, scales, strict=True)]
    factor = rho / (global_norm(scaled) + EPS)
    out = []
    for w, s, t in zip(weights, scaled, scales, strict=True):
        e = s if t is None else t * s  # T^2 g
        out.append((e * factor.to(e.device)).to(w.dtype))
    return out


def awp_perturbation(
    weights: Sequence[Tensor], grads: Sequence[Tensor], gamma: float
) -> list[Tensor]:
    r"""AWP's layer-wise step :math:`v_l = \gamma \lVert w_l \rVert_2\, g_l / \lVert g_l \rVert_2`.

    Wu, Xia, Wang, *Adversarial Weight Perturbation Helps Robust Generalization*, NeurIPS 2020:
    one ascent step on the loss, rescaled per weight tensor :math:`l` so that
    :math:`\lVert v_l \rVert_2 = \gamma \lVert w_l \rVert_2` (the feasible set
    :math:`\lVert v_l \rVert \le \gamma \lVert w_l \rVert` of the paper's eq. 8). In
    csdongxian/AWP the direction is one SGD step of a proxy model on the loss, which is
    proportional to :math:`g_l` (``diff_in_weights`` there divides by ``norm + 1e-20``; here
    by ``norm +`` :data:`EPS`).

    Args:
        weights: the weight tensors :math:`w_l` (the reference perturbs only those with more than
            one dimension whose name contains ``"weight"``; choosing them is the caller's job).
        grads: their gradients :math:`g_l`.
        gamma: relative size :math:`\gamma \ge 0`; ``0`` gives exact zeros.

    Returns:
        The perturbations :math:`v_l`, one per weight tensor, in the weights' dtypes.

    Example:
        >>> w, g = [torch.tensor([3.0, 4.0])], [torch.tensor([0.0, -2.0])]
        >>> awp_perturbation(w, g, gamma=0.1)
        [tensor([ 0.0000, -0.5000])]
    """
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    _check_pairs(weights, grads)
    out = []
    for w, g in zip(weights, grads, strict=True):
        gw = _wide(g)
        scale = gamma * torch.linalg.vector_norm(_wide(w)) / (torch.linalg.vector_norm(gw) + EPS)
        out.append((gw * scale).to(w.dtype))
    return out


__all__ = ["EPS", "awp_perturbation", "global_norm", "sam_perturbation"]
