"""lightning_losses: losses, reweighting, distillation and diagnostics for PyTorch Lightning."""

from typing import TYPE_CHECKING, Any

from ._reduce import PerSample, reduce_loss
from .registry import build_loss, list_losses, loss_info

if TYPE_CHECKING:
    from .mixins import LossMixin, LossTerm

# The Lightning side is imported on first use, so that the losses alone (and the
# `lightning-losses` command) do not pay for importing Lightning.
_LAZY = {"LossMixin": "mixins", "LossTerm": "mixins"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
