"""torchmetrics metrics the library adds."""

from typing import TYPE_CHECKING, Any

from .group_accuracy import GroupAccuracy
from .opis import OPIS, operating_point_inconsistency
from .reranking import average_query_expansion, k_reciprocal_rerank
from .retrieval import ReIDMetrics, pairwise_distance, reid_metrics

if TYPE_CHECKING:
    from .topology import BettiMatchingError, BettiNumberError, ClDiceScore

#: The topology metrics need the [segmentation] extra (scikit-image, SciPy, cripser): loaded on
#: first use, so the other metrics import without it.
_TOPOLOGY = ("BettiMatchingError", "BettiNumberError", "ClDiceScore")


def __getattr__(name: str) -> Any:
    if name in _TOPOLOGY:
        from . import topology

        return getattr(topology, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "OPIS",
    "BettiMatchingError",
    "BettiNumberError",
    "ClDiceScore",
    "GroupAccuracy",
    "ReIDMetrics",
    "average_query_expansion",
    "k_reciprocal_rerank",
    "operating_point_inconsistency",
    "pairwise_distance",
    "reid_metrics",
]
