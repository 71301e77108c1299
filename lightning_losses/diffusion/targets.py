r"""Training targets and conversions between ε-, v- and x₀-predictions.

With :math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` and, for variance-preserving schedules,
:math:`\alpha_t^2 + \sigma_t^2 = 1` (Ho et al., NeurIPS 2020; v-prediction: Salimans & Ho,
"Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022):

.. math::
    v = \alpha\varepsilon - \sigma x_0, \qquad
    x_0 = \alpha x_t - \sigma v, \qquad
    \varepsilon = \sigma x_t + \alpha v,

    x_0 = (x_t - \sigma\varepsilon)/\alpha, \qquad
    \varepsilon = (x_t - \alpha x_0)/\sigma,

and the errors of the three parameterisations are proportional, per sample,

.. math::
    \lVert\hat\varepsilon - \varepsilon\rVert^2 = \mathrm{SNR}\,\lVert\hat x_0 - x_0\rVert^2,
    \qquad
    \lVert\hat v - v\rVert^2 = (\mathrm{SNR} + 1)\,\lVert\hat x_0 - x_0\rVert^2,

which is how :mod:`~lightning_losses.diffusion.weighting` moves a weight between spaces.
The conversions through v assume a variance-preserving schedule; those through ε and x₀ hold
for any :math:`(\alpha, \sigma)` (EDM's is :math:`\alpha = 1`).

``alpha`` and ``sigma`` are per-sample tensors (N,) (as :meth:`DiffusionSchedule.alpha_sigma
<lightning_losses.diffusion.schedule.DiffusionSchedule.alpha_sigma>` returns) or already
broadcastable to the sample; they are reshaped to (N, 1, ..., 1) here.
"""

from __future__ import annotations

from torch import Tensor

from .._checks import check_choice
from .weighting import edm_preconditioning

TARGET_TYPES = ("epsilon", "v_prediction", "sample")


def sample_scale(scale: Tensor, like: Tensor) -> Tensor:
    """A per-sample (N,) scale reshaped to broadcast over ``like`` (N, ...)."""
    if scale.ndim == 1 and like.ndim > 1:
        return scale.reshape(scale.shape[0], *[1] * (like.ndim - 1))
    return scale


def add_noise(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`x_t = \alpha x_0 + \sigma\varepsilon`."""
    return sample_scale(alpha, x0) * x0 + sample_scale(sigma, x0) * noise


def velocity(x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r"""The v target :math:`v = \alpha\varepsilon - \sigma x_0`."""
    return sample_scale(alpha, x0) * noise - sample_scale(sigma, x0) * x0


def training_target(
    prediction_type: str, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor
) -> Tensor:
    """The target of ``prediction_type``: the noise, the velocity or the clean sample."""
    check_choice(prediction_type, TARGET_TYPES, "prediction_type")
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(x0, noise, alpha, sigma)
    return x0


def x0_from_epsilon(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`x_0 = (x_t - \sigma\varepsilon)/\alpha` (undefined where :math:`\alpha = 0`)."""
    return (x_t - sample_scale(sigma, x_t) * eps) / sample_scale(alpha, x_t)


def epsilon_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`\varepsilon = (x_t - \alpha x_0)/\sigma`."""
    return (x_t - sample_scale(alpha, x_t) * x0) / sample_scale(sigma, x_t)


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`x_0 = \alpha x_t - \sigma v` (variance preserving)."""
    return sample_scale(alpha, x_t) * x_t - sample_scale(sigma, x_t) * v


def epsilon_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`\varepsilon = \sigma x_t + \alpha v` (variance preserving)."""
    return sample_scale(sigma, x_t) * x_t + sample_scale(alpha, x_t) * v


def v_from_epsilon(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`v = (\varepsilon - \sigma x_t)/\alpha` (variance preserving)."""
    return (eps - sample_scale(sigma, x_t) * x_t) / sample_scale(alpha, x_t)


def v_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r""":math:`v = (\alpha x_t - x_0)/\sigma` (variance preserving)."""
    return (sample_scale(alpha, x_t) * x_t - x0) / sample_scale(sigma, x_t)


_CONVERSIONS = {
    ("epsilon", "sample"): x0_from_epsilon,
    ("sample", "epsilon"): epsilon_from_x0,
    ("v_prediction", "sample"): x0_from_v,
    ("v_prediction", "epsilon"): epsilon_from_v,
    ("epsilon", "v_prediction"): v_from_epsilon,
    ("sample", "v_prediction"): v_from_x0,
}


def convert_prediction(
    prediction: Tensor,
    from_type: str,
    to_type: str,
    x_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
) -> Tensor:
    """A prediction of ``from_type`` written as ``to_type`` (given the noisy input ``x_t``).

    Types: ``"epsilon"``, ``"v_prediction"``, ``"sample"``. Conversions through v assume a
    variance-preserving schedule.
    """
    check_choice(from_type, TARGET_TYPES, "from_type")
    check_choice(to_type, TARGET_TYPES, "to_type")
    if from_type == to_type:
        return prediction
    return _CONVERSIONS[(from_type, to_type)](x_t, prediction, alpha, sigma)


def edm_target(x0: Tensor, noise: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    r"""The target of an EDM network's raw output :math:`F`, in the safe form.

    With :math:`x = x_0 + \sigma n` and :math:`D = c_\text{skip}x + c_\text{out}F`, EDM's loss
    :math:`\lambda(\sigma)\lVert D - x_0\rVert^2` equals
    :math:`\lVert F - (x_0 - c_\text{skip}x)/c_\text{out}\rVert^2` because
    :math:`\lambda c_\text{out}^2 = 1` (Karras et al. 2022, eq. 8). The target simplifies to

    .. math::
        F^\star = \frac{x_0 - c_\text{skip}\,x}{c_\text{out}}
               = \frac{\sigma\,x_0 - \sigma_d^2\,n}{\sigma_d\sqrt{\sigma^2 + \sigma_d^2}},

    which divides by no quantity that vanishes: it is finite at :math:`\sigma \to 0`, where
    :math:`1/c_\text{out}` and :math:`\lambda` are not.
    """
    s = sample_scale(sigma, x0)
    return (s * x0 - sigma_data**2 * noise) / (sigma_data * (s**2 + sigma_data**2).sqrt())


def edm_denoise(model_output: Tensor, x: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    r"""EDM's denoiser :math:`D = c_\text{skip}\,x + c_\text{out}\,F` from the raw output F."""
    c_skip, c_out, _, _ = edm_preconditioning(sample_scale(sigma, x), sigma_data)
    return c_skip * x + c_out * model_output


__all__ = [
    "TARGET_TYPES",
    "add_noise",
    "convert_prediction",
    "edm_denoise",
    "edm_target",
    "epsilon_from_v",
    "epsilon_from_x0",
    "training_target",
    "v_from_epsilon",
    "v_from_x0",
    "velocity",
    "x0_from_epsilon",
    "x0_from_v",
]
