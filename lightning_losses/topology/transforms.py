"""Data-side transforms that precompute what topology and boundary losses read from the batch.

Each is a callable on a sample mapping (``{"image": ..., "mask": ...}``) that returns a new
mapping with one more entry: :class:`SkeletonTransform` adds ``"skeleton"`` and
:class:`DistanceTransform` adds ``"distance"``. Batched by the default collate function, these
become the batch keys that :class:`~lightning_losses.LossMixin` passes to a loss declaring the
context ``"skeleton"`` or ``"distance"``. They run on the CPU in the data loader workers, once
per sample, never with gradient.

Mask layouts follow the dense losses' ``mode``:

- ``"binary"``: a {0, 1} mask ``(*spatial)``;
- ``"multiclass"``: class indices ``(*spatial)``;
- ``"multilabel"``: a {0, 1} mask per channel ``(C, *spatial)``;

with ``*spatial`` of two or three dimensions. Masks may be NumPy arrays or torch tensors; the
new entry is of the same kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from .._checks import check_choice, check_int

__all__ = ["DistanceTransform", "SkeletonTransform"]

MODES = ("binary", "multiclass", "multilabel")


def _read_mask(sample: Any, key: str, mode: str) -> tuple[np.ndarray, bool]:
    """The mask as a NumPy array (and whether it came as a tensor), its layout checked."""
    if not isinstance(sample, Mapping) or key not in sample:
        got = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
        raise ValueError(f"the sample must be a mapping with a {key!r} entry; got {got}.")
    mask = sample[key]
    is_tensor = isinstance(mask, torch.Tensor)
    m = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    spatial = m.ndim - (mode == "multilabel")
    if spatial not in (2, 3):
        layout = "(C, *spatial)" if mode == "multilabel" else "(*spatial)"
        raise ValueError(
            f"`{key}` must be {layout} with 2 or 3 spatial dimensions in mode {mode!r}; got "
            f"shape {m.shape}."
        )
    if mode != "multiclass" and not np.isin(m, (0, 1)).all():
        raise ValueError(f"`{key}` must hold only 0 and 1 in mode {mode!r}.")
    return m, is_tensor


def _optional_int(value: int | None, arg: str) -> int | None:
    return None if value is None else check_int(value, arg)


def _like(x: np.ndarray, as_tensor: bool) -> Any:
    return torch.from_numpy(x) if as_tensor else x


class SkeletonTransform:
    r"""Adds the ground-truth skeleton tube of Skeleton Recall under ``"skeleton"``.

    For each foreground class :math:`c`, with :math:`G_c` its binary mask,

    .. math::
        T_c = \mathrm{dilate}^{\,t}\bigl(\mathrm{skeletonize}(G_c)\bigr) \wedge G_c,

    the skeleton by scikit-image's ``skeletonize`` (Zhang's thinning in 2-D, Lee's in 3-D),
    dilated :math:`t` times by the face-connected cross (a tube about two pixels wide for
    :math:`t = 2`) and masked by the class's own region.

    The entry has the target's layout: in ``"binary"`` and ``"multiclass"`` mode an index map
    ``(*spatial)`` (int64) holding :math:`c` on :math:`T_c` and ``background`` elsewhere; in
    ``"multilabel"`` mode a {0, 1} map ``(C, *spatial)`` (uint8) with one tube per channel.

    Each class is skeletonised on its own, whereas the reference code skeletonises the union
    of all foreground classes and then labels the tube by class; the two differ only where
    classes touch, where the union's skeleton may run through one class and miss the other.

    Args:
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"`` (module docstring).
        tube_iterations: dilations :math:`t` of the skeleton, 2 by default (Skeleton Recall's
            reference code: two dilations by the cross, then masked by the ground truth);
            0 keeps the bare skeleton.
        background: the label (index layouts) or channel (``"multilabel"``) that is not
            skeletonised; 0 by default, ``None`` in ``"multilabel"`` mode skeletonises every
            channel. Index layouts need one: it fills the pixels off the skeleton.
        ignore_index: a label that is neither background nor a class (multiclass), or ``None``.
        mask_key: the sample entry holding the mask, ``"mask"``.
        key: the entry added, ``"skeleton"`` (the context token the losses declare).

    Ref: Kirchhoff et al., "Skeleton Recall Loss for Connectivity Conserving and Resource
    Efficient Segmentation of Thin Tubular Structures" (ECCV 2024).

    Example:
        >>> transform = SkeletonTransform()
        >>> sample = transform({"image": image, "mask": mask})  # doctest: +SKIP
        >>> sample["skeleton"].shape == mask.shape  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        mode: str = "multiclass",
        tube_iterations: int = 2,
        background: int | None = 0,
        ignore_index: int | None = None,
        mask_key: str = "mask",
        key: str = "skeleton",
    ) -> None:
        self.mode = check_choice(mode, MODES, "mode")
        self.tube_iterations = check_int(tube_iterations, "tube_iterations", 0)
        if background is None and mode != "multilabel":
            raise ValueError(
                f"`background` must be an int in mode {mode!r}: it labels the pixels off the "
                "skeleton; got None."
            )
        self.background = None if background is None else check_int(background, "background", 0)
        self.ignore_index = (
            None if ignore_index is None else check_int(ignore_index, "ignore_index")
        )
        self.mask_key = mask_key
        self.key = key

    def tube(self, region: np.ndarray) -> np.ndarray:
        """The dilated skeleton of one binary region, masked by the region (bool)."""
        if not region.any():
            return np.zeros_like(region, dtype=bool)
        skel = skeletonize(region)
        if self.tube_iterations:
            cross = ndimage.generate_binary_structure(region.ndim, 1)
            skel = ndimage.binary_dilation(skel, cross, iterations=self.tube_iterations)
        return skel & region

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        m, as_tensor = _read_mask(sample, self.mask_key, self.mode)
        if self.mode == "multilabel":
            out = np.zeros(m.shape, dtype=np.uint8)
            for c in range(m.shape[0]):
                if c != self.background:
                    out[c] = self.tube(m[c].astype(bool))
        else:
            out = np.full(m.shape, self.background, dtype=np.int64)
            for c in np.unique(m).tolist():
                if c not in (self.background, self.ignore_index):
                    out[self.tube(m == c)] = c
        return {**sample, self.key: _like(out, as_tensor)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, tube_iterations={self.tube_iterations}, "
            f"background={self.background}, ignore_index={self.ignore_index})"
        )


def signed_distance(region: np.ndarray, sampling: Any = None) -> np.ndarray:
    r"""Signed distance to the boundary of a binary region: positive outside, negative inside.

    .. math::
        \phi(x) = \begin{cases} d(x, G) & x \notin G \\ -\bigl(d(x, G^c) - 1\bigr) & x \in G
        \end{cases}

    with :math:`d` the Euclidean distance transform, so the region's own boundary pixels are 0
    (the boundary loss's reference ``one_hot2dist``). An empty or full region has no boundary:
    its map is 0.
    """
    region = region.astype(bool)
    if not region.any() or region.all():
        return np.zeros(region.shape, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~region, sampling=sampling)
    inside = ndimage.distance_transform_edt(region, sampling=sampling) - 1.0
    return np.where(region, -inside, outside).astype(np.float32)


class DistanceTransform:
    r"""Adds the signed distance map of each class's ground-truth boundary under ``"distance"``.

    Each channel is :func:`signed_distance` of one class (negative inside, positive outside,
    0 on the region's boundary pixels and for absent classes), the map the boundary loss
    multiplies with the predicted probabilities. The entry has the logits' layout
    ``(C, *spatial)`` (float32): one channel in ``"binary"`` mode, ``num_classes`` channels in
    ``"multiclass"`` mode, the mask's channels in ``"multilabel"`` mode. Ignored pixels
    (``ignore_index``) belong to no class.

    Args:
        mode: ``"binary"``, ``"multiclass"`` (default) or ``"multilabel"`` (module docstring).
        num_classes: channels of a multiclass map (required in that mode).
        ignore_index: a multiclass label that belongs to no class, or ``None``.
        sampling: pixel spacing per spatial axis (``scipy.ndimage.distance_transform_edt``),
            ``None`` for unit spacing.
        mask_key: the sample entry holding the mask, ``"mask"``.
        key: the entry added, ``"distance"`` (the context token the losses declare).

    Ref: Kervadec et al., "Boundary loss for highly unbalanced segmentation" (MIDL 2019).

    Example:
        >>> transform = DistanceTransform(num_classes=3)
        >>> transform({"image": image, "mask": mask})["distance"].shape  # doctest: +SKIP
        (3, 64, 64)
    """

    def __init__(
        self,
        mode: str = "multiclass",
        num_classes: int | None = None,
        ignore_index: int | None = None,
        sampling: Any = None,
        mask_key: str = "mask",
        key: str = "distance",
    ) -> None:
        self.mode = check_choice(mode, MODES, "mode")
        if mode == "multiclass" and num_classes is None:
            raise ValueError("`num_classes` is required in mode 'multiclass'; got None.")
        self.num_classes = None if num_classes is None else check_int(num_classes, "num_classes", 1)
        self.ignore_index = (
            None if ignore_index is None else check_int(ignore_index, "ignore_index")
        )
        self.sampling = sampling
        self.mask_key = mask_key
        self.key = key

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        m, as_tensor = _read_mask(sample, self.mask_key, self.mode)
        if self.mode == "binary":
            regions = [m == 1]
        elif self.mode == "multilabel":
            regions = [m[c] == 1 for c in range(m.shape[0])]
        else:
            labels = np.unique(m)
            valid = labels if self.ignore_index is None else labels[labels != self.ignore_index]
            if valid.size and (valid.min() < 0 or valid.max() >= self.num_classes):
                raise ValueError(
                    f"`{self.mask_key}` labels must lie in [0, {self.num_classes - 1}] (or equal "
                    f"ignore_index); got {valid.tolist()}."
                )
            regions = [m == c for c in range(self.num_classes)]
        out = np.stack([signed_distance(r, self.sampling) for r in regions])
        return {**sample, self.key: _like(out, as_tensor)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, num_classes={self.num_classes}, "
            f"ignore_index={self.ignore_index}, sampling={self.sampling})"
        )
