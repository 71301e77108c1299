"""Topology: skeletons, Betti numbers and matchings, and the data transforms topology losses read.

Pure PyTorch, NumPy and SciPy (no Lightning): a pluggable :class:`Skeletonizer` interface with
two backends, the soft morphological skeleton of clDice (:mod:`.soft_skeleton`) and the
topology-preserving simple-point skeleton (:mod:`.simple_points`), Betti numbers and Betti
matching of binary masks (:mod:`.persistence`), and the ground-truth skeleton and signed distance
transforms (:mod:`.transforms`).
"""

from .persistence import (
    betti_matching_error,
    betti_number_error,
    betti_numbers,
    euler_characteristic,
)
from .simple_points import SimplePointSkeletonizer, simple_point_skeleton, simple_points
from .soft_skeleton import (
    Skeletonizer,
    SoftSkeletonizer,
    soft_dilate,
    soft_erode,
    soft_open,
    soft_skeleton,
)
from .transforms import DistanceTransform, SkeletonTransform, signed_distance

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
