"""Metric-learning losses: embeddings ``(N, D)`` and labels ``(N,)``, one value per anchor.

Importing this package registers them (family ``"metric"``).
"""

from ._pairs import PairLoss, gather_references
from .center import CenterLoss
from .circle import CircleLoss
from .contrastive import AlignUniformLoss, NTXentLoss, SupConLoss
from .margin_softmax import ArcFaceLoss, CosFaceLoss, MarginSoftmaxLoss
from .triplet import TripletLoss

__all__ = [
    "AlignUniformLoss",
    "ArcFaceLoss",
    "CenterLoss",
    "CircleLoss",
    "CosFaceLoss",
    "MarginSoftmaxLoss",
    "NTXentLoss",
    "PairLoss",
    "SupConLoss",
    "TripletLoss",
    "gather_references",
]
