"""Loss families. Importing this package registers every loss."""

from ._base import ClassCountsLoss, Loss
from .classification import (
    BinaryCrossEntropyLoss,
    BinaryFocalLoss,
    CategoricalLoss,
    CrossEntropyLoss,
    FocalLoss,
)

__all__ = [
    "BinaryCrossEntropyLoss",
    "BinaryFocalLoss",
    "CategoricalLoss",
    "ClassCountsLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "Loss",
]
