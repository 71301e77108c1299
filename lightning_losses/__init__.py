"""lightning_losses: losses, reweighting, distillation and diagnostics for PyTorch Lightning."""

from ._reduce import PerSample, reduce_loss
from .mixins import LossMixin, LossTerm
from .registry import build_loss, list_losses, loss_info

__all__ = [
    "LossMixin",
    "LossTerm",
    "PerSample",
    "build_loss",
    "list_losses",
    "loss_info",
    "reduce_loss",
]
__version__ = "0.1.0"
