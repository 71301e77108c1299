"""Lightning callbacks that plug into :class:`~lightning_losses.LossMixin`'s loss pipeline."""

from .group_dro import GroupDRO

__all__ = ["GroupDRO"]
