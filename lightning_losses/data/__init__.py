"""Data for the recipes: embedded datasets, real folder loaders, long-tail subsets, datamodules."""

from .datamodule import ClassificationDataModule
from .digit_variants import DigitVariantsDataModule, digit_variants
from .digits import DIGITS_CLASSES, DigitsDataset, digits_labels
from .group_balanced import GroupBalancedSampler
from .image_folder import (
    IMG_EXTENSIONS,
    ImageFolderDataset,
    channel_stats,
    folder_classes,
    list_images,
    load_image,
)
from .long_tail import long_tail_counts, long_tail_indices, stratified_split
from .planned_batches import PlannedBatchSampler
from .spurious import SpuriousDigits, SpuriousDigitsDataModule, spurious_digits_splits

__all__ = [
    "DIGITS_CLASSES",
    "IMG_EXTENSIONS",
    "ClassificationDataModule",
    "DigitVariantsDataModule",
    "DigitsDataset",
    "GroupBalancedSampler",
    "ImageFolderDataset",
    "PlannedBatchSampler",
    "SpuriousDigits",
    "SpuriousDigitsDataModule",
    "channel_stats",
    "digit_variants",
    "digits_labels",
    "folder_classes",
    "list_images",
    "load_image",
    "long_tail_counts",
    "long_tail_indices",
    "spurious_digits_splits",
    "stratified_split",
]
