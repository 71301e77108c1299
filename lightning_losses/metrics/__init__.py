"""torchmetrics metrics the library adds."""

from .group_accuracy import GroupAccuracy
from .topology import BettiMatchingError, BettiNumberError, ClDiceScore

__all__ = ["BettiMatchingError", "BettiNumberError", "ClDiceScore", "GroupAccuracy"]
