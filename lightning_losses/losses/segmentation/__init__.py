"""Segmentation losses on the dense contract (:mod:`._dense`): region overlap and Lovász losses.

Importing this package registers them (family ``"segmentation"``).
"""

from ._dense import (
    DenseInput,
    DenseLoss,
    RegionLoss,
    RegionSums,
    SmoothedRegionLoss,
    prepare_dense,
    region_sums,
    soft_tp_fp_fn,
)
from .dice import DiceLoss, GeneralizedDiceLoss, generalized_dice_weights
from .jaccard import JaccardLoss, JaccardMetricLoss
from .lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad
from .tversky import FocalTverskyLoss, TverskyLoss

__all__ = [
    "DenseInput",
    "DenseLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "JaccardLoss",
    "JaccardMetricLoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "RegionLoss",
    "RegionSums",
    "SmoothedRegionLoss",
    "TverskyLoss",
    "generalized_dice_weights",
    "lovasz_grad",
    "prepare_dense",
    "region_sums",
    "soft_tp_fp_fn",
]
