r"""The embedded re-ID data: synthetic people, each seen by several cameras.

No person re-ID set ships with a Python package, so the re-ID recipe generates one,
deterministically from a seed, in about a second. Each **identity** is a small figure (head,
torso, legs) with a fixed appearance code:

* an upper and a lower colour from a palette of ``num_colours`` colours (with several hundred
  identities, many share both colours, as many people wear the same black jacket and jeans);
* a torso texture (plain, horizontal or vertical stripes, checks) and its period;
* a **logo** on the torso: one of scikit-learn's real 8x8 handwritten digit images (the data of
  :mod:`lightning_losses.data.digits`), a fine detail that separates identities whose colours
  and texture agree;
* a skin tone.

Each identity is seen by ``cameras_per_identity`` of the ``num_cameras`` cameras,
``shots_per_camera`` times each. A **camera** changes the colour balance (fixed per-channel
gains within ``1 ± camera_shift``), the blur (a fixed Gaussian of standard deviation up to
``max_blur`` pixels) and the background (its own colour and a coarse pattern). Every **shot**
changes the scale and position of the figure (scale in ``[1 - scale_jitter, 1]``, shifts up to
``scale_jitter / 2`` of the image), the brightness (``± brightness``), the facing (a horizontal
flip with probability 1/2 when ``flip``) and adds pixel noise (standard deviation ``noise``).

**Splits** (Market-1501's design): the identities are split into disjoint **train** and
**test** identities. Of each test identity, one shot per camera is a **query** and the others
are the **gallery**, so every query has gallery matches under the identity's other cameras (and
a same-camera shot that the Market protocol ignores). ``num_distractors`` gallery images of
further identities carry id 0, Market's distractor id. Train ids are ``0 .. T - 1`` (class
labels); query and gallery ids are ``1 .. E`` (0 is the distractor id).

**Difficulty knobs.** Harder: fewer ``num_colours`` (more identities share colours), larger
``camera_shift``, ``max_blur``, ``noise``, ``scale_jitter`` and ``brightness``, fewer
``shots_per_camera``, more ``num_identities``, smaller ``image_size``. The defaults are set for
a recipe that trains a ResNet-18 from scratch in a few CPU minutes: raw pixels give a rank-1
near 0 (the camera, not the person, decides the nearest image), and the identity codes are
learnable within a few hundred steps. Measured once (seed 0) with a ResNet-18
(``pretrained=False``, 64 x 32 input, BNNeck, P x K = 16 x 4, 18 steps per epoch, Adam 3.5e-4
with a 3-epoch warm-up, weight decay 5e-4, cosine distance on the BNNeck features), as R1 /
mAP / mINP:

* cross-entropy with label smoothing 0.1: 0.27 / 0.30 / 0.20 after 12 epochs,
  0.86 / 0.84 / 0.77 after 21;
* the same plus a batch-hard triplet term (margin 0.3): 0.32 / 0.41 / 0.32 after 12 epochs,
  0.77 / 0.80 / 0.73 after 21

(the triplet term on the un-normalised pre-BNNeck features, Euclidean). A harder setting
(``num_identities=500, shots_per_camera=2, num_colours=8, camera_shift=0.35, max_blur=1.2,
noise=0.06, scale_jitter=0.25, brightness=0.2``) gave 0.08 / 0.21 / 0.16 with the triplet
term after 12 epochs.

Samples are mappings ``{"image": float32 (3, H, W), "id": int, "camera": int, "index": int}``
(``index``: the position in its split, the library's index channel). Images are stored as
uint8 and normalised on access as ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int, check_range
from .digits import _raw_digits

__all__ = ["IdentityImages", "ReIDSplits", "synthetic_identities"]

#: normalisation of the stored uint8 images: (x / 255 - 0.5) / 0.25 puts them around [-2, 2].
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)


class ReIDSplits(NamedTuple):
    """The three splits of a re-ID dataset."""

    train: Dataset[dict[str, Any]]
    query: Dataset[dict[str, Any]]
    gallery: Dataset[dict[str, Any]]


class IdentityImages(Dataset[dict[str, Any]]):
    """Images held in memory with their identity and camera ids (one split).

    Args:
        images: uint8 ``(N, 3, H, W)``. ids, cameras: integer ``(N,)``.
        mean, std: per-channel normalisation of ``x / 255``.
        augment: training augmentation on access: a random horizontal flip and a random
            shift of up to 1/16 of the image (zero padding), drawn from torch's global RNG.

    Attributes:
        images, ids, cameras: as given (ids and cameras int64).
    """

    def __init__(
        self,
        images: Tensor,
        ids: Tensor,
        cameras: Tensor,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        augment: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"`images` must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)}."
            )
        n = images.shape[0]
        if ids.shape != (n,) or cameras.shape != (n,):
            raise ValueError(
                f"`ids` and `cameras` must have shape ({n},); got {tuple(ids.shape)} and "
                f"{tuple(cameras.shape)}."
            )
        self.images, self.ids, self.cameras = images, ids.long(), cameras.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        x = (self.images[index].float() / 255 - self.mean) / self.std
        if self.augment:
            x = augment_image(x)
        return {
            "image": x,
            "id": int(self.ids[index]),
            "camera": int(self.cameras[index]),
            "index": index,
        }


def augment_image(x: Tensor) -> Tensor:
    """A random horizontal flip and a random shift of up to 1/16 of each side (zero padded)."""
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    h, w = x.shape[-2:]
    ph, pw = max(1, h // 16), max(1, w // 16)
    padded = F.pad(x, (pw, pw, ph, ph))
    top = int(torch.randint(2 * ph + 1, ()))
    left = int(torch.randint(2 * pw + 1, ()))
    return padded[:, top : top + h, left : left + w]


def _palette(num_colours: int, g: torch.Generator) -> Tensor:
    """``num_colours`` distinct RGB colours in [0, 1]: evenly spread hues, varied lightness."""
    hue = (torch.arange(num_colours) / num_colours + torch.rand((), generator=g)) % 1.0
    light = 0.25 + 0.6 * torch.rand(num_colours, generator=g)
    sat = 0.4 + 0.6 * torch.rand(num_colours, generator=g)
    phase = torch.tensor([0.0, 2 / 3, 1 / 3])
    rgb = 0.5 + 0.5 * torch.cos(2 * math.pi * (hue[:, None] + phase[None, :]))
    return (light[:, None] * (1 - sat[:, None] + sat[:, None] * rgb)).clamp(0, 1)


def _blur_matrices(sigmas: Tensor, n: int) -> Tensor:
    """Per sigma, the (n, n) matrix of a 1-D Gaussian blur with replicated borders.

    Blurring is then two batched matrix products (rows, then columns), much faster on a CPU
    than a depthwise convolution. A sigma below 0.3 pixels gives the identity.
    """
    pos = torch.arange(n, dtype=torch.float32)
    radius = max(1, math.ceil(2 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    sig = sigmas.clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-(offsets**2) / (2 * sig**2))  # (C, taps)
    k = torch.where(sigmas.view(-1, 1) < 0.3, (offsets == 0).float(), k)
    k = k / k.sum(1, keepdim=True)
    src = (pos.view(-1, 1) + offsets.view(1, -1)).clamp(0, n - 1).long()  # (n, taps)
    mats = torch.zeros(len(sigmas), n, n)
    mats.scatter_add_(2, src.expand(len(sigmas), -1, -1), k[:, None, :].expand(-1, n, -1))
    return mats  # out[i] = sum_j mats[i, j] * in[j]


def _render(
    code: dict[str, Tensor],
    shot: dict[str, Tensor],
    background: Tensor,
    logos: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """Figures of the given identity codes in the given shots, on their camera's background.

    All per-image values are (B,) tensors; returns float (B, 3, H, W) in [0, 1] before the
    camera's colour balance, blur and noise.
    """
    h, w = size
    b = shot["scale"].shape[0]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    y, x = ys.view(1, h, 1), xs.view(1, 1, w)
    s = shot["scale"].view(b, 1, 1)
    # figure coordinates: u in [-0.5, 0.5] across, v in [0, 1] down the figure's box
    u = (x - 0.5 - shot["dx"].view(b, 1, 1)) / s
    v = (y - (1 - s) / 2 - shot["dy"].view(b, 1, 1)) / s
    u = torch.where(shot["flip"].view(b, 1, 1), -u, u).expand(b, h, w)
    v = v.expand(b, h, w)
    head = ((u / 0.14) ** 2 + ((v - 0.11) / 0.09) ** 2) <= 1
    torso = (v > 0.2) & (v <= 0.56) & (u.abs() <= 0.3)
    legs = (v > 0.56) & (v <= 0.98) & (u.abs() <= 0.24) & ((u.abs() >= 0.03) | (v < 0.62))

    period = code["period"].view(b, 1, 1).float()
    texture = code["texture"].view(b, 1, 1)
    hs = torch.cos(2 * math.pi * v * 36 / period) > 0
    vs = torch.cos(2 * math.pi * u * 20 / period) > 0
    stripes = torch.where(texture == 1, hs, torch.where(texture == 2, vs, hs ^ vs))
    shade = torch.where((texture > 0) & stripes, 0.55, 1.0)

    img = background.clone()
    legs_rgb = code["lower"].view(b, 3, 1, 1)
    torso_rgb = code["upper"].view(b, 3, 1, 1) * shade[:, None]
    img = torch.where(legs[:, None], legs_rgb, img)
    img = torch.where(torso[:, None], torso_rgb, img)
    img = torch.where(head[:, None], code["skin"].view(b, 3, 1, 1), img)

    # the logo: the identity's digit image on the torso, u in [-0.2, 0.2], v in [0.26, 0.5]
    grid = torch.stack([u / 0.2, (v - 0.38) / 0.12], dim=-1)
    alpha = F.grid_sample(
        logos[code["logo"]].unsqueeze(1), grid, mode="bilinear", align_corners=False
    )
    alpha = alpha * torso[:, None]
    ink = torch.where(torso_rgb.mean(1, keepdim=True) > 0.5, 0.05, 0.95)
    return img * (1 - alpha) + ink * alpha


def synthetic_identities(
    num_identities: int = 300,
    num_train: int | None = None,
    num_cameras: int = 6,
    cameras_per_identity: int = 3,
    shots_per_camera: int = 3,
    num_distractors: int = 100,
    image_size: tuple[int, int] = (64, 32),
    num_colours: int = 12,
    camera_shift: float = 0.15,
    max_blur: float = 0.6,
    noise: float = 0.03,
    scale_jitter: float = 0.1,
    brightness: float = 0.1,
    flip: bool = True,
    seed: int = 0,
    augment_train: bool = True,
) -> ReIDSplits:
    r"""The embedded identity dataset (see the module docstring), split Market-style.

    Args:
        num_identities: identities in total (train + test), default 300.
        num_train: train identities; default half of ``num_identities`` (Market: 751 / 750).
        num_cameras: cameras, default 6 (as Market-1501).
        cameras_per_identity: cameras that see each identity, in ``[2, num_cameras]``.
        shots_per_camera: images per identity and camera, >= 2 (one becomes the query).
        num_distractors: gallery images of other people, id 0.
        image_size: ``(H, W)``, default (64, 32): a standing person's 2:1 aspect, small enough
            for CPU training. Both >= 16.
        num_colours, camera_shift, max_blur, noise, scale_jitter, brightness, flip: the
            difficulty knobs of the module docstring.
        seed: everything is drawn from a generator seeded with it.
        augment_train: random flips and shifts on access to the train split.

    Returns:
        :class:`ReIDSplits` of :class:`IdentityImages`: train (ids ``0 .. T - 1``), query and
        gallery (ids ``1 .. E``, distractors 0).

    Example:
        >>> splits = synthetic_identities(num_identities=40, num_distractors=5)
        >>> len(splits.train), len(splits.query), len(splits.gallery)
        (180, 60, 125)
    """
    check_int(num_identities, "num_identities", 2)
    num_train = num_identities // 2 if num_train is None else num_train
    check_int(num_train, "num_train", 1)
    if num_train >= num_identities:
        raise ValueError(
            f"`num_train` must leave test identities: below num_identities={num_identities}; "
            f"got {num_train}."
        )
    check_int(num_cameras, "num_cameras", 2)
    check_int(cameras_per_identity, "cameras_per_identity", 2)
    if cameras_per_identity > num_cameras:
        raise ValueError(
            f"`cameras_per_identity` must be at most num_cameras={num_cameras}; got "
            f"{cameras_per_identity}."
        )
    check_int(shots_per_camera, "shots_per_camera", 2)
    check_int(num_distractors, "num_distractors", 0)
    if len(image_size) != 2:
        raise ValueError(f"`image_size` must be (H, W); got {image_size!r}.")
    size = (check_int(image_size[0], "image_size", 16), check_int(image_size[1], "image_size", 16))
    check_int(num_colours, "num_colours", 2)
    check_range(camera_shift, "camera_shift", 0.0, 0.9)
    check_range(max_blur, "max_blur", 0.0, 5.0)
    check_range(noise, "noise", 0.0, 0.5)
    check_range(scale_jitter, "scale_jitter", 0.0, 0.5)
    check_range(brightness, "brightness", 0.0, 0.9)
    check_int(seed, "seed")
    g = torch.Generator().manual_seed(seed)

    # appearance codes of the identities (the extra ones are the distractors' people)
    num_people = num_identities + max(1, num_distractors)
    palette = _palette(num_colours, g)
    digit_images, _ = _raw_digits()
    logo_pick = torch.randperm(len(digit_images), generator=g)[:num_people]
    logos = torch.from_numpy(np.ascontiguousarray(digit_images[logo_pick.numpy()]))
    skins = torch.tensor([[0.95, 0.8, 0.7], [0.75, 0.55, 0.4], [0.45, 0.3, 0.2]])
    people = {
        "upper": palette[torch.randint(num_colours, (num_people,), generator=g)],
        "lower": palette[torch.randint(num_colours, (num_people,), generator=g)],
        "texture": torch.randint(4, (num_people,), generator=g),
        "period": torch.randint(2, 5, (num_people,), generator=g),
        "skin": skins[torch.randint(3, (num_people,), generator=g)],
        "logo": torch.arange(num_people),
    }
    # cameras: colour balance, blur and background
    gains = 1 + camera_shift * (2 * torch.rand(num_cameras, 3, generator=g) - 1)
    blurs = max_blur * torch.rand(num_cameras, generator=g)
    blur_h, blur_w = _blur_matrices(blurs, size[0]), _blur_matrices(blurs, size[1])
    bg_colour = 0.2 + 0.6 * torch.rand(num_cameras, 3, 1, 1, generator=g)
    bg_pattern = F.interpolate(
        torch.rand(num_cameras, 3, 4, 2, generator=g), size=size, mode="bilinear"
    )
    backgrounds = (0.7 * bg_colour + 0.3 * bg_pattern).clamp(0, 1)

    # which person, camera and shot each image shows
    order = torch.randperm(num_identities, generator=g)
    cams = torch.stack(
        [torch.randperm(num_cameras, generator=g)[:cameras_per_identity] for _ in order]
    )
    person = order.repeat_interleave(cameras_per_identity * shots_per_camera)
    camera = cams.repeat_interleave(shots_per_camera, dim=1).flatten()
    shot_no = torch.arange(shots_per_camera).repeat(num_identities * cameras_per_identity)
    if num_distractors:
        person = torch.cat(
            [
                person,
                num_identities
                + torch.randint(max(1, num_distractors), (num_distractors,), generator=g),
            ]
        )
        camera = torch.cat([camera, torch.randint(num_cameras, (num_distractors,), generator=g)])
        shot_no = torch.cat([shot_no, torch.ones(num_distractors, dtype=torch.long)])
    n = person.numel()
    shots = {
        "scale": 1 - scale_jitter * torch.rand(n, generator=g),
        "dx": scale_jitter / 2 * (2 * torch.rand(n, generator=g) - 1),
        "dy": scale_jitter / 2 * (2 * torch.rand(n, generator=g) - 1),
        "flip": (torch.rand(n, generator=g) < 0.5) & flip,
        "light": 1 + brightness * (2 * torch.rand(n, generator=g) - 1),
    }
    noise_field = noise * torch.randn(n, 3, *size, generator=g)

    images = torch.empty(n, 3, *size, dtype=torch.uint8)
    for start in range(0, n, 512):
        rows = slice(start, start + 512)
        who, cam = person[rows], camera[rows]
        code = {key: value[who] for key, value in people.items()}
        shot = {key: value[rows] for key, value in shots.items()}
        img = _render(code, shot, backgrounds[cam], logos, size)
        img = img * gains[cam].view(-1, 3, 1, 1) * shot["light"].view(-1, 1, 1, 1)
        img = blur_h[cam][:, None] @ img @ blur_w[cam][:, None].transpose(-1, -2)
        img = (img + noise_field[rows]).clamp(0, 1)
        images[rows] = (img * 255).round().to(torch.uint8)

    # splits: train identities; of each test identity, shot 0 per camera is the query
    is_train = torch.zeros(num_people, dtype=torch.bool)
    is_train[order[:num_train]] = True
    train_label = torch.full((num_people,), -1, dtype=torch.long)
    train_label[order[:num_train]] = torch.arange(num_train)
    test_id = torch.zeros(num_people, dtype=torch.long)  # distractors keep 0
    test_id[order[num_train:]] = torch.arange(1, num_identities - num_train + 1)
    distractor = person >= num_identities
    train = is_train[person]
    query = ~train & ~distractor & (shot_no == 0)
    gallery = ~train & ~query
    train_split = IdentityImages(
        images[train], train_label[person[train]], camera[train], augment=augment_train
    )
    return ReIDSplits(
        train=train_split,
        query=IdentityImages(images[query], test_id[person[query]], camera[query]),
        gallery=IdentityImages(images[gallery], test_id[person[gallery]], camera[gallery]),
    )
