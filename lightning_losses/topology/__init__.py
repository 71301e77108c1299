"""Topology: skeletons, Betti numbers and matchings, and the data transforms topology losses read.

Pure PyTorch, NumPy and SciPy (no Lightning): a pluggable :class:`Skeletonizer` interface with
two backends, the soft morphological skeleton of clDice (:mod:`.soft_skeleton`) and the
topology-preserving simple-point skeleton (:mod:`.simple_points`), Betti numbers and Betti
matching of binary masks (:mod:`.persistence`), and the ground-truth skeleton and signed distance
transforms (:mod:`.transforms`).
"""

from typing import TYPE_CHECKING, Any

from .simple_points import SimplePointSkeletonizer, simple_point_skeleton, simple_points
from .soft_skeleton import (
    Skeletonizer,
    SoftSkeletonizer,
    soft_dilate,
    soft_erode,
    soft_open,
    soft_skeleton,
)

if TYPE_CHECKING:
    from .persistence import (
        betti_matching_error,
        betti_number_error,
        betti_numbers,
        euler_characteristic,
    )
    from .transforms import DistanceTransform, SkeletonTransform, signed_distance

# The NumPy/SciPy/scikit-image side (metrics, data transforms) is imported on first use, so the
# topology losses do not pay for SciPy and scikit-image at import.
_LAZY = {
    "betti_matching_error": "persistence",
    "betti_number_error": "persistence",
    "betti_numbers": "persistence",
    "euler_characteristic": "persistence",
    "DistanceTransform": "transforms",
    "SkeletonTransform": "transforms",
    "signed_distance": "transforms",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistanceTransform",
    "SimplePointSkeletonizer",
    "SkeletonTransform",
    "Skeletonizer",
    "SoftSkeletonizer",
    "betti_matching_error",
    "betti_number_error",
    "betti_numbers",
    "euler_characteristic",
    "signed_distance",
    "simple_point_skeleton",
    "simple_points",
    "soft_dilate",
    "soft_erode",
    "soft_open",
    "soft_skeleton",
]
