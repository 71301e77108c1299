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
from .basnet import BASNetHybridLoss
from .boundary import BoundaryLoss
from .dice import DiceLoss, GeneralizedDiceLoss, generalized_dice_weights
from .hausdorff import HausdorffDTLoss
from .jaccard import JaccardLoss, JaccardMetricLoss
from .lovasz import LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad
from .ms_ssim import MSSSIMLoss
from .tversky import FocalTverskyLoss, TverskyLoss

__all__ = [
    "BASNetHybridLoss",
    "BoundaryLoss",
    "DenseInput",
    "DenseLoss",
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "HausdorffDTLoss",
    "JaccardLoss",
    "JaccardMetricLoss",
    "LovaszHingeLoss",
    "LovaszSoftmaxLoss",
    "MSSSIMLoss",
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
