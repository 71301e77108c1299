"""Weighting policies of the pure core: per-sample weights from losses (no ``lightning`` import)."""

from .dro import (
    chi_square_penalized_weights,
    chi_square_weights,
    cvar_kl_weights,
    cvar_weights,
    group_dro_update,
    kl_weights,
    spectral_risk_weights,
    spectrum_esrm,
    spectrum_extremile,
    spectrum_superquantile,
)
from .infobatch import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    InfoBatchPlan,
    epoch_generator,
    expected_epoch_size,
    expected_total_steps,
    infobatch_active,
    infobatch_plan,
    infobatch_stop_epoch,
    num_kept_candidates,
)
from .score_store import ScoreStore, gather_updates

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_PRUNE_RATIO",
    "InfoBatchPlan",
    "ScoreStore",
    "chi_square_penalized_weights",
    "chi_square_weights",
    "cvar_kl_weights",
    "cvar_weights",
    "epoch_generator",
    "expected_epoch_size",
    "expected_total_steps",
    "gather_updates",
    "group_dro_update",
    "infobatch_active",
    "infobatch_plan",
    "infobatch_stop_epoch",
    "kl_weights",
    "num_kept_candidates",
    "spectral_risk_weights",
    "spectrum_esrm",
    "spectrum_extremile",
    "spectrum_superquantile",
]
