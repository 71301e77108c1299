"""Data for the recipes: embedded datasets, real folder loaders, long-tail subsets, datamodules."""

from .datamodule import ClassificationDataModule
from .diffusion_datamodule import DiffusionImagesDataModule
from .digit_variants import DigitVariantsDataModule, digit_variants
from .digits import DIGITS_CLASSES, DigitsDataset, digits_labels
from .group_balanced import GroupBalancedSampler
from .identities import IdentityImages, ReIDSplits, synthetic_identities
from .image_folder import (
    IMG_EXTENSIONS,
    ImageFolderDataset,
    channel_stats,
    folder_classes,
    list_images,
    load_image,
)
from .long_tail import long_tail_counts, long_tail_indices, stratified_split
from .market1501 import Market1501Images, market1501_splits, parse_market_name
from .pk_sampler import PKSampler
from .planned_batches import PlannedBatchSampler
from .reid_datamodule import QueryGallery, ReIDDataModule
from .segmentation_datamodule import SegmentationAugment, SegmentationDataModule
from .segmentation_folder import SegmentationFolderDataset, folder_splits, list_pairs
from .spurious import SpuriousDigits, SpuriousDigitsDataModule, spurious_digits_splits
from .thin_structures import (
    LABEL_VARIANTS,
    OOD_SPLITS,
    ThinStructureParams,
    ThinStructuresDataset,
    thin_structures,
)

__all__ = [
    "DIGITS_CLASSES",
    "IMG_EXTENSIONS",
    "LABEL_VARIANTS",
    "OOD_SPLITS",
    "ClassificationDataModule",
    "DiffusionImagesDataModule",
    "DigitVariantsDataModule",
    "DigitsDataset",
    "GroupBalancedSampler",
    "IdentityImages",
    "ImageFolderDataset",
    "Market1501Images",
    "PKSampler",
    "PlannedBatchSampler",
    "QueryGallery",
    "ReIDDataModule",
    "ReIDSplits",
    "SegmentationAugment",
    "SegmentationDataModule",
    "SegmentationFolderDataset",
    "SpuriousDigits",
    "SpuriousDigitsDataModule",
    "ThinStructureParams",
    "ThinStructuresDataset",
    "channel_stats",
    "digit_variants",
    "digits_labels",
    "folder_classes",
    "folder_splits",
    "list_images",
    "list_pairs",
    "load_image",
    "long_tail_counts",
    "long_tail_indices",
    "market1501_splits",
    "parse_market_name",
    "spurious_digits_splits",
    "stratified_split",
    "synthetic_identities",
    "thin_structures",
]
