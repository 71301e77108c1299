"""Lightning callbacks that plug into :class:`~lightning_losses.LossMixin`'s loss pipeline."""

from .dro_weighting import DROWeighting
from .group_dro import GroupDRO

__all__ = ["DROWeighting", "GroupDRO"]
