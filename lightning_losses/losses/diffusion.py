r"""Diffusion training losses behind the library's contract: ε / v / x₀ / EDM prediction, with
per-timestep weights (constant, Min-SNR-γ, P2, debiased, EDM) and an L2, scheduled
pseudo-Huber or Cauchy error.

``loss(prediction, target, *, timesteps, sample_weight=None)``: ``target`` is the target of the
loss's ``prediction_type`` (the noise, the velocity, the clean sample, or EDM's
:func:`~lightning_losses.diffusion.targets.edm_target`), of the prediction's shape (N, ...);
``timesteps`` (N,) are integer indices into the schedule (or σ values for a continuous EDM
schedule). The per-sample value is the mean over the non-batch dimensions of the elementwise
error times the weight of that sample's timestep,

.. math::
    \ell_i = w(t_i)\;\frac{1}{P}\sum_{p=1}^{P} \rho\big(\hat y_{ip} - y_{ip};\ t_i\big),

so ``reduction="none"`` gives (N,) and ``sample_weight``, InfoBatch and the DRO callbacks
compose with it. The schedule is a buffer of the loss (a
:class:`~lightning_losses.diffusion.schedule.DiffusionSchedule`), read from a diffusers
scheduler or a tensor at construction; the default is diffusers' ``DDPMScheduler()`` schedule
(linear β, 1000 steps), built without diffusers.

What this avoids (METHODS, "Known pitfalls"): the v-prediction Min-SNR weight is
:math:`\min(\mathrm{SNR},\gamma)/(\mathrm{SNR}+1)`, computed directly (diffusers re-fixed it five
times); :math:`\mathrm{SNR} = 0` never divides (zero-terminal schedules); EDM is trained in the
safe form :math:`\lVert F - F^\star\rVert^2`, not as
:math:`\lambda(\sigma)\lVert D - x_0\rVert^2`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_positive, check_tensor
from .._reduce import PerSample
from ..diffusion.schedule import DiffusionSchedule
from ..diffusion.targets import add_noise, edm_target, training_target
from ..diffusion.weighting import (
    SNR_PREDICTION_TYPES,
    check_gamma,
    check_prediction_type,
    timestep_weight,
)
from ..registry import register_loss
from ._base import Loss
from ._inputs import compute_dtype

C_SCHEDULES = ("constant", "exponential", "snr")


def _resolve_schedule(
    scheduler: Any, alphas_cumprod: Any, sigmas: Any, prediction_type: str | None
) -> DiffusionSchedule:
    given = [
        n
        for n, v in (
            ("scheduler", scheduler),
            ("alphas_cumprod", alphas_cumprod),
            ("sigmas", sigmas),
        )
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(
            f"give the schedule once: one of `scheduler`, `alphas_cumprod` or `sigmas`; got "
            f"{', '.join(given)}."
        )
    if scheduler is not None:
        return DiffusionSchedule.from_scheduler(scheduler)
    if alphas_cumprod is not None:
        return DiffusionSchedule.from_alphas_cumprod(alphas_cumprod)
    if sigmas is not None:
        return DiffusionSchedule.from_sigmas(sigmas)
    if prediction_type == "edm":
        return DiffusionSchedule.continuous_sigma()
    return DiffusionSchedule.ddpm()


def _default_prediction_type(scheduler: Any, schedule: DiffusionSchedule) -> str:
    if schedule.parameterization == "ve":
        return "edm"
    config = getattr(scheduler, "config", None)
    declared = getattr(config, "prediction_type", None) if config is not None else None
    return declared if declared in SNR_PREDICTION_TYPES else "epsilon"


@register_loss(
    "diffusion",
    family="diffusion",
    paper="Ho et al., Denoising Diffusion Probabilistic Models, NeurIPS 2020; Salimans & Ho, "
    "Progressive Distillation for Fast Sampling of Diffusion Models, ICLR 2022 (v); Hang et al., "
    "Efficient Diffusion Training via Min-SNR Weighting Strategy, ICCV 2023; Choi et al., "
    "Perception Prioritized Training of Diffusion Models, CVPR 2022 (P2); Yu et al., Debias the "
    "Training of Diffusion Models, 2023; Karras et al., Elucidating the Design Space of "
    "Diffusion-Based Generative Models, NeurIPS 2022 (EDM)",
)
class DiffusionLoss(Loss):
    r"""Denoising loss for ε-, v-, x₀- or EDM-prediction with a per-timestep weight.

    .. math::
        \ell_i = w(t_i)\;\frac{1}{P}\sum_{p} (\hat y_{ip} - y_{ip})^2

    where :math:`y` is the target of ``prediction_type`` (:math:`\varepsilon`,
    :math:`v = \alpha_t\varepsilon - \sigma_t x_0`, :math:`x_0`, or EDM's
    :math:`F^\star = (x_0 - c_\text{skip}x)/c_\text{out}`) and :math:`w` the ``weighting``,
    written for that prediction type (:mod:`lightning_losses.diffusion.weighting`):

    - ``"constant"``: :math:`w = 1` (the "simple" loss of DDPM).
    - ``"min_snr"``: :math:`w_\varepsilon = \gamma/\max(\mathrm{SNR},\gamma)`,
      :math:`w_v = \min(\mathrm{SNR},\gamma)/(\mathrm{SNR}+1)`,
      :math:`w_{x_0} = \min(\mathrm{SNR},\gamma)`, :math:`\gamma = 5`; a weight floor
      ``min_snr_floor`` keeps the last steps of a zero-terminal-SNR schedule trained.
    - ``"p2"``: :math:`w_\varepsilon = (k + \mathrm{SNR})^{-\gamma}`, k = 1, γ = 1.
    - ``"debiased"``: :math:`w_\varepsilon = \min(\mathrm{SNR}^{-1/2}, w_\text{max})`.
    - ``"edm"`` (with ``prediction_type="edm"`` only): :math:`\lambda(\sigma)\,c_\text{out}^2 = 1`,
      the safe form of EDM's :math:`\lambda(\sigma)\lVert D - x_0\rVert^2`.

    Min-SNR with EDM, ``"edm"`` weighting with another prediction type and γ ≤ 0 are errors.

    Args:
        scheduler: a diffusers scheduler whose schedule to read (``alphas_cumprod``, or
            ``sigmas`` for ``EDMEulerScheduler``); or give ``alphas_cumprod`` (T,) or
            ``sigmas`` (T,) as tensors. None of them: diffusers' default DDPM schedule (linear
            β from 1e-4 to 0.02, 1000 steps), or a continuous σ schedule for
            ``prediction_type="edm"`` (the timesteps are then σ values).
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (diffusers' names) or
            ``"edm"``. Default: ``"edm"`` for a σ schedule, else the scheduler's
            ``config.prediction_type``, else ``"epsilon"``.
        weighting: ``"constant"``, ``"min_snr"``, ``"p2"``, ``"debiased"`` or ``"edm"``. Default:
            ``"edm"`` for EDM, else ``"constant"``.
        min_snr_gamma: Min-SNR's γ > 0; 5 (the paper's).
        min_snr_floor: lower bound of the Min-SNR weight; 0 (off, the paper's weight).
        p2_gamma, p2_k: P2's γ > 0 and k > 0; 1 and 1 (the paper's training command).
        debiased_max_weight: cap of :math:`\mathrm{SNR}^{-1/2}` (infinite at SNR = 0); 1000.
        sigma_data: EDM's :math:`\sigma_d`, for :meth:`training_target`; the scheduler's
            ``config.sigma_data`` when it has one, else 0.5 (the paper's).

    Shape: prediction and target (N, ...) of the same shape; ``timesteps`` (N,). Output (N,)
    for ``reduction="none"``, else a scalar. Half-precision input is computed in float32.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> loss = DiffusionLoss(DDPMScheduler(prediction_type="v_prediction"),
        ...                      weighting="min_snr")
        >>> t = torch.randint(0, 1000, (8,))
        >>> target = loss.training_target(x0, noise, t)
        >>> loss(model(loss.add_noise(x0, noise, t), t), target, timesteps=t)  # doctest: +SKIP
    """

    input_kind: ClassVar[str] = "predictions"
    target_kind: ClassVar[str] = "regression"
    context: ClassVar[tuple[str, ...]] = ("timesteps",)

    def __init__(
        self,
        scheduler: Any = None,
        *,
        alphas_cumprod: Tensor | None = None,
        sigmas: Tensor | None = None,
        prediction_type: str | None = None,
        weighting: str | None = None,
        min_snr_gamma: float = 5.0,
        min_snr_floor: float = 0.0,
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
        debiased_max_weight: float = 1000.0,
        sigma_data: float | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        self.schedule = _resolve_schedule(scheduler, alphas_cumprod, sigmas, prediction_type)
        if prediction_type is None:
            prediction_type = _default_prediction_type(scheduler, self.schedule)
        if weighting is None:
            weighting = "edm" if prediction_type == "edm" else "constant"
        self.prediction_type = check_prediction_type(prediction_type, weighting)
        self.weighting = weighting
        ve = self.schedule.parameterization == "ve"
        if ve != (prediction_type == "edm"):
            kind = (
                "a σ (variance-exploding) schedule" if ve else "an ᾱ (variance-preserving) schedule"
            )
            raise ValueError(
                f"`prediction_type={prediction_type!r}` does not fit {kind}: EDM prediction "
                "trains on σ schedules (EDM-style schedulers, `sigmas=`, or none), and ε-, v- and "
                "x₀-prediction on ᾱ schedules (`alphas_cumprod`)."
            )
        self.min_snr_gamma = check_gamma(min_snr_gamma, "min_snr_gamma")
        self.min_snr_floor = check_positive(min_snr_floor, "min_snr_floor", allow_zero=True)
        self.p2_gamma = check_gamma(p2_gamma, "p2_gamma")
        self.p2_k = check_positive(p2_k, "p2_k")
        self.debiased_max_weight = check_positive(debiased_max_weight, "debiased_max_weight")
        if sigma_data is None:
            sigma_data = getattr(getattr(scheduler, "config", None), "sigma_data", None) or 0.5
        self.sigma_data = check_positive(sigma_data, "sigma_data")

    # -- what the training step needs besides the loss ------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        r""":math:`x_t = \alpha_t x_0 + \sigma_t\varepsilon` on this loss's schedule."""
        alpha, sigma = self.schedule.alpha_sigma(timesteps, validate_args=self.validate_args)
        return add_noise(x0, noise, alpha.to(x0.dtype), sigma.to(x0.dtype))

    def training_target(self, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The target of this loss's ``prediction_type`` for clean ``x0`` and ``noise``."""
        alpha, sigma = self.schedule.alpha_sigma(timesteps, validate_args=self.validate_args)
        alpha, sigma = alpha.to(x0.dtype), sigma.to(x0.dtype)
        if self.prediction_type == "edm":
            return edm_target(x0, noise, sigma, self.sigma_data)
        return training_target(self.prediction_type, x0, noise, alpha, sigma)

    # -- the loss ----------------------------------------------------------------------------

    def timestep_weights(self, log_snr: Tensor) -> Tensor:
        """The weight of each sample's timestep (N,) from its log-SNR."""
        return timestep_weight(
            torch.exp(log_snr),
            self.weighting,
            self.prediction_type,
            min_snr_gamma=self.min_snr_gamma,
            min_snr_floor=self.min_snr_floor,
            p2_gamma=self.p2_gamma,
            p2_k=self.p2_k,
            debiased_max_weight=self.debiased_max_weight,
        )

    def element_loss(self, residual: Tensor, log_snr: Tensor, timesteps: Tensor) -> Tensor:
        """The elementwise error :math:`\\rho` of the residual (N, ...); L2 here."""
        return residual.square()

    def per_sample(self, input: Tensor, target: Tensor, *, timesteps: Tensor) -> PerSample:
        self._check_inputs(input, target, timesteps)
        dtype = compute_dtype(input.dtype)
        log_snr = self.schedule.log_snr_at(timesteps, validate_args=self.validate_args)
        log_snr = log_snr.to(device=input.device, dtype=dtype)
        residual = input.to(dtype) - target.to(dtype)
        elem = self.element_loss(residual, log_snr, timesteps)
        values = elem.flatten(1).mean(1) if elem.ndim > 1 else elem
        return PerSample(values * self.timestep_weights(log_snr))

    def _check_inputs(self, input: Tensor, target: Tensor, timesteps: Tensor) -> None:
        check_tensor(input, "input")
        check_tensor(target, "target")
        check_tensor(timesteps, "timesteps")
        if not input.is_floating_point():
            raise TypeError(f"`input` must be a floating-point prediction; got {input.dtype}.")
        if not target.is_floating_point():
            raise TypeError(f"`target` must be a floating-point tensor; got {target.dtype}.")
        if input.ndim < 1:
            raise ValueError("`input` must have a batch dimension (N, ...); got a scalar.")
        if target.shape != input.shape:
            raise ValueError(
                f"`target` must have the prediction's shape {tuple(input.shape)} (the "
                f"{self.prediction_type} target of each sample); got {tuple(target.shape)}."
            )
        if timesteps.shape != (input.shape[0],):
            raise ValueError(
                f"`timesteps` must have shape ({input.shape[0]},), one per sample; got "
                f"{tuple(timesteps.shape)}."
            )
        if self.validate_args:
            check_finite(input, "input")
            check_finite(target, "target")

    def extra_repr(self) -> str:
        return (
            f"prediction_type={self.prediction_type!r}, weighting={self.weighting!r}, "
            f"{super().extra_repr()}"
        )


class _RobustDiffusionLoss(DiffusionLoss):
    """A diffusion loss with a robust elementwise error whose scale c may follow the timestep."""

    default_c_schedule: ClassVar[str] = "constant"

    def __init__(self, scheduler: Any = None, *, c: float, c_schedule: str, **kwargs: Any):
        super().__init__(scheduler, **kwargs)
        self.c = check_positive(c, "c")
        self.c_schedule = check_choice(c_schedule, C_SCHEDULES, "c_schedule")
        if c_schedule == "exponential" and self.schedule.parameterization != "vp":
            raise ValueError(
                "`c_schedule='exponential'` (c^(t/T)) needs a discrete ᾱ schedule ordered by "
                "increasing noise; use 'snr' or 'constant' with EDM."
            )

    def threshold(self, log_snr: Tensor, timesteps: Tensor) -> Tensor:
        r"""The scale :math:`c_t` of each sample (N,):

        ``"constant"``: :math:`c`; ``"exponential"``: :math:`c^{t/T}`; ``"snr"``:
        :math:`c + (1 - c)/(1 + \sigma_t)^2` with :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/
        \bar\alpha_t} = e^{-\lambda_t/2}` (EDM: σ).
        """
        if self.c_schedule == "constant":
            return torch.full_like(log_snr, self.c)
        if self.c_schedule == "exponential":
            t = timesteps.to(device=log_snr.device, dtype=log_snr.dtype)
            return torch.exp(math.log(self.c) * t / self.schedule.num_timesteps)
        sigma = torch.exp(-0.5 * log_snr)
        return self.c + (1.0 - self.c) / (1.0 + sigma) ** 2

    def extra_repr(self) -> str:
        return f"c={self.c}, c_schedule={self.c_schedule!r}, {super().extra_repr()}"


@register_loss(
    "diffusion_pseudo_huber",
    family="diffusion",
    paper="Khrapov et al., Improving Diffusion Models's Data-Corruption Resistance using Scheduled "
    "Pseudo-Huber Loss, 2024",
)
class DiffusionPseudoHuberLoss(_RobustDiffusionLoss):
    r"""Diffusion loss with a scheduled pseudo-Huber error, robust to corrupted training data.

    .. math::
        \rho_c(r) = 2c\left(\sqrt{r^2 + c^2} - c\right)
                  = \frac{2c\,r^2}{\sqrt{r^2 + c^2} + c}

    (the second form is the one computed: no cancellation at small :math:`r`). **Convention:**
    this is twice the paper's :math:`\delta^2(\sqrt{1 + (r/\delta)^2} - 1)` with
    :math:`\delta = c`, chosen so that :math:`\rho_c(r) \to r^2` as :math:`c \to \infty` (the
    L2 loss of :class:`DiffusionLoss`, same scale) and :math:`\rho_c(r) \approx 2c\,|r|` as
    :math:`c \to 0` (L1-like); it is also
    the form of kohya-ss' sd-scripts and the training scripts derived from it.

    The scale follows the timestep (``c_schedule``, :math:`c_0` = ``c``):

    - ``"constant"``: :math:`c_t = c_0`;
    - ``"exponential"``: :math:`c_t = c_0^{t/T}` (1 at t = 0, :math:`c_0` at t = T);
    - ``"snr"`` (default): :math:`c_t = c_0 + (1 - c_0)/(1 + \sigma_t)^2`,
      :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}`.

    Both schedules make the loss L1-like (small c) at noisy steps, where corrupted samples pull
    hardest, and L2-like at the detail steps. :math:`c_0 = 0.1` by default (the paper's
    experiments and the scripts' default). Weighting, prediction types and the schedule are
    :class:`DiffusionLoss`'s.

    Example:
        >>> loss = DiffusionPseudoHuberLoss(c=0.1, c_schedule="snr")
        >>> loss(pred, noise, timesteps=t)  # doctest: +SKIP
    """

    def __init__(
        self,
        scheduler: Any = None,
        *,
        c: float = 0.1,
        c_schedule: str = "snr",
        alphas_cumprod: Tensor | None = None,
        sigmas: Tensor | None = None,
        prediction_type: str | None = None,
        weighting: str | None = None,
        min_snr_gamma: float = 5.0,
        min_snr_floor: float = 0.0,
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
        debiased_max_weight: float = 1000.0,
        sigma_data: float | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            scheduler,
            c=c,
            c_schedule=c_schedule,
            alphas_cumprod=alphas_cumprod,
            sigmas=sigmas,
            prediction_type=prediction_type,
            weighting=weighting,
            min_snr_gamma=min_snr_gamma,
            min_snr_floor=min_snr_floor,
            p2_gamma=p2_gamma,
            p2_k=p2_k,
            debiased_max_weight=debiased_max_weight,
            sigma_data=sigma_data,
            reduction=reduction,
            validate_args=validate_args,
        )

    def element_loss(self, residual: Tensor, log_snr: Tensor, timesteps: Tensor) -> Tensor:
        c = self.threshold(log_snr, timesteps)
        c = c.reshape(c.shape[0], *[1] * (residual.ndim - 1))
        sq = residual.square()
        return 2.0 * c * sq / (torch.sqrt(sq + c * c) + c)


@register_loss(
    "diffusion_cauchy",
    family="diffusion",
    paper="Dao et al., Improved Training Technique for Latent Consistency Models, ICLR 2025 "
    "(Cauchy loss)",
)
class DiffusionCauchyLoss(_RobustDiffusionLoss):
    r"""Diffusion loss with a Cauchy (Lorentzian) error, more robust to outliers than
    pseudo-Huber.

    .. math:: \rho_c(r) = c^2 \log\!\left(1 + (r/c)^2\right)

    **Convention:** the paper's :math:`\log(1 + (r/c)^2)` times :math:`c^2`, so that
    :math:`\rho_c(r) \to r^2` as :math:`c \to \infty` (the L2 loss, same scale as
    :class:`DiffusionLoss` and :class:`DiffusionPseudoHuberLoss`); for :math:`|r| \gg c` it grows
    only like :math:`2c^2\log|r|`. The scale follows ``c_schedule`` as in
    :class:`DiffusionPseudoHuberLoss`; c = 1 and a constant schedule by default (no published
    default for denoising losses; residuals of a unit-variance target are O(1)). The paper's
    adaptive c is not implemented: set ``c`` per run.

    Example:
        >>> loss = DiffusionCauchyLoss(c=0.5)
        >>> loss(pred, noise, timesteps=t)  # doctest: +SKIP
    """

    def __init__(
        self,
        scheduler: Any = None,
        *,
        c: float = 1.0,
        c_schedule: str = "constant",
        alphas_cumprod: Tensor | None = None,
        sigmas: Tensor | None = None,
        prediction_type: str | None = None,
        weighting: str | None = None,
        min_snr_gamma: float = 5.0,
        min_snr_floor: float = 0.0,
        p2_gamma: float = 1.0,
        p2_k: float = 1.0,
        debiased_max_weight: float = 1000.0,
        sigma_data: float | None = None,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            scheduler,
            c=c,
            c_schedule=c_schedule,
            alphas_cumprod=alphas_cumprod,
            sigmas=sigmas,
            prediction_type=prediction_type,
            weighting=weighting,
            min_snr_gamma=min_snr_gamma,
            min_snr_floor=min_snr_floor,
            p2_gamma=p2_gamma,
            p2_k=p2_k,
            debiased_max_weight=debiased_max_weight,
            sigma_data=sigma_data,
            reduction=reduction,
            validate_args=validate_args,
        )

    def element_loss(self, residual: Tensor, log_snr: Tensor, timesteps: Tensor) -> Tensor:
        c = self.threshold(log_snr, timesteps)
        c = c.reshape(c.shape[0], *[1] * (residual.ndim - 1))
        return c * c * torch.log1p((residual / c).square())


__all__ = ["DiffusionCauchyLoss", "DiffusionLoss", "DiffusionPseudoHuberLoss"]
