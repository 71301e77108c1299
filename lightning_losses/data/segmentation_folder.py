"""The real segmentation loader: image/mask folder trees read with PIL.

Layout::

    root/
      images/*.png|jpg|...    required: the training pool
      masks/*.png             required: one mask per image, same stem (``a.jpg`` <-> ``a.png``)
      val/images, val/masks   optional: else a seeded share of the pool
      test/images, test/masks optional: else a seeded share of the pool
      test_<name>/images, test_<name>/masks   optional: more named test splits (e.g. OOD)

A mask holds one class index per pixel (a single-channel image: mode ``"L"``, ``"P"``,
``"I"`` or ``"1"``; store it losslessly, as PNG). The value 255, the usual "void" label, can
be mapped to an ``ignore_index``. Images and masks are paired by file stem; every image needs
its mask and every mask its image, and both must have the same size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int
from .digits import check_stats, safe_std
from .image_folder import IMG_EXTENSIONS
from .long_tail import stratified_split
from .thin_structures import SampleTransform, apply_transforms

IMAGES, MASKS = "images", "masks"
VOID = 255
"""The mask value mapped to ``ignore_index`` when one is given."""

Pair = tuple[Path, Path]
_MASK_MODES = ("1", "L", "P", "I", "I;16")


def _files_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if (
            not path.is_file()
            or path.name.startswith(".")
            or path.suffix.lower() not in IMG_EXTENSIONS
        ):
            continue
        if path.stem in found:
            raise ValueError(
                f"Two files with the stem {path.stem!r} in {str(folder)!r}: "
                f"{found[path.stem].name!r} and {path.name!r}; each stem must be unique."
            )
        found[path.stem] = path
    return found


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # reads the header only
        return img.size


def list_pairs(split_dir: str | os.PathLike[str]) -> list[Pair]:
    """``(image, mask)`` paths of ``split_dir/images`` and ``split_dir/masks``, sorted by stem.

    Raises:
        ValueError (naming the path): ``split_dir``, its ``images`` or ``masks`` folder missing;
            no image; an image without a mask; a mask without an image; a mask whose size
            differs from its image's (sizes are read from the file headers).
    """
    split_dir = Path(split_dir)
    for folder in (split_dir, split_dir / IMAGES, split_dir / MASKS):
        if not folder.is_dir():
            raise ValueError(
                f"Folder {str(folder)!r} does not exist; expected {str(split_dir)!r} to hold "
                f"'{IMAGES}/' and '{MASKS}/' with one mask per image (same file stem)."
            )
    images = _files_by_stem(split_dir / IMAGES)
    masks = _files_by_stem(split_dir / MASKS)
    if not images:
        raise ValueError(
            f"No images in {str(split_dir / IMAGES)!r} (extensions: {', '.join(IMG_EXTENSIONS)})."
        )
    for stem, path in images.items():
        if stem not in masks:
            raise ValueError(
                f"Image {str(path)!r} has no mask: expected {str(split_dir / MASKS / stem)!r}"
                ".png (a mask with the same stem)."
            )
    for stem, path in masks.items():
        if stem not in images:
            raise ValueError(
                f"Mask {str(path)!r} has no image: expected an image with the stem {stem!r} in "
                f"{str(split_dir / IMAGES)!r}."
            )
    pairs = [(images[stem], masks[stem]) for stem in sorted(images)]
    for image, mask in pairs:
        if _size(image) != _size(mask):
            raise ValueError(
                f"Mask {str(mask)!r} is {_size(mask)[0]}x{_size(mask)[1]} (width x height) but its "
                f"image {str(image)!r} is {_size(image)[0]}x{_size(image)[1]}; they must match."
            )
    return pairs


def _carve(
    n: int, fractions: Sequence[float], seed: int, root: Path, names: Sequence[str]
) -> list[list[int]]:
    """Seeded random positions for each carved split; the remainder stays for training."""
    parts = stratified_split(np.zeros(n, dtype=np.int64), list(fractions), seed=seed)
    for name, frac, part in zip(names, fractions, parts[1:], strict=True):
        if not part:
            raise ValueError(
                f"No '{name}' folder in {str(root)!r}, and {name}_fraction={frac} of the "
                f"{n} pairs in '{IMAGES}/' rounds to none; add a '{name}' folder or raise "
                f"`{name}_fraction`."
            )
    return parts


def folder_splits(
    root: str | os.PathLike[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[Pair]]:
    """The pairs of each split of a folder tree: ``train``, ``val``, ``test``, then ``test_*``.

    ``val`` and ``test`` come from their folders when present; a missing one takes
    ``round(fraction * n)`` pairs of the pool ``root/images``, drawn with NumPy
    ``default_rng(seed)`` (test first, then validation); the rest is the training split. Extra
    folders ``root/test_<name>`` become extra test splits, in name order.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"`data_dir` must be an existing folder; {str(root)!r} does not exist.")
    pool = list_pairs(root)
    carved = [name for name in ("test", "val") if not (root / name).is_dir()]
    fractions = [test_fraction if name == "test" else val_fraction for name in carved]
    splits: dict[str, list[Pair]] = {}
    if carved:
        rest, *parts = _carve(len(pool), fractions, seed, root, carved)
        splits["train"] = [pool[i] for i in rest]
        splits.update(
            {name: [pool[i] for i in part] for name, part in zip(carved, parts, strict=True)}
        )
    else:
        splits["train"] = pool
    for name in ("val", "test"):
        if name not in splits:
            splits[name] = list_pairs(root / name)
    for extra in sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("test_")
    ):
        splits[extra] = list_pairs(root / extra)
    return {
        k: splits[k]
        for k in ("train", "val", "test", *sorted(set(splits) - {"train", "val", "test"}))
    }


def read_image(path: str | os.PathLike[str], in_chans: int, size: int | None = None) -> Tensor:
    """float32 (in_chans, H, W) in [0, 1]: PIL, converted to "L" or "RGB", bilinear resize to
    ``size`` x ``size`` when given."""
    with Image.open(path) as img:
        img = img.convert("L" if in_chans == 1 else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(array)
    return x.unsqueeze(0) if in_chans == 1 else x.permute(2, 0, 1).contiguous()


def read_mask(
    path: str | os.PathLike[str],
    size: int | None = None,
    ignore_index: int | None = None,
    num_classes: int | None = None,
) -> Tensor:
    """int64 (H, W) class indices; nearest-neighbour resize to ``size`` x ``size`` when given.

    With ``ignore_index`` given, the value 255 becomes ``ignore_index``. With ``num_classes``
    given, every other value must lie in ``[0, num_classes)``.

    Raises:
        ValueError (naming the file): a multi-channel mask, or a value out of range.
    """
    with Image.open(path) as img:
        if img.mode not in _MASK_MODES:
            raise ValueError(
                f"Mask {str(path)!r} has mode {img.mode!r}; a mask must be a single-channel "
                f"image of class indices (mode one of {', '.join(_MASK_MODES)})."
            )
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.NEAREST)
        mask = torch.from_numpy(np.asarray(img).astype(np.int64))
    void = mask == VOID if ignore_index is not None else None
    if num_classes is not None:
        valid = (mask >= 0) & (mask < num_classes)
        if void is not None:
            valid |= void
        if not bool(valid.all()):
            bad = sorted(set(mask[~valid].tolist()))[:8]
            hint = "" if ignore_index is not None else f" (set `ignore_index` to map {VOID})"
            raise ValueError(
                f"Mask {str(path)!r} holds values {bad} outside the classes [0, {num_classes})"
                f"{hint if VOID in bad else ''}."
            )
    if void is not None:
        mask = torch.where(void, torch.tensor(ignore_index, dtype=torch.int64), mask)
    return mask


def mask_statistics(
    pairs: Sequence[Pair], size: int | None = None, ignore_index: int | None = None
) -> np.ndarray:
    """Pixel count of every mask value, int64 (max value + 1,), over the masks of ``pairs``
    (255 left out when ``ignore_index`` is given)."""
    counts = np.zeros(0, dtype=np.int64)
    for _, mask_path in pairs:
        mask = read_mask(mask_path, size).numpy().ravel()
        if ignore_index is not None:
            mask = mask[mask != VOID]
        if mask.size and int(mask.min()) < 0:
            raise ValueError(
                f"Mask {str(mask_path)!r} holds the negative value {int(mask.min())}; mask "
                "values must be class indices >= 0."
            )
        found = np.bincount(mask, minlength=counts.size)
        counts = np.pad(counts, (0, found.size - counts.size)) + found
    return counts


def image_statistics(
    pairs: Sequence[Pair],
    in_chans: int,
    size: int | None = None,
    max_images: int = 256,
    seed: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images in [0, 1], from at most ``max_images`` (a
    seeded subset when there are more), accumulated in float64; a constant channel gets std 1."""
    if not pairs:
        raise ValueError("`pairs` is empty; cannot compute normalisation statistics.")
    chosen = range(len(pairs))
    if len(pairs) > max_images:
        chosen = sorted(np.random.default_rng(seed).choice(len(pairs), max_images, replace=False))
    total = torch.zeros(in_chans, dtype=torch.float64)
    total_sq = torch.zeros(in_chans, dtype=torch.float64)
    count = 0
    for i in chosen:
        x = read_image(pairs[i][0], in_chans, size).to(torch.float64)
        total += x.sum(dim=(1, 2))
        total_sq += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return tuple(float(m) for m in mean), tuple(safe_std(math.sqrt(float(v))) for v in var)


class SegmentationFolderDataset(Dataset[dict[str, Any]]):
    """Image/mask pairs read lazily with PIL, as mapping samples.

    Item ``i`` is ``{"image": float32 (C, H, W), "mask": int64 (H, W), "index": i}`` after the
    ``transforms``. The image is converted to grey or RGB, resized bilinearly to
    ``image_size`` (when given), scaled to [0, 1] and normalised per channel; the mask is
    resized with nearest neighbours, 255 mapped to ``ignore_index`` (when given), and checked
    against ``num_classes`` (when given).

    Args:
        pairs: ``(image, mask)`` paths, as :func:`list_pairs` returns them.
        image_size: side of the square output, or ``None`` to keep each file's size (then
            batches need images of one size).
        in_chans: 1 or 3.
        num_classes: the number of classes, or ``None`` to skip the range check.
        ignore_index: the value 255 becomes this; ``None`` keeps 255 as a class value.
        mean, std: per-channel statistics (length ``in_chans``), or ``None`` for raw [0, 1].
        transforms: sample transforms applied in order.

    Example::

        train = SegmentationFolderDataset(list_pairs("data"), image_size=128, num_classes=2)
        sample = train[0]  # {"image": (1, 128, 128) float32, "mask": (128, 128) int64, ...}
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        image_size: int | None = None,
        in_chans: int = 1,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transforms: Sequence[SampleTransform] = (),
    ) -> None:
        if image_size is not None:
            check_int(image_size, "image_size", 1)
        if in_chans not in (1, 3) or isinstance(in_chans, bool):
            raise ValueError(f"`in_chans` must be 1 (grey) or 3 (RGB); got {in_chans!r}.")
        if num_classes is not None:
            check_int(num_classes, "num_classes", 1)
        if ignore_index is not None:
            check_int(ignore_index, "ignore_index")
        stats = check_stats(mean, std, in_chans)
        self.pairs: list[Pair] = [(Path(i), Path(m)) for i, m in pairs]
        self.image_size, self.in_chans = image_size, in_chans
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mean: tuple[float, ...] | None = stats[0] if stats else None
        self.std: tuple[float, ...] | None = stats[1] if stats else None
        self._norm = None
        if stats is not None:
            self._norm = (
                torch.tensor(stats[0], dtype=torch.float32).view(in_chans, 1, 1),
                torch.tensor(stats[1], dtype=torch.float32).view(in_chans, 1, 1),
            )
        self.transforms: tuple[SampleTransform, ...] = tuple(transforms)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[index]
        x = read_image(image_path, self.in_chans, self.image_size)
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        mask = read_mask(mask_path, self.image_size, self.ignore_index, self.num_classes)
        sample = {"image": x, "mask": mask, "index": index}
        return apply_transforms(sample, self.transforms)
