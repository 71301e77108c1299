"""Metric-learning losses: embeddings ``(N, D)`` and labels ``(N,)``, one value per anchor.

Importing this package registers them (family ``"metric"``).
"""

from ._pairs import PairLoss, gather_references
from .adaface import AdaFaceLoss
from .barlow_twins import BarlowTwinsLoss
from .center import CenterLoss
from .centroid_triplet import CentroidTripletLoss
from .circle import CircleLoss
from .contrastive import AlignUniformLoss, NTXentLoss, SupConLoss
from .isogclr import ISogCLRLoss
from .margin_softmax import ArcFaceLoss, CosFaceLoss, MarginSoftmaxLoss
from .tcm import ThresholdConsistentMarginLoss
from .triplet import TripletLoss

__all__ = [
    "AdaFaceLoss",
    "AlignUniformLoss",
    "ArcFaceLoss",
    "BarlowTwinsLoss",
    "CenterLoss",
    "CentroidTripletLoss",
    "CircleLoss",
    "CosFaceLoss",
    "ISogCLRLoss",
    "MarginSoftmaxLoss",
    "NTXentLoss",
    "PairLoss",
    "SupConLoss",
    "ThresholdConsistentMarginLoss",
    "TripletLoss",
    "gather_references",
]
