"""Loss families. Importing this package registers every loss."""

from ._base import ClassCountsLoss, Loss
from .classification import BinaryFocalLoss, CategoricalLoss, CrossEntropyLoss, FocalLoss

__all__ = [
    "BinaryFocalLoss",
    "CategoricalLoss",
    "ClassCountsLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "Loss",
]
