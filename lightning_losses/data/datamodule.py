"""``ClassificationDataModule``: embedded digits by default, an image-folder tree with one flag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int, check_range
from ._splits import SplitDataModule
from .digits import DIGITS_CLASSES, DigitsDataset, check_image_options, digits_labels
from .image_folder import (
    ImageFolderDataset,
    Sample,
    channel_stats,
    folder_classes,
    list_images,
)
from .long_tail import check_imbalance_factor, long_tail_indices, stratified_split


@dataclass(frozen=True)
class _Plan:
    """Which samples go to which split; labels only, no image read."""

    train: list[Any]  # digit positions, or (path, label) samples with their clean label
    val: list[Any]
    test: list[Any]
    train_labels: np.ndarray  # the labels training sees: noisy where ``noisy_mask`` is set
    clean_train_labels: np.ndarray
    noisy_mask: np.ndarray
    test_is_val: bool


def _check_fraction(value: float, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"`{arg}` must be a number in (0, 1); got {value!r}.")
    return float(value)


def symmetric_label_noise(
    labels: Sequence[int] | np.ndarray, num_classes: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a seeded fraction of labels by a uniformly drawn **different** class.

    Symmetric (uniform off-diagonal) label noise as in the noisy-label literature (e.g. GCE,
    Zhang & Sabuncu 2018; SCE, Wang et al. 2019): with ``N`` labels,
    ``m = floor(noise * N + 0.5)`` positions are drawn without replacement, and each of them
    gets the label ``(y + k) mod K`` with ``k`` uniform on ``{1, ..., K - 1}``, i.e. one of the
    other ``K - 1`` classes with equal probability. The noise rate is exactly ``m / N`` (not a
    per-sample coin flip), and no flipped label equals its original. Both draws come from
    ``numpy.random.default_rng([seed, 1])``, a stream apart from the one that splits the data.

    Args:
        labels: class indices ``(N,)`` in ``[0, num_classes)``.
        num_classes: ``K >= 2`` (a flip needs another class).
        noise: the fraction flipped, in ``[0, 1)``.
        seed: any int.

    Returns:
        ``(noisy_labels, noisy_mask)``: int64 ``(N,)`` and bool ``(N,)``, ``True`` where the
        label was replaced.

    Example:
        >>> noisy, mask = symmetric_label_noise([0, 1, 2, 3, 4] * 4, 5, noise=0.4, seed=0)
        >>> int(mask.sum()), bool((noisy[mask] != np.array([0, 1, 2, 3, 4] * 4)[mask]).all())
        (8, True)
    """
    noise = check_range(noise, "noise", 0.0, 1.0, closed="left")
    check_int(num_classes, "num_classes", 1)
    check_int(seed, "seed")
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(
            f"`labels` must be a 1-D sequence of class indices; got shape {y.shape}, "
            f"dtype {y.dtype}."
        )
    y = y.astype(np.int64)
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}); got values in [{int(y.min())}, "
            f"{int(y.max())}]."
        )
    mask = np.zeros(y.size, dtype=bool)
    if noise == 0.0:
        return y.copy(), mask
    if num_classes < 2:
        raise ValueError(
            f"`noise`={noise} needs at least 2 classes to flip a label to another; got "
            f"num_classes={num_classes}."
        )
    rng = np.random.default_rng([seed, 1])
    flipped = rng.choice(y.size, size=math.floor(noise * y.size + 0.5), replace=False)
    shift = rng.integers(1, num_classes, size=flipped.size)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + shift) % num_classes
    mask[flipped] = True
    return noisy, mask


class ClassificationDataModule(SplitDataModule):
    """Image classification data: the digits or a folder of images, optionally long-tailed.

    With ``data_dir=None`` the data is scikit-learn's 1,797 digits (10 classes, shipped with
    the package, no download), split per class with ``seed`` into test
    (``test_fraction`` of the whole set), validation (``val_fraction`` of the whole set) and
    training (the rest). With ``data_dir`` it is an image-folder tree::

        data_dir/train/<class>/*.png     required
        data_dir/val/<class>/...         optional: else carved from train (``val_fraction``)
        data_dir/test/<class>/...        optional: else the validation split is reused (warned)

    ``test_fraction`` applies to the digits only. ``imbalance_factor > 1`` subsamples the
    training split to the exponential long-tail profile of
    :func:`~lightning_losses.data.long_tail_indices`; validation and test stay as they are.
    Images are normalised with per-channel statistics of the (long-tailed) training split.
    ``label_noise > 0`` then replaces that fraction of the training labels by another class
    (:func:`symmetric_label_noise`); validation and test keep their true labels.

    Attributes available right after construction (cheap: no image is read), which the recipe's
    ``LightningCLI`` links into the model:
        num_classes, in_chans, class_names.

    Available at any time (the split is planned from labels on first use):
        class_counts: float tensor (num_classes,), the number of training samples per class
        after long-tailing, counted on the labels training sees (noisy ones included).
        Class-count-aware losses (LDAM, balanced softmax, logit adjustment, class-balanced
        weights) read it.
        noisy_mask: bool tensor (len(train_dataset),), ``True`` where the training label was
        replaced; noisy_indices: int64 positions of those samples in ``train_dataset``;
        clean_train_targets: int64 tensor, the training labels before the noise.

    Set by :meth:`setup` (any stage builds all three):
        train_dataset, val_dataset, test_dataset.

    Args:
        data_dir: root of an image-folder tree, or ``None`` for the embedded digits.
        image_size: side of the square images fed to the model, >= 8; default 32.
        in_chans: 1 (grey) or 3 (RGB; the digits' grey channel is repeated).
        batch_size: samples per batch, >= 1.
        num_workers: ``DataLoader`` worker processes; workers persist across epochs when > 0.
        val_fraction: share of the data (digits) or of ``train/`` (folder without ``val/``)
            used for validation, in (0, 1).
        test_fraction: share of the digits used for test, in (0, 1);
            ``val_fraction + test_fraction < 1``.
        imbalance_factor: n_max / n_min of the training split, >= 1 (1 keeps it as is).
        label_noise: fraction of training labels replaced by a uniformly drawn different
            class, in [0, 1); default 0 (clean). Exact and seeded: see
            :func:`symmetric_label_noise`.
        seed: drives the splits, the long-tail subset, the label noise and the training
            shuffle order.

    Example:
        >>> dm = ClassificationDataModule(imbalance_factor=10)
        >>> dm.num_classes, dm.class_counts[0] / dm.class_counts[-1] >= 10
        (10, tensor(True))
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 32,
        in_chans: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        imbalance_factor: float = 1.0,
        label_noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_image_options(image_size, in_chans)
        check_int(batch_size, "batch_size", 1)
        check_int(num_workers, "num_workers", 0)
        val_fraction = _check_fraction(val_fraction, "val_fraction")
        test_fraction = _check_fraction(test_fraction, "test_fraction")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                "`val_fraction` + `test_fraction` must be < 1 so that training data remains; "
                f"got {val_fraction} + {test_fraction}."
            )
        imbalance_factor = check_imbalance_factor(imbalance_factor)
        label_noise = check_range(label_noise, "label_noise", 0.0, 1.0, closed="left")
        check_int(seed, "seed")
        self.save_hyperparameters()

        self.data_dir: Path | None = None if data_dir is None else Path(data_dir)
        self.image_size = image_size
        self.in_chans: int = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.imbalance_factor = imbalance_factor
        self.label_noise = label_noise
        self.seed = seed

        self.class_names: list[str] = (
            list(DIGITS_CLASSES) if self.data_dir is None else folder_classes(self.data_dir)
        )
        self.num_classes: int = len(self.class_names)
        if label_noise > 0 and self.num_classes < 2:
            raise ValueError(
                f"`label_noise`={label_noise} needs at least 2 classes to flip a label to "
                f"another; the data has {self.num_classes}."
            )
        self.train_dataset: Dataset[tuple[Tensor, int]] | None = None
        self.val_dataset: Dataset[tuple[Tensor, int]] | None = None
        self.test_dataset: Dataset[tuple[Tensor, int]] | None = None
        self._plan_cache: _Plan | None = None

    # ----------------------------------------------------------------------------- planning

    @property
    def _plan(self) -> _Plan:
        if self._plan_cache is None:
            plan = (
                self._plan_digits() if self.data_dir is None else self._plan_folder(self.data_dir)
            )
            self._plan_cache = plan
        return self._plan_cache

    def _plan_digits(self) -> _Plan:
        labels = digits_labels()
        train, test, val = stratified_split(
            labels, [self.test_fraction, self.val_fraction], seed=self.seed
        )
        kept = long_tail_indices(labels[train], self.imbalance_factor, seed=self.seed)
        train = [train[i] for i in kept]
        return self._noisy_plan(train, val, test, labels[train], test_is_val=False)

    def _plan_folder(self, root: Path) -> _Plan:
        classes = self.class_names
        train: list[Sample] = list_images(root / "train", classes)
        if (root / "val").is_dir():
            val = list_images(root / "val", classes)
        else:
            labels = np.array([y for _, y in train], dtype=np.int64)
            rest, carved = stratified_split(labels, [self.val_fraction], seed=self.seed)
            if not carved:
                raise ValueError(
                    f"No 'val' folder in {str(root)!r}, and val_fraction={self.val_fraction} of "
                    f"{len(train)} training images rounds to no image per class; add a 'val' "
                    "folder or raise `val_fraction`."
                )
            val, train = [train[i] for i in carved], [train[i] for i in rest]
        test_is_val = not (root / "test").is_dir()
        if test_is_val:
            rank_zero_warn(
                f"No 'test' folder in {str(root)!r}: the test split is the validation split, "
                "so test metrics are not an independent estimate."
            )
            test = val
        else:
            test = list_images(root / "test", classes)
        labels = np.array([y for _, y in train], dtype=np.int64)
        kept = long_tail_indices(labels, self.imbalance_factor, seed=self.seed)
        train = [train[i] for i in kept]
        return self._noisy_plan(train, val, test, labels[kept], test_is_val=test_is_val)

    def _noisy_plan(
        self,
        train: list[Any],
        val: list[Any],
        test: list[Any],
        clean: np.ndarray,
        test_is_val: bool,
    ) -> _Plan:
        noisy, mask = symmetric_label_noise(clean, self.num_classes, self.label_noise, self.seed)
        return _Plan(train, val, test, noisy, clean, mask, test_is_val)

    @property
    def class_counts(self) -> Tensor:
        """Training samples per class after long-tailing, float32 tensor (num_classes,).

        Counted on the labels training sees, so with ``label_noise`` on the noisy labels.
        """
        counts = np.bincount(self._plan.train_labels, minlength=self.num_classes)
        return torch.as_tensor(counts, dtype=torch.float32)

    @property
    def noisy_mask(self) -> Tensor:
        """bool (len(train_dataset),): ``True`` where ``label_noise`` replaced the label."""
        return torch.from_numpy(self._plan.noisy_mask.copy())

    @property
    def noisy_indices(self) -> Tensor:
        """int64 positions in ``train_dataset`` of the samples with a replaced label."""
        return torch.from_numpy(np.flatnonzero(self._plan.noisy_mask).astype(np.int64))

    @property
    def clean_train_targets(self) -> Tensor:
        """int64 (len(train_dataset),): the training labels before ``label_noise``."""
        return torch.from_numpy(self._plan.clean_train_labels.copy())

    @property
    def test_is_val(self) -> bool:
        """True when the tree has no ``test`` folder and the validation split stands in for it."""
        return self._plan.test_is_val

    # -------------------------------------------------------------------------- Lightning API

    def prepare_data(self) -> None:
        """Nothing to download: the digits ship with scikit-learn, folders are already local."""

    def setup(self, stage: str | None = None) -> None:
        """Build the train, validation and test datasets (once, whatever the stage)."""
        if self.train_dataset is not None:
            return
        plan = self._plan
        size, chans = self.image_size, self.in_chans
        if self.data_dir is None:
            train = DigitsDataset(plan.train, size, chans)
            train.targets = torch.from_numpy(plan.train_labels.copy())
            self.train_dataset = train
            self.val_dataset = DigitsDataset(plan.val, size, chans, train.mean, train.std)
            self.test_dataset = DigitsDataset(plan.test, size, chans, train.mean, train.std)
        else:
            mean, std = channel_stats(plan.train, size, chans, seed=self.seed)
            classes = self.class_names
            labelled = zip(plan.train, plan.train_labels, strict=True)
            samples = [(path, int(y)) for (path, _), y in labelled]
            self.train_dataset = ImageFolderDataset(samples, classes, size, chans, mean, std)
            self.val_dataset = ImageFolderDataset(plan.val, classes, size, chans, mean, std)
            self.test_dataset = ImageFolderDataset(plan.test, classes, size, chans, mean, std)
