"""torchmetrics metrics the library adds."""

from .group_accuracy import GroupAccuracy

__all__ = ["GroupAccuracy"]
