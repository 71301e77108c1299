r"""Per-timestep loss weights for ε-, v- and x₀-prediction, and EDM's preconditioning.

Every weighting here is one objective in :math:`x_0` space,
:math:`w_{x_0}(\mathrm{SNR})\,\lVert\hat x_0 - x_0\rVert^2`, written in the space the network
predicts. The identities of :mod:`~lightning_losses.diffusion.targets`,
:math:`\lVert\hat\varepsilon-\varepsilon\rVert^2 = \mathrm{SNR}\,\lVert\hat x_0-x_0\rVert^2` and
:math:`\lVert\hat v-v\rVert^2 = (\mathrm{SNR}+1)\,\lVert\hat x_0-x_0\rVert^2`, give

.. math::
    w_\varepsilon = w_{x_0} / \mathrm{SNR}, \qquad
    w_v = w_{x_0} / (\mathrm{SNR} + 1), \qquad
    w_{x_0} = w_{x_0}.

Each weight is computed in a form that stays finite at :math:`\mathrm{SNR} = 0` (a
zero-terminal-SNR schedule) and at large SNR; none divides by the SNR.

* ``"constant"``: 1 in the predicted space (the "simple" loss of Ho et al., NeurIPS 2020);
* ``"min_snr"``: :math:`w_{x_0} = \min(\mathrm{SNR}, \gamma)`, γ = 5 (Hang et al., ICCV 2023);
* ``"p2"``: :math:`w_\varepsilon = (k + \mathrm{SNR})^{-\gamma}`, k = 1, γ = 1 (Choi et al.,
  CVPR 2022);
* ``"debiased"``: :math:`w_\varepsilon = \mathrm{SNR}^{-1/2}`, capped (Yu et al. 2023);
* ``"edm"``: :math:`\lambda(\sigma)\,c_\text{out}^2 = 1` on the raw output of an
  EDM-preconditioned network (Karras et al., NeurIPS 2022).

Prediction types use diffusers' names: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (x₀), and
``"edm"`` for the raw output :math:`F_\theta` of an EDM-preconditioned network.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_number, check_positive

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "edm")
WEIGHTINGS = ("constant", "min_snr", "p2", "debiased", "edm")
#: Prediction types the SNR-based weightings are defined for (EDM has its own weight).
SNR_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str, weighting: str) -> str:
    """A prediction type the ``weighting`` supports; Min-SNR with EDM is refused by name."""
    check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")
    check_choice(weighting, WEIGHTINGS, "weighting")
    if weighting == "edm" and prediction_type != "edm":
        raise ValueError(
            f"`weighting='edm'` is EDM's weight λ(σ) on the preconditioned output and needs "
            f"`prediction_type='edm'`; got prediction_type={prediction_type!r}."
        )
    if prediction_type == "edm" and weighting != "edm":
        if weighting == "min_snr":
            raise ValueError(
                "`weighting='min_snr'` cannot be combined with `prediction_type='edm'`: EDM's "
                "preconditioning already sets the weight (λ(σ)·c_out² = 1), and Min-SNR-γ is "
                "defined for ε-, v- and x₀-prediction only. Use weighting='edm'."
            )
        raise ValueError(
            f"`prediction_type='edm'` takes `weighting='edm'` (λ(σ)·c_out² = 1, the safe form); "
            f"got weighting={weighting!r}, which is defined for {', '.join(SNR_PREDICTION_TYPES)}."
        )
    return prediction_type


def check_gamma(gamma: float, arg: str) -> float:
    value = check_number(gamma, arg)
    if value <= 0:
        raise ValueError(f"`{arg}` must be > 0; got {value!r}.")
    return value


def _from_epsilon_weight(w_eps: Tensor, snr: Tensor, prediction_type: str) -> Tensor:
    """An ε-space weight in another space: ×SNR/(SNR+1) for v, ×SNR for x₀ (both finite)."""
    if prediction_type == "epsilon":
        return w_eps
    if prediction_type == "v_prediction":
        return w_eps * (snr / (snr + 1.0))
    return w_eps * snr


def min_snr_weight(
    snr: Tensor, gamma: float = 5.0, prediction_type: str = "epsilon", floor: float = 0.0
) -> Tensor:
    r"""Min-SNR-γ weights (Hang et al., ICCV 2023): :math:`w_{x_0}=\min(\mathrm{SNR},\gamma)`.

    .. math::
        w_\varepsilon = \frac{\gamma}{\max(\mathrm{SNR}, \gamma)}, \quad
        w_v = \frac{\min(\mathrm{SNR}, \gamma)}{\mathrm{SNR} + 1}, \quad
        w_{x_0} = \min(\mathrm{SNR}, \gamma)

    :math:`w_\varepsilon` equals :math:`\min(\mathrm{SNR},\gamma)/\mathrm{SNR}` (diffusers'
    scripts) wherever that is defined, and is 1 at :math:`\mathrm{SNR}=0` where it is 0/0.

    **Zero terminal SNR.** :math:`w_v` and :math:`w_{x_0}` tend to 0 as the SNR does, so the
    last steps of a zero-terminal-SNR schedule get (almost) no gradient (diffusers issue #9451).
    ``floor`` > 0 keeps them trained: the weight becomes :math:`\max(w, \text{floor})`. The
    default, 0, is the paper's weight.

    Args:
        snr: SNR per sample (N,) (or any shape), :math:`\ge 0`.
        gamma: :math:`\gamma > 0`; 5 by default (the paper's choice).
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        floor: lower bound of the weight, :math:`\ge 0`; 0 (off) by default.
    """
    gamma = check_gamma(gamma, "gamma")
    floor = check_positive(floor, "floor", allow_zero=True)
    check_choice(prediction_type, SNR_PREDICTION_TYPES, "prediction_type")
    if prediction_type == "epsilon":
        w = gamma / snr.clamp_min(gamma)
    elif prediction_type == "v_prediction":
        w = snr.clamp_max(gamma) / (snr + 1.0)
    else:
        w = snr.clamp_max(gamma)
    return w.clamp_min(floor) if floor > 0 else w


def p2_weight(
    snr: Tensor, gamma: float = 1.0, k: float = 1.0, prediction_type: str = "epsilon"
) -> Tensor:
    r"""P2 weights (Choi et al., CVPR 2022): :math:`w_\varepsilon = (k + \mathrm{SNR})^{-\gamma}`.

    Other spaces by the identities above:
    :math:`w_v = w_\varepsilon\,\mathrm{SNR}/(\mathrm{SNR}+1)`,
    :math:`w_{x_0} = w_\varepsilon\,\mathrm{SNR}`. Defaults k = 1, γ = 1: the paper (and its
    code's README) uses k = 1 with γ ∈ {0.5, 1}, γ = 1 in its training command.
    """
    gamma = check_gamma(gamma, "p2_gamma")
    k = check_positive(k, "p2_k")
    check_choice(prediction_type, SNR_PREDICTION_TYPES, "prediction_type")
    w_eps = torch.pow(snr + k, -gamma)
    return _from_epsilon_weight(w_eps, snr, prediction_type)


def debiased_weight(
    snr: Tensor, prediction_type: str = "epsilon", max_weight: float = 1000.0
) -> Tensor:
    r"""Debiased weights (Yu et al., "Debias the Training of Diffusion Models", 2023).

    .. math::
        w_\varepsilon = \min\!\left(\mathrm{SNR}^{-1/2},\ w_\text{max}\right)

    and in the other spaces by the identities above
    (:math:`w_v = \sqrt{\mathrm{SNR}}/(\mathrm{SNR}+1)`,
    :math:`w_{x_0} = \sqrt{\mathrm{SNR}}`, both finite at SNR = 0 and bounded by
    :math:`w_\text{max}` times theirs). :math:`\mathrm{SNR}^{-1/2}` is infinite at
    :math:`\mathrm{SNR} = 0`; ``max_weight`` (1000 by default) caps it. Standard schedules never
    reach the cap (DDPM's linear schedule ends at :math:`\mathrm{SNR}^{-1/2} \approx 157`); a
    zero-terminal step gets the cap. Some public training scripts weight v-prediction by
    :math:`(\mathrm{SNR}+1)^{-1/2}` instead, which is a different objective in :math:`x_0` space.
    """
    max_weight = check_positive(max_weight, "max_weight")
    check_choice(prediction_type, SNR_PREDICTION_TYPES, "prediction_type")
    w_eps = torch.rsqrt(snr).clamp_max(max_weight)  # rsqrt(0) = inf, capped: finite
    return _from_epsilon_weight(w_eps, snr, prediction_type)


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    r"""EDM's loss weight on the denoiser :math:`D` (Karras et al. 2022, Table 1):

    .. math:: \lambda(\sigma) = \frac{\sigma^2 + \sigma_d^2}{(\sigma\,\sigma_d)^2}

    It is infinite as :math:`\sigma \to 0`; on the network's raw output :math:`F` it is
    :math:`\lambda\,c_\text{out}^2 = 1` (see :func:`edm_preconditioning`), which is why
    :class:`~lightning_losses.losses.diffusion.DiffusionLoss` trains EDM in :math:`F` space.
    """
    sd = check_positive(sigma_data, "sigma_data")
    return (sigma**2 + sd**2) / (sigma * sd) ** 2


def edm_preconditioning(
    sigma: Tensor, sigma_data: float = 0.5
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""EDM's preconditioning (Karras et al. 2022, Table 1), :math:`\sigma_d` = 0.5 by default:

    .. math::
        c_\text{skip} = \frac{\sigma_d^2}{\sigma^2+\sigma_d^2}, \quad
        c_\text{out} = \frac{\sigma\,\sigma_d}{\sqrt{\sigma^2+\sigma_d^2}}, \quad
        c_\text{in} = \frac{1}{\sqrt{\sigma^2+\sigma_d^2}}, \quad
        c_\text{noise} = \tfrac14 \ln\sigma

    so that :math:`D_\theta(x;\sigma) = c_\text{skip}\,x + c_\text{out}\,F_\theta(c_\text{in}\,x;
    c_\text{noise})`. Returns ``(c_skip, c_out, c_in, c_noise)``, each of ``sigma``'s shape.
    """
    sd = check_positive(sigma_data, "sigma_data")
    total = sigma**2 + sd**2
    c_in = torch.rsqrt(total)
    return sd**2 / total, sigma * sd * c_in, c_in, 0.25 * torch.log(sigma)


def timestep_weight(
    snr: Tensor,
    weighting: str = "constant",
    prediction_type: str = "epsilon",
    *,
    min_snr_gamma: float = 5.0,
    min_snr_floor: float = 0.0,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
    debiased_max_weight: float = 1000.0,
) -> Tensor:
    """The weight of each timestep for ``weighting`` and ``prediction_type`` (see the table).

    ``"constant"`` and ``"edm"`` give ones (EDM: :math:`\\lambda c_\\text{out}^2 = 1` on the
    raw output); combinations that are not defined raise a ``ValueError`` naming the argument.
    """
    check_prediction_type(prediction_type, weighting)
    if weighting in ("constant", "edm"):
        return torch.ones_like(snr)
    if weighting == "min_snr":
        return min_snr_weight(snr, min_snr_gamma, prediction_type, min_snr_floor)
    if weighting == "p2":
        return p2_weight(snr, p2_gamma, p2_k, prediction_type)
    return debiased_weight(snr, prediction_type, debiased_max_weight)


__all__ = [
    "PREDICTION_TYPES",
    "WEIGHTINGS",
    "check_prediction_type",
    "debiased_weight",
    "edm_preconditioning",
    "edm_weight",
    "min_snr_weight",
    "p2_weight",
    "timestep_weight",
]
