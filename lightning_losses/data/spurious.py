"""Spurious-correlation benchmark from the embedded digits: a Waterbirds-like group shift.

Each real scikit-learn digit becomes a binary classification sample whose label is the digit
shape (``y = 1`` for 5-9, ``0`` for 0-4) and whose "background" is a spurious attribute: a bright
frame around the digit (``a = 1``) or none (``a = 0``). In training the frame agrees with the
label with probability ``correlation``; in validation and test it is independent of the label.
A model that learns the frame instead of the digit does well on average in training and fails on
the two minority groups, which is the failure group DRO is built to fix.

The construction is exact and seeded (see :func:`spurious_digits_splits`), so group counts are
known in advance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice, check_int
from ._splits import SplitDataModule
from .digits import _raw_digits, check_image_options, check_stats, digits_labels, safe_std
from .group_balanced import MODES as GROUP_BALANCED_MODES
from .group_balanced import GroupBalancedSampler
from .long_tail import stratified_split

SPURIOUS_CLASSES: tuple[str, ...] = ("0-4", "5-9")
"""Class names of the binary label: ``y = 0`` for the digits 0-4, ``y = 1`` for 5-9."""

SPURIOUS_GROUPS: tuple[str, ...] = (
    "0-4/plain",
    "0-4/frame",
    "5-9/plain",
    "5-9/frame",
)
"""Group names in group order ``g = 2 * y + a``."""

SPURIOUS_SPLITS: tuple[str, ...] = ("train", "val", "test")

_LABEL_THRESHOLD = 5


def spurious_labels(digits: Sequence[int] | np.ndarray) -> np.ndarray:
    """Binary labels of digit classes: ``1`` for 5-9, ``0`` for 0-4 (int64)."""
    return (np.asarray(digits, dtype=np.int64) >= _LABEL_THRESHOLD).astype(np.int64)


def frame_width(image_size: int) -> int:
    """Width in pixels of the spurious frame: ``max(1, image_size // 8)`` (4 at 32 px)."""
    return max(1, image_size // 8)


def _check_correlation(value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.5 <= value < 1.0
    ):
        raise ValueError(
            "`correlation` must be a number in [0.5, 1) (the training probability that the "
            f"frame agrees with the label); got {value!r}."
        )
    return float(value)


def _check_fraction(value: float, arg: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.0 < value < 1.0
    ):
        raise ValueError(f"`{arg}` must be a number in (0, 1); got {value!r}.")
    return float(value)


def _check_seed(seed: int) -> int:
    check_int(seed, "seed")
    return seed


def _round_half_up(x: float) -> int:
    return math.floor(round(x, 9) + 0.5)


def spurious_digits_splits(
    correlation: float = 0.95,
    val_fraction: float = 0.15,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Plan the three splits: which digits each holds and the frame attribute of each.

    Works on labels only (no image is built). The construction, all draws from NumPy
    ``default_rng(seed)`` in this order:

    1. The 1,797 digits are split class by class (digit 0-9) with
       :func:`~lightning_losses.data.stratified_split`: ``round(test_fraction * n_d)`` of each
       digit to test, ``round(val_fraction * n_d)`` to validation, the rest to training
       (half rounds up). The splits are disjoint by digit image.
    2. Validation, then test, is made label-balanced: with ``n = min(n_{y=0}, n_{y=1})`` in the
       split, a seeded choice of the excess images of the larger label moves to training.
    3. Validation, then test: for ``y = 0`` then ``y = 1``, the split's images of that label are
       permuted; the first ``ceil(n / 2)`` get ``a = 0`` (no frame), the other ``floor(n / 2)``
       get ``a = 1``. All four groups hold ``ceil(n / 2)`` or ``floor(n / 2)`` images, and the
       attribute agrees with the label on exactly half of the split.
    4. Training: for ``y = 0`` then ``y = 1``, with ``n_y`` training images of that label, the
       images are permuted; the first ``m_y = floor((1 - correlation) * n_y + 0.5)`` get the
       minority attribute ``a = 1 - y``, the rest ``a = y``.

    Returns:
        ``{"train" | "val" | "test": (positions, attributes)}``: positions into
        ``sklearn.datasets.load_digits()`` (sorted, int64) and the attribute of each (int64,
        0 or 1).

    Raises:
        ValueError: a bad argument (named), or a group that would be empty: ``correlation``
            too close to 1 for the training split, or ``val_fraction`` / ``test_fraction`` too
            small to give each group of the split an image.
    """
    correlation = _check_correlation(correlation)
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`val_fraction` + `test_fraction` must be < 1 so that training data remains; "
            f"got {val_fraction} + {test_fraction}."
        )
    seed = _check_seed(seed)

    digits = digits_labels()
    labels = spurious_labels(digits)
    train, test, val = (
        np.asarray(p, dtype=np.int64)
        for p in stratified_split(digits, [test_fraction, val_fraction], seed=seed)
    )
    rng = np.random.default_rng(seed)

    held: dict[str, np.ndarray] = {}
    moved: list[np.ndarray] = []
    for name, part, arg in (("val", val, "val_fraction"), ("test", test, "test_fraction")):
        by_label = [part[labels[part] == y] for y in (0, 1)]
        n = min(b.size for b in by_label)
        if n < 2:
            raise ValueError(
                f"`{arg}`={val_fraction if name == 'val' else test_fraction} leaves "
                f"{n} image(s) of a label in the {name} split; each of its four groups needs "
                f"one. Raise `{arg}`."
            )
        kept = []
        for b in by_label:
            if b.size > n:
                excess = rng.choice(b, size=b.size - n, replace=False)
                moved.append(excess)
                b = np.setdiff1d(b, excess)
            kept.append(b)
        held[name] = np.concatenate(kept)
    train = np.concatenate([train, *moved])

    plan: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in ("val", "test"):
        positions, attributes = [], []
        for y in (0, 1):
            members = rng.permutation(held[name][labels[held[name]] == y])
            attr = np.ones(members.size, dtype=np.int64)
            attr[: math.ceil(members.size / 2)] = 0
            positions.append(members)
            attributes.append(attr)
        plan[name] = _sorted(np.concatenate(positions), np.concatenate(attributes))

    positions, attributes = [], []
    for y in (0, 1):
        members = rng.permutation(train[labels[train] == y])
        minority = _round_half_up((1.0 - correlation) * members.size)
        if minority < 1:
            raise ValueError(
                f"`correlation`={correlation} leaves no training image of label {y} without "
                f"the agreeing attribute ({members.size} images); every group needs one. "
                "Lower `correlation`."
            )
        attr = np.full(members.size, y, dtype=np.int64)
        attr[:minority] = 1 - y
        positions.append(members)
        attributes.append(attr)
    plan["train"] = _sorted(np.concatenate(positions), np.concatenate(attributes))
    return {name: plan[name] for name in SPURIOUS_SPLITS}


def _sorted(positions: np.ndarray, attributes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(positions, kind="stable")
    return positions[order].astype(np.int64), attributes[order].astype(np.int64)


def _group_counts(labels: np.ndarray, attributes: np.ndarray) -> Tensor:
    counts = np.bincount(2 * labels + attributes, minlength=len(SPURIOUS_GROUPS))
    return torch.as_tensor(counts, dtype=torch.float32)


class SpuriousDigits(torch.utils.data.Dataset[tuple[Tensor, int, int]]):
    """One split of the spurious digits as ``(image, label, group)`` triples.

    Images: each 8x8 digit is scaled from 0..16 to [0, 1] and resized (bilinear,
    ``align_corners=False``) to ``S - 2w`` pixels, ``w = max(1, S // 8)``, then placed at the
    centre of an ``S x S`` canvas whose outer frame of width ``w`` is 1.0 when ``a = 1`` and 0.0
    when ``a = 0``; the digit area is the same for both. The channel is repeated when
    ``in_chans=3``, and the result normalised per channel as ``(x - mean) / std``.

    Label ``y = 1`` for the digits 5-9 and ``0`` for 0-4; group ``g = 2 * y + a``
    (:data:`SPURIOUS_GROUPS`). Which digits land in which split and which get a frame is fixed
    by :func:`spurious_digits_splits` from ``correlation``, the fractions and ``seed``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        correlation: training probability that the frame agrees with the label, in [0.5, 1).
            Validation and test are balanced whatever its value.
        val_fraction, test_fraction: shares of each digit for validation and test, in (0, 1)
            with a sum < 1 (before label balancing, see :func:`spurious_digits_splits`).
        seed: drives the splits and the attributes.
        image_size: side ``S`` of the square images, >= 8.
        in_chans: 1 (grey) or 3 (the grey channel repeated).
        mean, std: per-channel statistics to normalise with; ``None`` computes them from this
            split's images. Pass the training split's statistics to validation and test.

    Attributes:
        images: float32 (N, in_chans, S, S), normalised.
        targets, attributes, groups: int64 (N,) label, frame attribute and group.
        digits: int64 (N,) the original digit class 0-9.
        indices: int64 (N,) positions into ``sklearn.datasets.load_digits()``.
        mean, std: the statistics used. frame_width: ``w``.
        classes: :data:`SPURIOUS_CLASSES`. group_names: :data:`SPURIOUS_GROUPS`.

    Example:
        >>> train = SpuriousDigits("train")
        >>> image, label, group = train[0]
        >>> image.shape, train.group_counts.tolist()
        (torch.Size([1, 32, 32]), [473.0, 25.0, 25.0, 468.0])
    """

    def __init__(
        self,
        split: str = "train",
        correlation: float = 0.95,
        val_fraction: float = 0.15,
        test_fraction: float = 0.3,
        seed: int = 0,
        image_size: int = 32,
        in_chans: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if split not in SPURIOUS_SPLITS:
            raise ValueError(f"`split` must be one of {SPURIOUS_SPLITS}; got {split!r}.")
        check_image_options(image_size, in_chans)
        stats = check_stats(mean, std, in_chans)
        positions, attributes = spurious_digits_splits(
            correlation, val_fraction, test_fraction, seed
        )[split]

        raw_images, raw_digits = _raw_digits()
        width = frame_width(image_size)
        inner = image_size - 2 * width
        digit = torch.from_numpy(raw_images[positions]).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        if inner != digit.shape[-1]:
            digit = F.interpolate(digit, size=(inner, inner), mode="bilinear", align_corners=False)
        attr = torch.from_numpy(attributes)
        x = attr.to(torch.float32).view(-1, 1, 1, 1).expand(-1, 1, image_size, image_size)
        x = x.clone()
        x[:, :, width : width + inner, width : width + inner] = digit
        if stats is None:
            grey_mean = float(x.mean())
            grey_std = safe_std(float(x.std(unbiased=False)))
            stats = ((grey_mean,) * in_chans, (grey_std,) * in_chans)
        if in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        m = torch.tensor(stats[0], dtype=torch.float32).view(1, in_chans, 1, 1)
        s = torch.tensor(stats[1], dtype=torch.float32).view(1, in_chans, 1, 1)

        digits = raw_digits[positions]
        self.split = split
        self.images: Tensor = ((x - m) / s).contiguous()
        self.digits: Tensor = torch.from_numpy(digits.copy())
        self.targets: Tensor = torch.from_numpy(spurious_labels(digits))
        self.attributes: Tensor = attr
        self.groups: Tensor = 2 * self.targets + self.attributes
        self.indices: Tensor = torch.from_numpy(positions)
        self.mean, self.std = stats
        self.frame_width = width
        self.classes: list[str] = list(SPURIOUS_CLASSES)
        self.group_names: list[str] = list(SPURIOUS_GROUPS)

    @property
    def group_counts(self) -> Tensor:
        """Images per group in this split, float32 (4,)."""
        return _group_counts(self.targets.numpy(), self.attributes.numpy())

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.images[index], int(self.targets[index]), int(self.groups[index])


class SpuriousDigitsDataModule(SplitDataModule):
    """Waterbirds-like group-shift data from the embedded digits, for group DRO.

    Batches are ``(images, labels, groups)``: float32 (B, in_chans, S, S), int64 (B,) labels
    in {0, 1} and int64 (B,) groups in {0, 1, 2, 3}, ``group = 2 * label + attribute``. The
    group sits at position 2 of the batch (``group_key=2``). See :class:`SpuriousDigits` for the
    images and :func:`spurious_digits_splits` for the exact, seeded construction.

    Available right after construction (no image built):
        num_classes (2), num_groups (4), in_chans, class_names, group_names,
        class_counts: float32 (2,), training images per label,
        group_counts: float32 (4,), training images per group (the ``n_g`` of group DRO's
        size adjustment).

    Set by :meth:`setup` (any stage builds all three): train_dataset, val_dataset,
    test_dataset. Validation and test are normalised with the training statistics.

    Args:
        image_size: side of the square images, >= 8; default 32.
        in_chans: 1 (grey) or 3 (grey repeated).
        batch_size: samples per batch, >= 1.
        correlation: training probability that the frame agrees with the label, in [0.5, 1);
            default 0.95. Validation and test are balanced (independent attribute).
        val_fraction, test_fraction: shares of each digit for validation and test, in (0, 1)
            with a sum < 1; defaults 0.15 and 0.3.
        seed: drives the splits, the attributes and the training order.
        num_workers: ``DataLoader`` worker processes, >= 0; persistent when > 0.
        group_balanced: ``None`` (default: every training image once per epoch, shuffled),
            ``"subsample"`` or ``"reweight"``: the training loader draws with
            :class:`~lightning_losses.data.group_balanced.GroupBalancedSampler` in that mode
            (seeded with ``seed``), so that the four groups are equally frequent. The
            group-balanced ERM baseline next to group DRO (METHODS 1.3). ``"subsample"``
            epochs hold ``4 * min_g n_g`` images (100 with the defaults), ``"reweight"``
            epochs as many as the training split. Under DDP, build the trainer with
            ``use_distributed_sampler=False``: the sampler splits the epoch across ranks
            itself.

    Example:
        >>> dm = SpuriousDigitsDataModule()
        >>> dm.group_counts.tolist()
        [473.0, 25.0, 25.0, 468.0]
        >>> balanced = SpuriousDigitsDataModule(group_balanced="subsample")
        >>> len(balanced.train_dataloader().sampler)
        100
    """

    def __init__(
        self,
        image_size: int = 32,
        in_chans: int = 1,
        batch_size: int = 64,
        correlation: float = 0.95,
        val_fraction: float = 0.15,
        test_fraction: float = 0.3,
        seed: int = 0,
        num_workers: int = 0,
        group_balanced: str | None = None,
    ) -> None:
        super().__init__()
        check_image_options(image_size, in_chans)
        check_int(batch_size, "batch_size", 1)
        check_int(num_workers, "num_workers", 0)
        if group_balanced is not None:
            check_choice(group_balanced, GROUP_BALANCED_MODES, "group_balanced")
        # Validates correlation, fractions and seed, and checks that no group is empty.
        plan = spurious_digits_splits(correlation, val_fraction, test_fraction, seed)
        self.save_hyperparameters()

        self.image_size = image_size
        self.in_chans: int = in_chans
        self.batch_size = batch_size
        self.correlation = float(correlation)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = seed
        self.num_workers = num_workers
        self.group_balanced = group_balanced

        self.class_names: list[str] = list(SPURIOUS_CLASSES)
        self.group_names: list[str] = list(SPURIOUS_GROUPS)
        self.num_classes: int = len(SPURIOUS_CLASSES)
        self.num_groups: int = len(SPURIOUS_GROUPS)
        positions, attributes = plan["train"]
        train_labels = spurious_labels(digits_labels()[positions])
        self.class_counts: Tensor = torch.as_tensor(
            np.bincount(train_labels, minlength=self.num_classes), dtype=torch.float32
        )
        self.group_counts: Tensor = _group_counts(train_labels, attributes)
        self.train_dataset: SpuriousDigits | None = None
        self.val_dataset: SpuriousDigits | None = None
        self.test_dataset: SpuriousDigits | None = None

    def prepare_data(self) -> None:
        """Nothing to download: the digits ship with scikit-learn."""

    def setup(self, stage: str | None = None) -> None:
        """Build the train, validation and test datasets (once, whatever the stage)."""
        if self.train_dataset is not None:
            return
        train = self._dataset("train")
        self.train_dataset = train
        self.val_dataset = self._dataset("val", train.mean, train.std)
        self.test_dataset = self._dataset("test", train.mean, train.std)

    def _train_sampler(self) -> GroupBalancedSampler | None:
        """``GroupBalancedSampler`` over the training groups when ``group_balanced`` is set.

        Attached to a trainer, it takes the trainer's world size and rank; with more than one
        process Lightning must leave it unwrapped (``use_distributed_sampler=False``).
        """
        if self.group_balanced is None:
            return None
        assert self.train_dataset is not None  # set by setup(), which _loader calls first
        trainer = self.trainer
        world_size, rank = (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)
        connector = getattr(trainer, "_accelerator_connector", None)
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                f"`group_balanced`={self.group_balanced!r} splits each epoch across the "
                f"{world_size} processes itself; build the Trainer with "
                "`use_distributed_sampler=False` so that Lightning does not wrap the sampler "
                "in a DistributedSampler as well."
            )
        return GroupBalancedSampler(
            self.train_dataset.groups,
            mode=self.group_balanced,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            num_groups=self.num_groups,
        )

    def _dataset(
        self,
        split: str,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> SpuriousDigits:
        return SpuriousDigits(
            split,
            correlation=self.correlation,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            image_size=self.image_size,
            in_chans=self.in_chans,
            mean=mean,
            std=std,
        )
