"""Diffusion objectives in plain PyTorch: schedules, targets, weightings, noise and timesteps.

The pieces every diffusion training script otherwise copies, tested once:

* :mod:`.schedule`: the schedule of a diffusers scheduler (``alphas_cumprod``, or ``sigmas``
  for EDM) or of a tensor, as a log-SNR table; SNR = 0 at a zero-terminal step without NaN.
* :mod:`.targets`: ε / v / x₀ targets and the conversions between predictions; EDM's target.
* :mod:`.weighting`: constant, Min-SNR-γ, P2, debiased and EDM weights for each prediction type;
  EDM's preconditioning.
* :mod:`.noise`: offset noise, input perturbation, SD3's timestep densities, EDM's σ density.
* :mod:`.buckets`: the loss per timestep bucket, for logging (:mod:`.bucket_metric`: as a
  torchmetrics ``Metric``, loaded on first use).

The loss behind the library's contract is :class:`~lightning_losses.losses.diffusion.DiffusionLoss`
(registered as ``"diffusion"``). Nothing here imports diffusers: a scheduler is read through its
attributes.
"""

from typing import TYPE_CHECKING, Any

from .buckets import bucket_sums, timestep_buckets
from .noise import (
    TIMESTEP_DENSITIES,
    offset_noise,
    perturb_noise,
    sample_edm_sigma,
    sample_noise_level,
    sample_timesteps,
)
from .schedule import (
    DiffusionSchedule,
    alpha_sigma,
    ddpm_alphas_cumprod,
    log_snr_from_alphas_cumprod,
    log_snr_from_sigmas,
    snr_from_alphas_cumprod,
)
from .targets import (
    add_noise,
    convert_prediction,
    edm_denoise,
    edm_target,
    epsilon_from_v,
    epsilon_from_x0,
    training_target,
    v_from_epsilon,
    v_from_x0,
    velocity,
    x0_from_epsilon,
    x0_from_v,
)
from .weighting import (
    PREDICTION_TYPES,
    WEIGHTINGS,
    debiased_weight,
    edm_preconditioning,
    edm_weight,
    min_snr_weight,
    p2_weight,
    timestep_weight,
)

if TYPE_CHECKING:
    from .bucket_metric import TimestepBucketLoss


def __getattr__(name: str) -> Any:
    # The torchmetrics accumulator is loaded on first use: importing the losses (and the
    # `lightning-losses` command) should not pay for importing torchmetrics.
    if name == "TimestepBucketLoss":
        from .bucket_metric import TimestepBucketLoss

        return TimestepBucketLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PREDICTION_TYPES",
    "TIMESTEP_DENSITIES",
    "WEIGHTINGS",
    "DiffusionSchedule",
    "TimestepBucketLoss",
    "add_noise",
    "alpha_sigma",
    "bucket_sums",
    "convert_prediction",
    "ddpm_alphas_cumprod",
    "debiased_weight",
    "edm_denoise",
    "edm_preconditioning",
    "edm_target",
    "edm_weight",
    "epsilon_from_v",
    "epsilon_from_x0",
    "log_snr_from_alphas_cumprod",
    "log_snr_from_sigmas",
    "min_snr_weight",
    "offset_noise",
    "p2_weight",
    "perturb_noise",
    "sample_edm_sigma",
    "sample_noise_level",
    "sample_timesteps",
    "snr_from_alphas_cumprod",
    "timestep_buckets",
    "timestep_weight",
    "training_target",
    "v_from_epsilon",
    "v_from_x0",
    "velocity",
    "x0_from_epsilon",
    "x0_from_v",
]
