"""Topology: skeletons, Betti numbers and matchings, and the data transforms topology losses read.

Pure PyTorch, NumPy and SciPy (no Lightning): the soft morphological skeleton of clDice and a
pluggable :class:`Skeletonizer` interface (:mod:`.soft_skeleton`), Betti numbers and Betti
matching of binary masks (:mod:`.persistence`), and the ground-truth skeleton and signed distance
transforms (:mod:`.transforms`).
"""

from .persistence import (
    betti_matching_error,
    betti_number_error,
    betti_numbers,
    euler_characteristic,
)
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
    "SkeletonTransform",
    "Skeletonizer",
    "SoftSkeletonizer",
    "betti_matching_error",
    "betti_number_error",
    "betti_numbers",
    "euler_characteristic",
    "signed_distance",
    "soft_dilate",
    "soft_erode",
    "soft_open",
    "soft_skeleton",
]
