r"""A diffusion noise schedule as a table of log signal-to-noise ratios.

Conventions: :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` and
:math:`\mathrm{SNR}(t) = \alpha_t^2 / \sigma_t^2`.

* **Variance preserving** (``"vp"``; DDPM, DDIM, Euler-discrete and most diffusers schedulers):
  :math:`\alpha_t^2 = \bar\alpha_t`, :math:`\sigma_t^2 = 1 - \bar\alpha_t`, so
  :math:`\mathrm{SNR} = \bar\alpha / (1 - \bar\alpha)`. Read from ``scheduler.alphas_cumprod``.
* **Variance exploding** (``"ve"``; EDM): :math:`x = x_0 + \sigma\varepsilon`, so
  :math:`\alpha = 1` and :math:`\mathrm{SNR} = 1/\sigma^2`. Read from ``scheduler.sigmas``
  (diffusers' ``EDMEulerScheduler``), or continuous: the timesteps are the :math:`\sigma` values.

The schedule keeps one table, :math:`\lambda_t = \log \mathrm{SNR}(t)`, from which every other
quantity follows without a division that can fail: :math:`\bar\alpha = \mathrm{sigmoid}(\lambda)`,
:math:`1 - \bar\alpha = \mathrm{sigmoid}(-\lambda)`, :math:`\mathrm{SNR} = e^\lambda`. A
zero-terminal-SNR step (:math:`\bar\alpha_T = 0`, diffusers' ``rescale_betas_zero_snr=True``) is
:math:`\lambda = -\infty`: its SNR is exactly 0, :math:`\alpha = 0`, :math:`\sigma = 1`, with no
NaN. The log-SNR of a table step is relative-precise at both ends in float32, which
:math:`1 - \bar\alpha` computed from a float32 :math:`\bar\alpha` near 1 is not.

Timesteps are integer indices into the table (the ``timesteps`` diffusers' training scripts
draw). An index outside the table is an error that names ``timesteps``: on a CPU the indexing
kernel's range check raises it at once, on a GPU the kernel asserts in its queue (no host read);
``validate_args=True`` adds an on-device check with a readable message on both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_on_device, check_tensor

PARAMETERIZATIONS = ("vp", "ve")


def _as_table(values: Any, arg: str) -> Tensor:
    t = torch.as_tensor(values).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError(f"`{arg}` must be a 1-D table, one value per step; got {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{arg}` must be finite; got non-finite values.")
    return t


def log_snr_from_alphas_cumprod(alphas_cumprod: Tensor | Any) -> Tensor:
    r""":math:`\lambda = \log\bar\alpha - \log(1 - \bar\alpha)` in float64 (:math:`-\infty` where
    :math:`\bar\alpha = 0`). :math:`\bar\alpha` must lie in [0, 1): a step with
    :math:`\bar\alpha = 1` adds no noise and has no finite SNR."""
    acp = _as_table(alphas_cumprod, "alphas_cumprod")
    if bool(((acp < 0) | (acp >= 1)).any()):
        bad = acp[(acp < 0) | (acp >= 1)][:5].tolist()
        raise ValueError(f"`alphas_cumprod` must lie in [0, 1); got values {bad}.")
    return torch.log(acp) - torch.log1p(-acp)


def log_snr_from_sigmas(sigmas: Tensor | Any) -> Tensor:
    r""":math:`\lambda = -2\log\sigma` (float64) of a variance-exploding (σ > 0) table."""
    s = _as_table(sigmas, "sigmas")
    if bool((s <= 0).any()):
        raise ValueError(f"`sigmas` must be > 0; got values {s[s <= 0][:5].tolist()}.")
    return -2.0 * torch.log(s)


def snr_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    r""":math:`\mathrm{SNR} = \bar\alpha / (1 - \bar\alpha)`, elementwise, in the input's dtype.

    0 where :math:`\bar\alpha = 0` (zero terminal SNR), never NaN for :math:`\bar\alpha \in [0, 1)`.
    """
    return alphas_cumprod / (1.0 - alphas_cumprod)


def alpha_sigma(log_snr: Tensor, parameterization: str = "vp") -> tuple[Tensor, Tensor]:
    r"""Signal and noise scales :math:`(\alpha, \sigma)` from :math:`\lambda = \log\mathrm{SNR}`.

    ``"vp"``: :math:`\alpha = \sqrt{\mathrm{sigmoid}(\lambda)}`,
    :math:`\sigma = \sqrt{\mathrm{sigmoid}(-\lambda)}`; ``"ve"``: :math:`\alpha = 1`,
    :math:`\sigma = e^{-\lambda/2}`.
    """
    check_choice(parameterization, PARAMETERIZATIONS, "parameterization")
    if parameterization == "vp":
        return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
    return torch.ones_like(log_snr), torch.exp(-0.5 * log_snr)


def ddpm_alphas_cumprod(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Tensor:
    r"""The linear-β DDPM schedule (Ho et al. 2020), diffusers' ``DDPMScheduler()`` default.

    :math:`\beta_t` linear from ``beta_start`` to ``beta_end`` (float32, as diffusers builds it),
    :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`.
    """
    check_int(num_timesteps, "num_timesteps", minimum=1)
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


class DiffusionSchedule(nn.Module):
    r"""A noise schedule held as a log-SNR table (a buffer: it moves with ``.to()`` and is saved).

    Build it with :meth:`from_scheduler` (a diffusers scheduler), :meth:`from_alphas_cumprod`,
    :meth:`from_sigmas`, :meth:`continuous_sigma` (EDM, the timesteps are :math:`\sigma` values)
    or :meth:`ddpm` (the default linear 1000-step schedule, built without diffusers).

    The table is float32 and stays at least float32 when the module is cast to half precision
    (``.half()``, Lightning's ``"bf16-true"``), where a log-SNR table would lose its meaning.

    Example:
        >>> from diffusers import DDPMScheduler
        >>> schedule = DiffusionSchedule.from_scheduler(DDPMScheduler())
        >>> schedule.snr(torch.tensor([0, 999]))  # doctest: +SKIP
    """

    def __init__(self, log_snr: Tensor, parameterization: str = "vp") -> None:
        super().__init__()
        self.parameterization = check_choice(
            parameterization, PARAMETERIZATIONS, "parameterization"
        )
        table = torch.as_tensor(log_snr, dtype=torch.float64).reshape(-1)
        if bool(torch.isnan(table).any()):
            raise ValueError("`log_snr` must not hold NaN.")
        self.register_buffer("log_snr", table.to(torch.float32))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | Any) -> DiffusionSchedule:
        """A variance-preserving schedule from a table of :math:`\\bar\\alpha_t` (T,)."""
        return cls(log_snr_from_alphas_cumprod(alphas_cumprod), "vp")

    @classmethod
    def from_sigmas(cls, sigmas: Tensor | Any) -> DiffusionSchedule:
        """A variance-exploding (EDM) schedule from a table of :math:`\\sigma_t > 0` (T,)."""
        return cls(log_snr_from_sigmas(sigmas), "ve")

    @classmethod
    def continuous_sigma(cls) -> DiffusionSchedule:
        """A variance-exploding schedule without a table: timesteps are :math:`\\sigma` values."""
        return cls(torch.empty(0), "ve")

    @classmethod
    def ddpm(cls, num_timesteps: int = 1000) -> DiffusionSchedule:
        """diffusers' default: linear β from 1e-4 to 0.02 over 1000 steps (Ho et al. 2020)."""
        return cls.from_alphas_cumprod(ddpm_alphas_cumprod(num_timesteps))

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> DiffusionSchedule:
        """Read the schedule of a diffusers scheduler (or any object with the same attributes).

        ``alphas_cumprod`` (DDPM, DDIM, Euler, DPM-Solver, ...) gives a variance-preserving
        table; failing that, ``sigmas`` (``EDMEulerScheduler``) a variance-exploding one, whose
        trailing zero (the sampler's final step, never trained on) is dropped.
        """
        acp = getattr(scheduler, "alphas_cumprod", None)
        if acp is not None:
            return cls.from_alphas_cumprod(acp)
        sigmas = getattr(scheduler, "sigmas", None)
        if sigmas is not None:
            s = _as_table(sigmas, "scheduler.sigmas")
            keep = len(s)
            while keep > 1 and float(s[keep - 1]) == 0.0:
                keep -= 1
            return cls.from_sigmas(s[:keep])
        raise TypeError(
            "`scheduler` must have an `alphas_cumprod` table (DDPM-style schedulers) or a "
            f"`sigmas` table (EDM-style schedulers); got {type(scheduler).__name__}."
        )

    # -- lookup ----------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        """Steps in the table (0 for a continuous-σ schedule)."""
        return self._buffers["log_snr"].shape[0]

    @property
    def continuous(self) -> bool:
        return self.num_timesteps == 0

    def log_snr_at(self, timesteps: Tensor, *, validate_args: bool = False) -> Tensor:
        r""":math:`\lambda` of each timestep (N,), float32 (float64 for float64 σ timesteps).

        Integer ``timesteps`` index the table. Floating-point ``timesteps`` are :math:`\sigma`
        values of a variance-exploding schedule (EDM), :math:`\lambda = -2\log\sigma`.
        """
        check_tensor(timesteps, "timesteps")
        if timesteps.ndim != 1:
            raise ValueError(
                f"`timesteps` must have shape (N,), one timestep per sample; got "
                f"{tuple(timesteps.shape)}."
            )
        table = self._buffers["log_snr"]
        if timesteps.is_floating_point():
            return self._log_snr_of_sigma(timesteps, validate_args)
        if timesteps.dtype == torch.bool or timesteps.is_complex():
            raise TypeError(f"`timesteps` must hold integer indices; got dtype {timesteps.dtype}.")
        if self.continuous:
            raise TypeError(
                "this schedule is continuous (EDM, no table): `timesteps` must be the σ values "
                f"(a floating-point tensor); got integer dtype {timesteps.dtype}."
            )
        t = timesteps if timesteps.dtype in (torch.int32, torch.int64) else timesteps.long()
        t = t.to(table.device, non_blocking=True)
        n = self.num_timesteps
        if validate_args:
            check_on_device(
                ((t >= 0) & (t < n)).all(),
                f"`timesteps` must lie in [0, {n - 1}] (the schedule has {n} steps).",
                lambda: self._range_message(t),
            )
        try:
            return table.index_select(0, t)
        except (IndexError, RuntimeError):  # the kernel's own range check, on a CPU
            raise ValueError(self._range_message(t)) from None

    def _log_snr_of_sigma(self, sigma: Tensor, validate_args: bool) -> Tensor:
        if self.parameterization != "ve":
            raise TypeError(
                f"`timesteps` must hold integer indices into the schedule's {self.num_timesteps} "
                f"steps; got a floating-point tensor ({sigma.dtype}). Floating-point timesteps "
                "are σ values, which only a variance-exploding (EDM) schedule takes."
            )
        s = sigma.float() if sigma.dtype in (torch.float16, torch.bfloat16) else sigma
        if validate_args:
            check_on_device(
                ((s > 0) & torch.isfinite(s)).all(),
                "`timesteps` (σ values of an EDM schedule) must be finite and > 0.",
                lambda: (
                    f"`timesteps` (σ values of an EDM schedule) must be finite and > 0; got "
                    f"{s[~((s > 0) & torch.isfinite(s))][:5].tolist()}."
                ),
            )
        return -2.0 * torch.log(s)

    def _range_message(self, t: Tensor) -> str:
        n = self.num_timesteps
        bad = t[(t < 0) | (t >= n)]
        return (
            f"`timesteps` must lie in [0, {n - 1}] (the schedule has {n} steps); got "
            f"{sorted(set(bad.tolist()))[:5]}."
        )

    def snr(self, timesteps: Tensor, *, validate_args: bool = False) -> Tensor:
        """:math:`\\mathrm{SNR}(t) = e^{\\lambda_t}` (N,); exactly 0 at a zero-terminal step."""
        return torch.exp(self.log_snr_at(timesteps, validate_args=validate_args))

    def alpha_sigma(self, timesteps: Tensor, *, validate_args: bool = False):
        r""":math:`(\alpha_t, \sigma_t)`, each (N,) (see :func:`alpha_sigma`)."""
        return alpha_sigma(
            self.log_snr_at(timesteps, validate_args=validate_args), self.parameterization
        )

    def alphas_cumprod(self) -> Tensor:
        r"""The table as :math:`\bar\alpha_t = \mathrm{sigmoid}(\lambda_t)` (VP), float64."""
        return torch.sigmoid(self._buffers["log_snr"].double())

    # -- state -----------------------------------------------------------------------------------

    def _apply(self, fn, recurse=True):
        # A half-precision cast of the whole model must not round the table to 8 or 11 bits.
        table = self._buffers["log_snr"]
        super()._apply(fn, recurse)
        moved = self._buffers["log_snr"]
        if moved.dtype in (torch.float16, torch.bfloat16):
            self._buffers["log_snr"] = table.to(device=moved.device)
        return self

    def extra_repr(self) -> str:
        steps = "continuous σ" if self.continuous else f"{self.num_timesteps} steps"
        return f"parameterization={self.parameterization!r}, {steps}"


__all__ = [
    "PARAMETERIZATIONS",
    "DiffusionSchedule",
    "alpha_sigma",
    "ddpm_alphas_cumprod",
    "log_snr_from_alphas_cumprod",
    "log_snr_from_sigmas",
    "snr_from_alphas_cumprod",
]
