r"""Noise tweaks and timestep densities for the training step.

* **Offset noise** (from practitioners, no paper): :math:`\varepsilon' = \varepsilon + o\,\xi`
  with :math:`\xi \sim \mathcal N(0, 1)` of shape (B, C, 1, ..., 1), one value per sample and
  channel, so the model learns to change an image's overall brightness. o = 0.1 is typical.
* **Input perturbation** (Ning et al., "Input Perturbation Reduces Exposure Bias in Diffusion
  Models", ICML 2023): build :math:`x_t` from :math:`\varepsilon + g\,\xi'` while the target
  stays :math:`\varepsilon`; g = 0.1 is the paper's recommendation.
* **Timestep densities** (Esser et al., "Scaling Rectified Flow Transformers for High-Resolution
  Image Synthesis", ICML 2024, section 3.1): uniform, logit-normal
  :math:`u = \mathrm{sigmoid}(m + s\,z)`, :math:`z\sim\mathcal N(0,1)` (m = 0, s = 1 by
  default, the paper's best setting), and mode
  :math:`u = 1 - w - s\,(\cos^2(\pi w/2) - 1 + w)`, :math:`w \sim U(0,1)` (s = 1.29, diffusers'
  default). :math:`u \in (0, 1)` is the noise level; a discrete schedule of T steps ordered by
  increasing noise (DDPM's) takes index :math:`\lfloor uT \rfloor`, as diffusers' SD3 scripts do.
* **EDM's noise levels** (Karras et al., NeurIPS 2022): :math:`\ln\sigma \sim
  \mathcal N(P_\text{mean}, P_\text{std}^2)`, :math:`P_\text{mean} = -1.2`,
  :math:`P_\text{std} = 1.2`.

Every function draws on the device of its input (or ``device``) from ``generator`` when given,
and reads nothing back to the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_number, check_positive, check_range

TIMESTEP_DENSITIES = ("uniform", "logit_normal", "mode")
#: The mode density maps [0, 1] onto [0, 1] monotonically only for -1 <= s <= 2 / (pi - 2).
MODE_SCALE_RANGE = (-1.0, 2.0 / (math.pi - 2.0))


def offset_noise(
    noise: Tensor, strength: float = 0.1, *, generator: torch.Generator | None = None
) -> Tensor:
    r""":math:`\varepsilon + o\,\xi`, :math:`\xi` of shape (B, C, 1, ..., 1); ``strength`` o = 0
    returns ``noise`` itself.

    Use the result both to build :math:`x_t` and as the ε target (the offset is part of the
    noise the model must predict). ``noise`` has shape (B, C, *spatial).
    """
    strength = check_positive(strength, "strength", allow_zero=True)
    if noise.ndim < 2:
        raise ValueError(
            f"`noise` must have shape (B, C, *spatial) for offset noise; got {tuple(noise.shape)}."
        )
    if strength == 0:
        return noise
    shape = (*noise.shape[:2], *[1] * (noise.ndim - 2))
    xi = torch.randn(shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * xi


def perturb_noise(
    noise: Tensor, gamma: float = 0.1, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""The noise that builds :math:`x_t` under input perturbation: :math:`\varepsilon + g\,\xi'`.

    The ε target stays ``noise``; only :math:`x_t` sees the perturbation (Ning et al. 2023).
    ``gamma`` g = 0 returns ``noise`` itself.

    Example:
        >>> eps = torch.randn_like(x0)
        >>> x_t = add_noise(x0, perturb_noise(eps, 0.1), alpha, sigma)
        >>> loss = criterion(model(x_t, t), eps, timesteps=t)  # doctest: +SKIP
    """
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    if gamma == 0:
        return noise
    xi = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + gamma * xi


def sample_noise_level(
    n: int,
    density: str = "uniform",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Noise levels :math:`u \\in [0, 1]` (n,) from one of SD3's densities (module docstring)."""
    check_int(n, "n", minimum=0)
    check_choice(density, TIMESTEP_DENSITIES, "density")
    if density == "logit_normal":
        mean = check_number(logit_mean, "logit_mean")
        std = check_positive(logit_std, "logit_std")
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(mean + std * z)
    w = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    if density == "uniform":
        return w
    s = check_range(mode_scale, "mode_scale", *MODE_SCALE_RANGE)
    return 1.0 - w - s * (torch.cos(math.pi * w / 2.0) ** 2 - 1.0 + w)


def sample_timesteps(
    n: int,
    num_timesteps: int = 1000,
    density: str = "uniform",
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Integer timesteps (n,) in [0, num_timesteps) drawn from ``density``.

    ``"uniform"`` draws every index with probability 1/T. The other densities draw a noise
    level :math:`u` (:func:`sample_noise_level`) and take :math:`\\lfloor uT \\rfloor`, clamped to
    T - 1 (where float32 rounds :math:`u` to 1).
    """
    check_int(num_timesteps, "num_timesteps", minimum=1)
    u = sample_noise_level(
        n,
        density,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        generator=generator,
        device=device,
    )
    return (u * num_timesteps).long().clamp_(0, num_timesteps - 1)


def sample_edm_sigma(
    n: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""EDM's training noise levels: :math:`\sigma = \exp(P_\text{mean} + P_\text{std}\,z)` (n,)."""
    check_int(n, "n", minimum=0)
    mean = check_number(p_mean, "p_mean")
    std = check_positive(p_std, "p_std")
    z = torch.randn(n, generator=generator, device=device, dtype=dtype)
    return torch.exp(mean + std * z)


__all__ = [
    "TIMESTEP_DENSITIES",
    "offset_noise",
    "perturb_noise",
    "sample_edm_sigma",
    "sample_noise_level",
    "sample_timesteps",
]
