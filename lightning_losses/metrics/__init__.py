"""torchmetrics metrics the library adds."""

from .group_accuracy import GroupAccuracy
from .reranking import average_query_expansion, k_reciprocal_rerank
from .retrieval import ReIDMetrics, pairwise_distance, reid_metrics
from .topology import BettiMatchingError, BettiNumberError, ClDiceScore

__all__ = [
    "BettiMatchingError",
    "BettiNumberError",
    "ClDiceScore",
    "GroupAccuracy",
    "ReIDMetrics",
    "average_query_expansion",
    "k_reciprocal_rerank",
    "pairwise_distance",
    "reid_metrics",
]
