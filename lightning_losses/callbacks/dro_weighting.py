r"""``DROWeighting``: per-sample distributionally robust weights as a ``LossMixin`` callback.

The best responses themselves are the pure oracles of :mod:`lightning_losses.weighting.dro`
(Levy, Carmon, Duchi, Sidford, NeurIPS 2020; Mehta, Roulet, Pillutla, Harchaoui, ICLR 2024);
this module adds the Lightning side: choosing and checking an oracle, the DDP all-gather that
makes the weights global, the scaling for the mixin's mean, and logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

from .._checks import check_choice
from ..mixins import LossMixin
from ..weighting.dro import (
    PENALTIES,
    chi_square_penalized_weights,
    chi_square_weights,
    cvar_kl_weights,
    cvar_weights,
    kl_weights,
    spectral_risk_weights,
    spectrum_esrm,
    spectrum_extremile,
    spectrum_superquantile,
)


def _spectral(spectrum: Callable[..., Tensor], param: str) -> Callable[..., Tensor]:
    """The oracle of a spectral risk measure, from its spectrum and the spectrum's parameter."""

    def oracle(
        losses: Tensor, *, shift_cost: float = 0.0, penalty: str = "chi2", **kw: float
    ) -> Tensor:
        sigma = spectrum(losses.numel(), kw[param], device=losses.device)
        return spectral_risk_weights(losses, sigma, shift_cost=shift_cost, penalty=penalty)

    return oracle


#: oracle name -> (function(losses, **kwargs) -> p, required arguments, optional arguments).
ORACLES: dict[str, tuple[Callable[..., Tensor], tuple[str, ...], tuple[str, ...]]] = {
    "cvar": (cvar_weights, ("alpha",), ()),
    "cvar_kl": (cvar_kl_weights, ("alpha", "reg"), ()),
    "chi_square": (chi_square_weights, ("rho",), ()),
    "chi_square_penalized": (chi_square_penalized_weights, ("reg",), ()),
    "kl": (kl_weights, ("temperature",), ()),
    "superquantile": (
        _spectral(spectrum_superquantile, "alpha"),
        ("alpha",),
        ("shift_cost", "penalty"),
    ),
    "extremile": (_spectral(spectrum_extremile, "r"), ("r",), ("shift_cost", "penalty")),
    "esrm": (_spectral(spectrum_esrm, "rho"), ("rho",), ("shift_cost", "penalty")),
}


def check_equal_sizes(sizes: list[int]) -> int:
    """The common per-rank batch size; a ``ValueError`` when the ranks' sizes differ."""
    if len(set(sizes)) != 1:
        raise ValueError(
            "DROWeighting needs the same batch size on every rank under DDP (the weights are "
            f"computed over the global batch); got per-rank sizes {sizes}. Use drop_last=True or "
            "a dataset size divisible by the global batch size."
        )
    return sizes[0]


class DROWeighting(L.Callback):
    r"""Reweight each batch by a distributionally robust best response (CVaR, χ², KL, spectral).

    At every training step the callback receives the detached per-sample losses :math:`\ell`
    of the batch (:math:`N` samples), computes the oracle's weights :math:`p \in \Delta_N`, which
    maximise :math:`\langle p, \ell\rangle` minus a penalty over an uncertainty set around the
    uniform weights, and returns :math:`w = N p`. The mixin's ``"mean"``,
    :math:`\frac{1}{N}\sum_i w_i \ell_i = \sum_i p_i \ell_i`, is then the robust loss of the
    batch. :math:`p` is a constant in the backward pass, so (Danskin / the envelope theorem) the
    gradient is that of the robust objective at its best response.

    ============================  ====================  ============================================
    ``oracle``                    arguments             weights :math:`p`
    ============================  ====================  ============================================
    ``"cvar"``                    ``alpha``             uniform on the worst ``alpha`` fraction
    ``"cvar_kl"``                 ``alpha``, ``reg``    CVaR softened by a KL penalty
    ``"chi_square"``              ``rho``               worst case in a χ² ball of radius ``rho``
    ``"chi_square_penalized"``    ``reg``               χ² penalty of strength ``reg``
    ``"kl"``                      ``temperature``       ``softmax(losses / temperature)``
    ``"superquantile"``           ``alpha``             spectral risk; as CVaR when shift_cost=0
    ``"extremile"``               ``r``                 expected max of ``r`` draws (``r >= 1``)
    ``"esrm"``                    ``rho``               exponential spectral risk, aversion ``rho``
    ============================  ====================  ============================================

    The spectral oracles (``superquantile``, ``extremile``, ``esrm``) also take ``shift_cost``
    (:math:`\nu \ge 0`, default 0: the plain spectral risk) and ``penalty`` (``"chi2"``, the
    default, or ``"kl"``); see :func:`~lightning_losses.weighting.spectral_risk_weights`. The
    other arguments have **no defaults**: they set how robust the objective is and are tuned per
    task, as in the pure oracles. Every argument is checked at construction by running the
    oracle once on a small vector, so a bad value fails with the oracle's own message.

    **DDP.** Every rank all-gathers the per-rank loss vectors (in rank order), computes
    :math:`p` over the **global** batch of :math:`N = R\,N_r` samples (the same on every rank)
    and returns its own slice times :math:`N`. Rank :math:`r` divides by its :math:`N_r` and DDP
    averages the gradients over the :math:`R` ranks, so the gradient is that of
    :math:`\frac{1}{R N_r}\sum_{\text{global}} N p_i \ell_i = \sum_i p_i \ell_i`: the same as
    one process with the global batch. This needs the **same batch size on every rank**
    (``drop_last=True`` or a dataset size divisible by the global batch); it is checked every
    step and a mismatch raises a ``ValueError``. Every rank must call the loss the same number of
    times (the all-gathers are collective).

    **Small batches.** :math:`p` is the best response to the *batch*, not to the data
    distribution, so the batch robust loss is a biased (downward) estimate of the population
    robust risk, and its gradient is biased with it; the bias shrinks as the batch grows
    (Levy et al., 2020). With ``"cvar"`` and
    :math:`\alpha N < 1` only the single largest loss of a batch is trained on. Under DDP the
    global batch counts, which is one reason to compute :math:`p` globally.

    **Cost.** Per step one oracle call on :math:`N` losses (a sort, or 100 bisection passes of
    O(N) for the dual solvers; an O(N²) isotonic fit for a spectral oracle with
    ``shift_cost > 0``, vectorised on the device) and, under DDP, one all-gather of the
    :math:`N_r` losses plus one of the batch size. No extra forward or backward pass. Without
    DDP a step reads nothing back to the host (the oracles and the logged statistics stay on the
    device); under DDP the ranks' batch sizes are read to check that they are equal before the
    losses are gathered (``R`` integers per step: a gather of unequal sizes would fail or hang).

    **State.** None apart from the configuration: :meth:`state_dict` is empty, and resuming a
    run needs nothing from the callback. (There are no state tensors that ``ddp_spawn`` could
    share between processes.)

    **Logging.** ``train/dro/max_weight``, the largest :math:`N p_i` (1 for uniform weights,
    :math:`N` for a point mass), and ``train/dro/effective_sample_size``,
    :math:`1/\sum_i p_i^2` (:math:`N` for uniform weights, :math:`\alpha N` for CVaR), both over
    the global batch, through ``pl_module.log`` with ``on_step=False, on_epoch=True`` (means over
    the epoch's steps, ``sync_dist=True``).

    The identity above needs the criterion's ``"mean"`` reduction; a fully ignored sample counts
    in :math:`N` with loss 0. Weights from other callbacks multiply into :math:`w` as usual.

    Args:
        oracle: required, one of ``"cvar"``, ``"cvar_kl"``, ``"chi_square"``,
            ``"chi_square_penalized"``, ``"kl"``, ``"superquantile"``, ``"extremile"``, ``"esrm"``.
        **oracle_kwargs: the oracle's arguments (table above), by keyword.

    Example:
        >>> trainer = L.Trainer(callbacks=[DROWeighting("cvar", alpha=0.2)])
        >>> # the module uses LossMixin and returns self.compute_loss(logits, y, batch=batch)
    """

    def __init__(self, oracle: str, **oracle_kwargs: Any) -> None:
        self.oracle = check_choice(oracle, tuple(ORACLES), "oracle")
        fn, required, optional = ORACLES[oracle]
        missing = [k for k in required if k not in oracle_kwargs]
        if missing:
            raise ValueError(
                f"DROWeighting(oracle={oracle!r}) needs the argument(s) "
                f"{', '.join(f'`{k}`' for k in missing)}; got {sorted(oracle_kwargs) or 'none'}. "
                f"Its arguments are {', '.join(required + optional)}."
            )
        unknown = [k for k in oracle_kwargs if k not in required + optional]
        if unknown:
            raise ValueError(
                f"DROWeighting(oracle={oracle!r}) got unknown argument(s) "
                f"{', '.join(f'`{k}`' for k in unknown)}; its arguments are "
                f"{', '.join(required + optional)}."
            )
        if "penalty" in oracle_kwargs:
            check_choice(oracle_kwargs["penalty"], PENALTIES, "penalty")
        self.oracle_kwargs: dict[str, Any] = dict(oracle_kwargs)
        self._fn = fn
        self.weights(torch.tensor([0.0, 1.0, 2.0, 3.0]))  # validates the values

    # -- Lightning hooks ----------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(oracle=self.oracle, **self.oracle_kwargs)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LossMixin):
            raise TypeError(
                f"DROWeighting needs LossMixin: {type(pl_module).__name__} does not use it, so no "
                "loss would be reweighted. Mix `lightning_losses.LossMixin` into the module and "
                "return `self.compute_loss(outputs, target, batch=batch)` from training_step."
            )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        return None

    # -- LossMixin protocol -------------------------------------------------------------------

    def weights(self, losses: Tensor) -> Tensor:
        """The oracle's simplex weights ``p`` (N,) for a loss vector, no scaling, no DDP."""
        return self._fn(losses, **self.oracle_kwargs)

    @torch.no_grad()
    def sample_weights(self, pl_module: Any, batch: Any, losses: Tensor) -> Tensor:
        """``N p`` for this rank's samples; ``p`` are the oracle's weights over the global batch."""
        losses = losses.detach()
        n_local = int(losses.shape[0])
        world, rank = 1, 0
        everything = losses
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world, rank = dist.get_world_size(), dist.get_rank()
            everything = _all_gather_equal(losses, world)
        p = self.weights(everything)
        n = int(everything.shape[0])
        self._log(pl_module, p, n_local)
        return (n * p[rank * n_local : (rank + 1) * n_local]).to(losses.dtype)

    # -- pieces -------------------------------------------------------------------------------

    def _log(self, pl_module: Any, p: Tensor, batch_size: int) -> None:
        if getattr(pl_module, "_trainer", None) is None or not hasattr(pl_module, "log"):
            return
        p64 = p.detach().to(torch.float64)
        stats = (p64.max() * p64.numel(), 1.0 / p64.square().sum())  # tensors: nothing read
        for name, value in zip(("max_weight", "effective_sample_size"), stats, strict=True):
            pl_module.log(
                f"train/dro/{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
            )


def _all_gather_equal(losses: Tensor, world: int) -> Tensor:
    """Every rank's losses concatenated in rank order; checks that all ranks hold as many."""
    size = torch.tensor([losses.numel()], dtype=torch.int64, device=losses.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    check_equal_sizes([int(s) for s in sizes])
    parts = [torch.empty_like(losses) for _ in range(world)]
    dist.all_gather(parts, losses.contiguous())
    return torch.cat(parts)


__all__ = ["ORACLES", "DROWeighting", "check_equal_sizes"]
