"""``SegmentationDataModule``: embedded thin structures, or image/mask folders with one flag."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import check_choice, check_int, check_number
from ._splits import SplitDataModule
from .digits import check_image_options
from .segmentation_folder import (
    VOID,
    SegmentationFolderDataset,
    folder_splits,
    image_statistics,
    mask_statistics,
)
from .thin_structures import (
    LABEL_VARIANTS,
    OOD_SPLITS,
    SampleTransform,
    ThinStructureParams,
    ThinStructuresDataset,
)


def _check_fraction(value: float, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"`{arg}` must be a number in (0, 1); got {value!r}.")
    return float(value)


def _check_transforms(transforms: Sequence[SampleTransform] | None, arg: str) -> tuple:
    if transforms is None:
        return ()
    if callable(transforms):
        transforms = [transforms]
    for t in transforms:
        if not callable(t):
            raise TypeError(f"`{arg}` must be callables on a sample mapping; got {t!r}.")
    return tuple(transforms)


class SegmentationAugment:
    """Seeded training augmentation of a segmentation sample: flips, quarter turns, intensity.

    Each call draws, independently: a left-right flip and an up-down flip (each with
    probability 0.5) and a quarter turn by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3}
    (square images; a non-square one turns by 0 or 180 degrees, so its shape is kept). Together
    these are the eight symmetries of the square, exact on a pixel grid: a thin structure
    keeps its width and connectivity. The image (already normalised, so in units of the
    training split's standard deviation) then becomes ``a * x + b + noise`` with a contrast
    factor ``a`` log-uniform in ``[1 / (1 + contrast), 1 + contrast]``, a brightness shift
    ``b`` uniform in ``[-brightness, brightness]`` and Gaussian pixel noise of a standard
    deviation uniform in ``[0, noise]``. The geometric draw applies to ``"image"`` and to every
    entry of ``spatial_keys``; intensity to the image only.

    The random stream is NumPy's, seeded by ``seed`` and the ``DataLoader`` worker's id (each
    worker its own stream), so a run repeats exactly with the same seed and worker count.

    Args:
        seed: seeds the random stream.
        flip: draw the two flips.
        rotate: draw the quarter turn.
        contrast, brightness, noise: ranges of the intensity jitter, >= 0 (0 turns one off).
        spatial_keys: entries transformed with the image, ``("mask",)`` by default.

    Example:
        >>> augment = SegmentationAugment(seed=0)
        >>> sample = augment({"image": torch.zeros(1, 8, 8), "mask": torch.zeros(8, 8).long()})
        >>> sample["image"].shape, sample["mask"].shape
        (torch.Size([1, 8, 8]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        flip: bool = True,
        rotate: bool = True,
        contrast: float = 0.25,
        brightness: float = 0.25,
        noise: float = 0.1,
        spatial_keys: Sequence[str] = ("mask",),
    ) -> None:
        self.seed = check_int(seed, "seed", 0)
        self.flip, self.rotate = bool(flip), bool(rotate)
        for value, arg in ((contrast, "contrast"), (brightness, "brightness"), (noise, "noise")):
            if check_number(value, arg) < 0:
                raise ValueError(f"`{arg}` must be >= 0; got {value!r}.")
        self.contrast, self.brightness = float(contrast), float(brightness)
        self.noise = float(noise)
        self.spatial_keys = tuple(spatial_keys)
        self._rng: np.random.Generator | None = None
        self._worker: int | None = None

    def __repr__(self) -> str:
        return (
            f"SegmentationAugment(seed={self.seed}, flip={self.flip}, rotate={self.rotate}, "
            f"contrast={self.contrast}, brightness={self.brightness}, noise={self.noise})"
        )

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        # A worker is a copy of the main process's object: give it its own stream.
        if self._rng is None or self._worker != worker:
            self._rng = np.random.default_rng([self.seed, worker + 1])
            self._worker = worker
        return self._rng

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        rng = self._generator()
        image: Tensor = sample["image"]
        square = image.shape[-1] == image.shape[-2]
        flips = rng.random(2) < 0.5 if self.flip else np.zeros(2, dtype=bool)
        turn = int(rng.integers(4)) if self.rotate else 0
        if not square:
            turn = 2 * (turn % 2)
        contrast = math.exp(rng.uniform(-1.0, 1.0) * math.log1p(self.contrast))
        brightness = rng.uniform(-1.0, 1.0) * self.brightness
        sigma = rng.uniform(0.0, self.noise)
        noise_seed = int(rng.integers(2**62))

        def geometric(x: Tensor) -> Tensor:
            dims = [d for d, f in zip((-1, -2), flips, strict=True) if f]
            if dims:
                x = torch.flip(x, dims)
            if turn:
                x = torch.rot90(x, turn, dims=(-2, -1))
            return x.contiguous()

        out = dict(sample)
        for key in ("image", *self.spatial_keys):
            if key in out:
                out[key] = geometric(torch.as_tensor(out[key]))
        x = out["image"] * contrast + brightness
        if sigma > 0:
            generator = torch.Generator().manual_seed(noise_seed)
            x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        out["image"] = x
        return out


class SegmentationDataModule(SplitDataModule):
    """Semantic segmentation data: the embedded thin structures, or an image/mask folder tree.

    With ``data_dir=None`` the data is drawn by :func:`~lightning_losses.data.thin_structures`
    (no file is read): ``train_size`` training, ``val_size`` validation and ``test_size``
    in-distribution test images, plus ``test_size`` images for each OOD split in
    ``ood_splits``, all with ``seed``. ``labels`` picks the training labels (``"accurate"``,
    ``"noisy"``, ``"pseudo"``); validation and test keep the accurate labels, so reports
    measure against the truth (the TopoMortar protocol). ``difficulty`` overrides fields of
    :class:`~lightning_losses.data.ThinStructureParams` (e.g. ``{"contrast": 0.25}``).

    With ``data_dir`` it is a folder tree (see :mod:`lightning_losses.data.segmentation_folder`)::

        data_dir/images/*.png   data_dir/masks/*.png       required (the training pool)
        data_dir/val/...        data_dir/test/...          optional: else seeded shares
        data_dir/test_<name>/...                           optional extra test splits

    Every sample is a mapping ``{"image": float32 (C, S, S), "mask": int64 (S, S), "index":
    int}``. ``train_transforms`` run on training samples first (augmentation), then
    ``transforms`` on the samples of every split (for instance one that adds a ``"skeleton"``
    or ``"distance"`` entry); entries they add are stacked by the default collate and reach the
    losses through ``LossMixin``. ``augment=True`` puts a :class:`SegmentationAugment` seeded
    with ``seed`` (flips, quarter turns, intensity jitter) before the ``train_transforms``, so
    that entries they derive from the mask (a skeleton) follow the augmented mask. Images are
    normalised per channel with the training split's
    mean and standard deviation.

    Attributes available right after construction (the recipe's ``LightningCLI`` links them):
        num_classes: 2 (background, structure) or 3 with ``multiclass`` (blobs as class 2);
        for a folder, ``num_classes`` or the largest training mask value + 1.
        in_chans; test_split_names: the names of the loaders ``test_dataloader`` returns, in
        order (``["test", "ood_stripes", ...]``, or ``["test", "test_<name>", ...]``).

    Available at any time (builds the training set on first use):
        class_counts: float32 (num_classes,), training pixels per class in the labels training
        sees (ignored pixels left out).

    Set by :meth:`setup`: train_dataset, val_dataset, test_dataset (in-distribution) and
    test_datasets (a dict name -> dataset, in ``test_split_names`` order).

    Args:
        data_dir: root of an image/mask folder tree, or ``None`` for the thin structures.
        image_size: side of the square images; for a folder ``None`` keeps each file's size.
        in_chans: 1 (grey) or 3 (RGB).
        multiclass: thin structures only: add blobs as class 2.
        num_classes: folder only: the number of classes (``None`` infers it from the training
            masks); for the thin structures it must be ``None`` or match ``multiclass``.
        labels: thin structures only: the training label variant.
        batch_size: samples per batch, >= 1.
        num_workers: ``DataLoader`` worker processes (they persist across epochs when > 0).
        train_size, val_size, test_size: thin structures only: images per split (each OOD
            split has ``test_size``).
        ood_splits: thin structures only: which OOD test splits to build, in order (default
            all of :data:`~lightning_losses.data.thin_structures.OOD_SPLITS`).
        difficulty: thin structures only: overrides of :class:`ThinStructureParams` fields.
        val_fraction, test_fraction: folder only: shares of ``data_dir/images`` used for a
            missing ``val`` / ``test`` folder, in (0, 1).
        ignore_index: folder only: mask value 255 is mapped to it (``None``: 255 is an error
            unless ``num_classes`` exceeds 255).
        augment: training augmentation by :class:`SegmentationAugment` (default off).
        train_transforms, transforms: sample transforms (callables on the sample mapping).
        seed: drives the generator (or the folder split) and the training shuffle order.

    Example:
        >>> dm = SegmentationDataModule(train_size=32, val_size=8, test_size=8)
        >>> dm.num_classes, dm.test_split_names[:2]
        (2, ['test', 'ood_stripes'])
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape
        (torch.Size([16, 1, 64, 64]), torch.Size([16, 64, 64]))
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int | None = 64,
        in_chans: int = 1,
        multiclass: bool = False,
        num_classes: int | None = None,
        labels: str = "accurate",
        batch_size: int = 16,
        num_workers: int = 0,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 128,
        ood_splits: Sequence[str] | None = None,
        difficulty: Mapping[str, Any] | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        ignore_index: int | None = None,
        augment: bool = False,
        train_transforms: Sequence[SampleTransform] | None = None,
        transforms: Sequence[SampleTransform] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir: Path | None = None if data_dir is None else Path(data_dir).expanduser()
        if self.data_dir is None:
            check_int(image_size, "image_size", 16)  # the thin structures need a side >= 16
        if image_size is not None:
            check_image_options(image_size, in_chans)
        elif in_chans not in (1, 3) or isinstance(in_chans, bool):
            raise ValueError(f"`in_chans` must be 1 (grey) or 3 (RGB); got {in_chans!r}.")
        check_choice(labels, LABEL_VARIANTS, "labels")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.num_workers = check_int(num_workers, "num_workers", 0)
        self.seed = check_int(seed, "seed", 0)
        for value, arg in (
            (train_size, "train_size"),
            (val_size, "val_size"),
            (test_size, "test_size"),
        ):
            check_int(value, arg, 1)
        ood = tuple(OOD_SPLITS if ood_splits is None else ood_splits)
        for name in ood:
            check_choice(name, OOD_SPLITS, "ood_splits")
        if ignore_index is not None:
            check_int(ignore_index, "ignore_index")
        self.params = ThinStructureParams().with_overrides(difficulty)
        self.save_hyperparameters(ignore=["train_transforms", "transforms"])

        self.image_size, self.in_chans = image_size, in_chans
        self.multiclass, self.labels = bool(multiclass), labels
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.ood_splits = ood
        self.val_fraction = _check_fraction(val_fraction, "val_fraction")
        self.test_fraction = _check_fraction(test_fraction, "test_fraction")
        self.ignore_index = ignore_index
        if not isinstance(augment, bool):
            raise TypeError(f"`augment` must be True or False; got {augment!r}.")
        self.augment = augment
        augmentation = (SegmentationAugment(seed=self.seed),) if augment else ()
        self.train_transforms = augmentation + _check_transforms(
            train_transforms, "train_transforms"
        )
        self.transforms = _check_transforms(transforms, "transforms")
        self._class_pixels: np.ndarray | None = None

        if self.data_dir is None:
            expected = 3 if self.multiclass else 2
            if num_classes is not None and num_classes != expected:
                raise ValueError(
                    f"`num_classes` must be {expected} for the thin structures with "
                    f"multiclass={self.multiclass} (or None); got {num_classes!r}."
                )
            self.num_classes: int = expected
            self.test_split_names: list[str] = ["test", *ood]
        else:
            if labels != "accurate":
                raise ValueError(
                    f"`labels`={labels!r} applies to the thin structures only; a folder's masks "
                    "are used as they are (labels='accurate')."
                )
            if self.val_fraction + self.test_fraction >= 1.0:
                raise ValueError(
                    "`val_fraction` + `test_fraction` must be < 1 so that training data remains; "
                    f"got {self.val_fraction} + {self.test_fraction}."
                )
            self._folder = folder_splits(
                self.data_dir, self.val_fraction, self.test_fraction, self.seed
            )
            self.test_split_names = [k for k in self._folder if k not in ("train", "val")]
            self.num_classes = self._folder_classes(num_classes)

        self.train_dataset: Dataset[dict[str, Any]] | None = None
        self.val_dataset: Dataset[dict[str, Any]] | None = None
        self.test_dataset: Dataset[dict[str, Any]] | None = None
        self.test_datasets: dict[str, Dataset[dict[str, Any]]] = {}

    def _folder_classes(self, num_classes: int | None) -> int:
        counts = mask_statistics(self._folder["train"], self.image_size, self.ignore_index)
        if num_classes is not None:
            check_int(num_classes, "num_classes", 2)
            if counts.size > num_classes:
                raise ValueError(
                    f"The training masks of {str(self.data_dir)!r} hold the value "
                    f"{counts.size - 1}, outside `num_classes`={num_classes}"
                    + (f"; set `ignore_index` to map {VOID}." if counts.size == VOID + 1 else ".")
                )
            self._class_pixels = np.pad(counts, (0, num_classes - counts.size))
            return num_classes
        if counts.size == VOID + 1 and self.ignore_index is None:
            raise ValueError(
                f"The training masks of {str(self.data_dir)!r} hold the value {VOID}; set "
                "`ignore_index` to map it (void pixels), or give `num_classes`."
            )
        self._class_pixels = np.pad(counts, (0, max(0, 2 - counts.size)))
        return int(self._class_pixels.size)

    @property
    def class_counts(self) -> Tensor:
        """Training pixels per class, float32 (num_classes,), ignored pixels left out."""
        if self._class_pixels is None:
            self.setup()
            masks = self.train_dataset.masks  # type: ignore[union-attr]
            self._class_pixels = np.bincount(masks.numpy().ravel(), minlength=self.num_classes)
        return torch.as_tensor(self._class_pixels, dtype=torch.float32)

    # -------------------------------------------------------------------------- Lightning API

    def prepare_data(self) -> None:
        """Nothing to download: the thin structures are drawn, folders are already local."""

    def setup(self, stage: str | None = None) -> None:
        """Build the train, validation and every test dataset (once, whatever the stage)."""
        if self.train_dataset is not None:
            return
        every, train_only = self.transforms, self.train_transforms + self.transforms
        if self.data_dir is None:
            common = {
                "image_size": self.image_size,
                "in_chans": self.in_chans,
                "multiclass": self.multiclass,
                "params": self.params,
                "seed": self.seed,
            }
            train = ThinStructuresDataset(
                self.sizes["train"], "train", labels=self.labels, transforms=train_only, **common
            )
            stats = {"mean": train.mean, "std": train.std, "transforms": every}
            self.val_dataset = ThinStructuresDataset(self.sizes["val"], "val", **common, **stats)
            for name in self.test_split_names:
                self.test_datasets[name] = ThinStructuresDataset(
                    self.sizes["test"], name, **common, **stats
                )
        else:
            mean, std = image_statistics(
                self._folder["train"], self.in_chans, self.image_size, seed=self.seed
            )
            common = {
                "image_size": self.image_size,
                "in_chans": self.in_chans,
                "num_classes": self.num_classes,
                "ignore_index": self.ignore_index,
                "mean": mean,
                "std": std,
            }
            train = SegmentationFolderDataset(
                self._folder["train"], transforms=train_only, **common
            )
            self.val_dataset = SegmentationFolderDataset(
                self._folder["val"], transforms=every, **common
            )
            for name in self.test_split_names:
                self.test_datasets[name] = SegmentationFolderDataset(
                    self._folder[name], transforms=every, **common
                )
        self.train_dataset = train
        self.test_dataset = self.test_datasets["test"]

    def _eval_loader(self, dataset: Dataset[dict[str, Any]]) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def test_dataloader(self) -> list[DataLoader[Any]]:  # type: ignore[override]
        """One loader per test split, in the order of ``test_split_names`` (in-distribution
        first); Lightning reports each with its ``dataloader_idx``."""
        self.setup()
        return [self._eval_loader(self.test_datasets[name]) for name in self.test_split_names]
