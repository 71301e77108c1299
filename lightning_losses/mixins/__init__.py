"""LightningModule mixins."""

from .loss_mixin import LossMixin
from .protocols import LossObserver, LossTerm, LossTermProvider, SampleWeighter

__all__ = ["LossMixin", "LossObserver", "LossTerm", "LossTermProvider", "SampleWeighter"]
