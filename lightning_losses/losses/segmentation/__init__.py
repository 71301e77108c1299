"""Segmentation losses on the dense contract (:mod:`._dense`): region overlap losses.

Importing this package registers them (family ``"segmentation"``).
"""

from ._dense import (
    DenseInput,
    DenseLoss,
    RegionLoss,
    RegionSums,
    prepare_dense,
    region_sums,
    soft_tp_fp_fn,
)
from .dice import DiceLoss, GeneralizedDiceLoss, generalized_dice_weights

__all__ = [
    "DenseInput",
    "DenseLoss",
    "DiceLoss",
    "GeneralizedDiceLoss",
    "RegionLoss",
    "RegionSums",
    "generalized_dice_weights",
    "prepare_dense",
    "region_sums",
    "soft_tp_fp_fn",
]
