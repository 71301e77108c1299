"""The embedded segmentation data: thin structures drawn procedurally from a seed.

Each image holds a few long curvilinear structures that cross the image, cross each other and
branch, with a width that varies along them, drawn with anti-aliasing on a textured, noisy
background with unlabelled distractors (dark cracks, bright specks). Parts of some structures
fade to low contrast while their label stays whole: that is where a model trained with
CE + Dice breaks a structure in two, so the topology losses have something to fix. Labels come
in the three variants of the TopoMortar protocol (Valverde et al., 2025): ``"accurate"``,
``"noisy"`` (missing, shifted and mis-sized segments) and ``"pseudo"`` (a cheap filter of the
image, imperfect). The test split has out-of-distribution companions (other textures, lower
contrast, blur, stronger noise) that share its structures and differ only in the rendering.

Everything is drawn with NumPy generators seeded from ``(seed, split, sample index, stream)``,
so a sample depends on nothing else: the same seed gives byte-identical arrays on every machine,
the first ``k`` samples of a split do not depend on how many are drawn, and the label variants
never change the images. No file is read or downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_choice, check_int
from .digits import check_image_options, check_stats, safe_std

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The in-distribution splits; each draws its own structures."""

OOD_SPLITS: tuple[str, ...] = ("ood_stripes", "ood_grain", "ood_contrast", "ood_blur", "ood_noise")
"""The out-of-distribution test splits: the test split's structures, rendered with a shift."""

LABEL_VARIANTS: tuple[str, ...] = ("accurate", "noisy", "pseudo")
"""The label variants of the TopoMortar protocol."""

BACKGROUNDS: tuple[str, ...] = ("smooth", "stripes", "grain")
"""Background textures: ``"smooth"`` is in-distribution, the others are OOD shifts."""

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# px between centreline samples: at a stroke's edge (>= 0.5 px out) distances err < 0.06 px
_STEP = 0.5
_REF = 64.0  # counts and lengths given "per 64x64 image" scale with the side over this
# Random streams of one sample: each part of a sample draws from its own generator, so that a
# change of one (the label variant, the background) leaves the others as they were.
_GEOMETRY, _LABEL, _BACKGROUND, _NOISE = 0, 1, 2, 3


@dataclass(frozen=True)
class ThinStructureParams:
    """The knobs of the generator; pixel sizes are absolute, counts per 64x64 image.

    The defaults were set by eye and by the contrast-to-noise ratio, then checked once: a
    small U-Net trained briefly with CE + Dice on 256 images reached an in-distribution test
    Dice of about 0.89 with Betti number errors well above zero (docs/data.md). About half of
    the structures have a faded stretch whose contrast drops to a fifth, below the pixel noise,
    while the label stays whole. To make the task **harder**: lower ``contrast`` or ``width``,
    raise ``fade_prob``, ``fade_depth``, ``noise``, ``texture``, ``cracks`` or ``speckles``.
    **Easier**: the reverse; ``fade_prob=0`` removes the built-in gaps.

    Attributes:
        curves: ``(low, high)`` main structures per 64x64 image (uniform, both included;
            scaled with the side). Each starts on the border and walks into the image.
        branches: mean number of branches per main structure (Poisson). A branch leaves its
            parent at 0.5-1.2 rad and runs for 0.25-0.6 of the side.
        curvature: standard deviation of the curvature (rad/px), a smooth AR(1) process with a
            correlation length of about 10 px.
        width: ``(low, high)`` base width in px of a main structure; it varies by +-25 % along
            it and never drops below ``width[0]``. Branches are 0.6-0.9 of their parent's width.
        contrast: intensity of a structure above the background (image values in [0, 1]).
        contrast_spread: each structure's contrast is ``contrast`` times a factor uniform in
            ``[1 - contrast_spread, 1]``.
        fade_prob: probability that a structure has one faded stretch.
        fade_depth: the contrast lost at the centre of a faded stretch (0.8: a fifth remains);
            the label is unchanged there.
        fade_length: ``(low, high)`` length in px of a faded stretch.
        background: ``"smooth"`` (low-frequency noise and an illumination gradient), ``"stripes"``
            (a grating of period 5-9 px) or ``"grain"`` (blotches of about 2 px).
        texture: amplitude of the background texture (about its standard deviation).
        cracks: dark thin distractors per 64x64 image (not labelled), of contrast
            ``-contrast`` times 0.5-0.9.
        speckles: bright specks of radius 0.6-1.3 px per 64x64 image (not labelled).
        blur: standard deviation in px of a Gaussian blur of the image before the noise.
        noise: standard deviation of the additive Gaussian pixel noise.
        blobs: ``(low, high)`` blobs per 64x64 image, multi-class variant only (class 2).
        blob_radius: ``(low, high)`` semi-axes in px of the elliptic blobs.
        blob_contrast: intensity of a blob above the background.
        label_error_rate: ``"noisy"`` labels: the probability of each error (a missing
            stretch, a shifted stretch, a wrong thickness) for each structure, drawn
            independently.
        pseudo_threshold: ``"pseudo"`` labels: the threshold on the difference-of-Gaussians
            response, in standard deviations of that response over the image.
    """

    curves: tuple[int, int] = (3, 5)
    branches: float = 1.0
    curvature: float = 0.06
    width: tuple[float, float] = (1.2, 3.0)
    contrast: float = 0.35
    contrast_spread: float = 0.3
    fade_prob: float = 0.5
    fade_depth: float = 0.8
    fade_length: tuple[float, float] = (6.0, 14.0)
    background: str = "smooth"
    texture: float = 0.12
    cracks: float = 3.0
    speckles: float = 4.0
    blur: float = 0.0
    noise: float = 0.08
    blobs: tuple[int, int] = (2, 4)
    blob_radius: tuple[float, float] = (3.5, 8.0)
    blob_contrast: float = 0.25
    label_error_rate: float = 0.5
    pseudo_threshold: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.background, BACKGROUNDS, "background")
        for name in ("curves", "blobs"):
            low, high = _pair(getattr(self, name), name)
            if not (float(low).is_integer() and float(high).is_integer()) or low < 0:
                raise ValueError(
                    f"`{name}` must be two integers 0 <= low <= high; got {low, high}."
                )
            object.__setattr__(self, name, (int(low), int(high)))
        if self.curves[1] < 1:
            raise ValueError(f"`curves` must allow at least one structure; got {self.curves}.")
        for name, minimum in (("width", 0.5), ("fade_length", 0.0), ("blob_radius", 1.0)):
            low, high = _pair(getattr(self, name), name)
            if low < minimum:
                raise ValueError(f"`{name}` must be at least {minimum}; got {(low, high)}.")
            object.__setattr__(self, name, (float(low), float(high)))
        for name in ("contrast_spread", "fade_prob", "fade_depth", "label_error_rate"):
            _check_unit(getattr(self, name), name)
        for name in ("branches", "curvature", "contrast", "texture", "cracks", "speckles"):
            _check_nonnegative(getattr(self, name), name)
        for name in ("blur", "noise", "blob_contrast", "pseudo_threshold"):
            _check_nonnegative(getattr(self, name), name)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> ThinStructureParams:
        """A copy with the fields in ``overrides`` replaced; an unknown name is a ValueError."""
        if not overrides:
            return self
        known = [f.name for f in fields(self)]
        for key in overrides:
            check_choice(key, known, "difficulty")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return replace(self, **values)


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        low, high = value
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a pair (low, high) of numbers; got {value!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"`{name}` must be a finite pair with low <= high; got {value!r}.")
    return low, high


def _check_unit(value: Any, name: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok:
        raise ValueError(f"`{name}` must be a number in [0, 1]; got {value!r}.")


def _check_nonnegative(value: Any, name: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")


OOD_SHIFTS: dict[str, str] = {
    "ood_stripes": "background 'stripes': a grating of period 5-9 px instead of smooth noise",
    "ood_grain": "background 'grain': blotches of about 2 px instead of smooth noise",
    "ood_contrast": "contrast and blob_contrast (and with them cracks and specks) times 0.6",
    "ood_blur": "a Gaussian blur of 0.8 px added before the noise",
    "ood_noise": "pixel noise 1.75 times stronger",
}
"""What each out-of-distribution split changes, relative to the parameters of the test split."""


def split_params(params: ThinStructureParams, split: str) -> ThinStructureParams:
    """The parameters a split renders with: ``params`` itself, or with its OOD shift applied."""
    check_choice(split, SPLITS + OOD_SPLITS, "split")
    if split == "ood_stripes":
        return replace(params, background="stripes")
    if split == "ood_grain":
        return replace(params, background="grain")
    if split == "ood_contrast":
        return replace(
            params, contrast=params.contrast * 0.6, blob_contrast=params.blob_contrast * 0.6
        )
    if split == "ood_blur":
        return replace(params, blur=math.hypot(params.blur, 0.8))
    if split == "ood_noise":
        return replace(params, noise=params.noise * 1.75)
    return params


# ------------------------------------------------------------------------------ geometry


@dataclass
class _Curve:
    """Centreline samples of one structure, ``_STEP`` px apart."""

    xy: np.ndarray  # (m, 2) positions (x, y); pixel (i, j) has its centre at (x=j, y=i)
    heading: np.ndarray  # (m,) direction of travel, rad
    width: np.ndarray  # (m,) width in px
    strength: np.ndarray  # (m,) contrast factor in (0, 1]

    @property
    def arclength(self) -> np.ndarray:
        return np.arange(len(self.heading)) * _STEP


def _walks(
    rng: np.random.Generator,
    starts: np.ndarray,
    headings: np.ndarray,
    lengths: np.ndarray,
    size: int,
    curvature: float,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random walks, one per row of ``starts`` (k, 2), each cut at its length or where
    it first leaves the image by more than 2 px. Returns ``(xy (m, 2), heading (m,))`` each.

    The curvature is an AR(1) process (coefficient 0.95 per 0.5 px step: a correlation length
    of about 10 px) of stationary standard deviation ``curvature``.
    """
    from scipy.signal import lfilter  # SciPy only where images are drawn (the [segmentation] extra)

    k = len(starts)
    if k == 0:
        return []
    steps = np.maximum(2, (np.asarray(lengths) / _STEP).astype(np.int64))
    n, rho, burn = int(steps.max()), 0.95, 60
    shocks = rng.standard_normal((k, n + burn)) * curvature * math.sqrt(1 - rho * rho)
    kappa = lfilter([1.0], [1.0, -rho], shocks, axis=1)[:, burn:]
    theta = np.asarray(headings)[:, None] + np.cumsum(kappa * _STEP, 1) - kappa[:, :1] * _STEP
    xy = np.stack([np.cos(theta), np.sin(theta)], 2) * _STEP
    xy = starts[:, None, :] + np.cumsum(xy, 1) - xy[:, :1]
    outside = ((xy < -2) | (xy > size + 1)).any(2)
    exits = np.where(outside.any(1), outside.argmax(1), n)
    stops = np.maximum(np.minimum(exits, steps), 2)
    return [(xy[i, : stops[i]], theta[i, : stops[i]]) for i in range(k)]


def _profile(rng: np.random.Generator, m: int, base: float, low: float) -> np.ndarray:
    """Width along a structure: ``base`` +-25 % in a slow sine, never below ``low``."""
    period = rng.uniform(20.0, 50.0)
    phase = rng.uniform(0, 2 * math.pi)
    s = np.arange(m) * _STEP
    return np.maximum(base * (1 + 0.25 * np.sin(2 * math.pi * s / period + phase)), low)


def _strength(rng: np.random.Generator, m: int, p: ThinStructureParams) -> np.ndarray:
    """Contrast factor along a structure, with one smooth faded stretch when drawn."""
    level = rng.uniform(1 - p.contrast_spread, 1.0)
    strength = np.full(m, level)
    if rng.random() < p.fade_prob:
        s = np.arange(m) * _STEP
        half = rng.uniform(*p.fade_length) / 2
        centre = rng.uniform(0.15, 0.85) * s[-1]
        t = np.clip((s - centre) / max(half, 1e-6), -1, 1)
        strength *= 1 - p.fade_depth * np.cos(t * math.pi / 2) ** 2
    return strength


def _border_starts(rng: np.random.Generator, k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points on the border, each headed to a random point of the central half of the image."""
    side, t = rng.integers(4, size=k), rng.uniform(0, size - 1, k)
    edge = np.where(side % 2 == 0, 0.0, size - 1.0)
    starts = np.where((side < 2)[:, None], np.stack([t, edge], 1), np.stack([edge, t], 1))
    target = rng.uniform(0.25, 0.75, (k, 2)) * (size - 1)
    return starts, np.arctan2(target[:, 1] - starts[:, 1], target[:, 0] - starts[:, 0])


def _structures(rng: np.random.Generator, size: int, p: ThinStructureParams) -> list[_Curve]:
    """The labelled structures of one image: main curves across it, then their branches."""
    scale = size / _REF
    low, high = (max(1, round(c * scale)) for c in p.curves)
    k = int(rng.integers(low, high + 1))
    starts, headings = _border_starts(rng, k, size)
    mains = _walks(rng, starts, headings, np.full(k, 2.5 * size), size, p.curvature)
    bases = rng.uniform(*p.width, k)
    curves = [
        _Curve(xy, theta, _profile(rng, len(theta), w, p.width[0]), _strength(rng, len(theta), p))
        for (xy, theta), w in zip(mains, bases, strict=True)
    ]
    # Branches leave a main curve between 10 % and 90 % of its length, at 0.5-1.2 rad.
    parents = [
        i
        for i, c in enumerate(curves)
        if len(c.heading) >= 20
        for _ in range(int(rng.poisson(p.branches)))
    ]
    if not parents:
        return curves
    at = [
        int(rng.integers(len(curves[i].heading) // 10, len(curves[i].heading) * 9 // 10))
        for i in parents
    ]
    turn = rng.choice([-1.0, 1.0], len(parents)) * rng.uniform(0.5, 1.2, len(parents))
    branch_starts = np.stack([curves[i].xy[j] for i, j in zip(parents, at, strict=True)])
    branch_headings = np.array([curves[i].heading[j] for i, j in zip(parents, at, strict=True)])
    lengths = rng.uniform(0.25, 0.6, len(parents)) * size
    branches = _walks(rng, branch_starts, branch_headings + turn, lengths, size, p.curvature)
    thinner = rng.uniform(0.6, 0.9, len(parents))
    for (xy, theta), i, f in zip(branches, parents, thinner, strict=True):
        width = _profile(rng, len(theta), bases[i] * f, p.width[0])
        curves.append(_Curve(xy, theta, width, _strength(rng, len(theta), p)))
    return curves


def _cracks(rng: np.random.Generator, size: int, p: ThinStructureParams) -> list[_Curve]:
    """Dark, thin, short distractors anywhere in the image (their strength is positive here)."""
    k = int(rng.poisson(p.cracks * (size / _REF) ** 2))
    walks = _walks(
        rng,
        rng.uniform(0, size - 1, (k, 2)),
        rng.uniform(0, 2 * math.pi, k),
        rng.uniform(0.2, 0.5, k) * size,
        size,
        2 * p.curvature,
    )
    widths, strengths = rng.uniform(0.8, 1.4, k), rng.uniform(0.5, 0.9, k)
    return [
        _Curve(xy, theta, np.full(len(theta), w), np.full(len(theta), v))
        for (xy, theta), w, v in zip(walks, widths, strengths, strict=True)
    ]


def _splat(size: int, xy: np.ndarray, radius: np.ndarray, *values: np.ndarray) -> list[np.ndarray]:
    """Anti-aliased unions of discs, one canvas per ``values`` array.

    Each pixel of canvas ``v`` gets ``max_k values[v]_k * clip(r_k + 0.5 - d_k, 0, 1)``, with
    ``d_k`` the distance from the pixel centre to sample ``k``. With samples ``_STEP`` apart the
    union of discs is a stroke of width ``2 r`` whose edge pixels get their coverage, and the
    pixels with coverage >= 0.5 (for the value 1) are those within ``r`` of the centreline.
    """
    if not len(xy):
        return [np.zeros((size, size)) for _ in values]
    reaches = np.ceil(radius + 0.5).astype(np.int64)
    margin = int(reaches.max())
    side = size + 2 * margin  # a margin takes every disc whole: no bounds checks
    canvases = [np.zeros(side * side) for _ in values]
    # the window still holds the in-image pixels of a disc whose centre lies outside the image
    centre = np.clip(np.rint(xy).astype(np.int64), 0, size - 1)
    for reach in np.unique(reaches).tolist():  # a window per disc size: thin strokes stay cheap
        rows = np.flatnonzero(reaches == reach)
        offsets = np.arange(-reach, reach + 1)
        oy, ox = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
        # a covered pixel is within r + 0.5 <= reach of its sample, which lies within
        # sqrt(0.5) of the window's centre: the window's corners beyond that are never covered
        disc = np.hypot(ox, oy) < reach + 0.71
        ox, oy = ox[disc], oy[disc]
        px = centre[rows, 0:1] + ox  # (m, K)
        py = centre[rows, 1:2] + oy
        dist = np.hypot(px - xy[rows, 0:1], py - xy[rows, 1:2])
        cover = np.clip(radius[rows, None] + 0.5 - dist, 0.0, 1.0)
        flat = ((py + margin) * side + (px + margin)).ravel()
        for canvas, value in zip(canvases, values, strict=True):
            np.maximum.at(canvas, flat, (cover * value[rows, None]).ravel())
    inner = slice(margin, margin + size)
    return [c.reshape(side, side)[inner, inner] for c in canvases]


def _join(curves: Sequence[_Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not curves:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    return (
        np.concatenate([c.xy for c in curves]),
        np.concatenate([c.width for c in curves]) / 2,
        np.concatenate([c.strength for c in curves]),
    )


@dataclass
class _Blob:
    centre: np.ndarray
    axes: np.ndarray
    angle: float


def _blobs(rng: np.random.Generator, size: int, p: ThinStructureParams) -> list[_Blob]:
    scale = (size / _REF) ** 2
    low, high = (round(c * scale) for c in p.blobs)
    return [
        _Blob(
            rng.uniform(0.1, 0.9, 2) * (size - 1),
            rng.uniform(*p.blob_radius, 2),
            rng.uniform(0, math.pi),
        )
        for _ in range(int(rng.integers(low, high + 1)))
    ]


def _blob_cover(
    size: int, blobs: Sequence[_Blob], grow: Sequence[float] | None = None
) -> np.ndarray:
    """Anti-aliased union of ellipses (coverage from an approximate signed distance)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    cover = np.zeros((size, size))
    for k, b in enumerate(blobs):
        axes = b.axes * (1.0 if grow is None else grow[k])
        c, s = math.cos(b.angle), math.sin(b.angle)
        u = (xs - b.centre[0]) * c + (ys - b.centre[1]) * s
        v = -(xs - b.centre[0]) * s + (ys - b.centre[1]) * c
        rho = np.hypot(u / axes[0], v / axes[1])
        cover = np.maximum(cover, np.clip(0.5 + (1 - rho) * axes.min(), 0.0, 1.0))
    return cover


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=32)
def _gaussian_spectrum(size: int, sigma: float) -> np.ndarray:
    """Transfer function of a periodic Gaussian blur of ``sigma`` px, for ``rfft2`` of a square."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    spectrum = np.exp(-2 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))
    spectrum.setflags(write=False)
    return spectrum


def _smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """White noise blurred periodically (in Fourier space: cheaper than a wide kernel), unit std."""
    noise = rng.standard_normal((size, size))
    field = np.fft.irfft2(np.fft.rfft2(noise) * _gaussian_spectrum(size, sigma), s=(size, size))
    return field / max(float(field.std()), 1e-12)


def _background(rng: np.random.Generator, size: int, p: ThinStructureParams) -> np.ndarray:
    """Zero-mean texture of standard deviation about ``p.texture``."""
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) * 2
    smooth = 0.8 * _smooth_field(rng, size, size / 8) + 0.4 * _smooth_field(rng, size, size / 20)
    smooth = smooth + 0.5 * gradient  # a slow illumination ramp
    if p.background == "smooth":
        field = smooth
    elif p.background == "stripes":
        period, phase, theta = (
            rng.uniform(5.0, 9.0),
            rng.uniform(0, 2 * math.pi),
            rng.uniform(0, math.pi),
        )
        along = (np.cos(theta) * xs + np.sin(theta) * ys) * (size - 1)
        field = 0.9 * np.sin(2 * math.pi * along / period + phase) + 0.5 * smooth
    else:  # grain
        field = 0.9 * _smooth_field(rng, size, 0.9) + 0.5 * smooth
    return p.texture * field


class _Sample(NamedTuple):
    image: np.ndarray  # float32 (C, S, S) in [0, 1]
    accurate: np.ndarray  # uint8 (S, S)
    label: np.ndarray  # uint8 (S, S), the requested variant


def _render(
    seeds: tuple[int, int, int],
    size: int,
    in_chans: int,
    multiclass: bool,
    p: ThinStructureParams,
    variant: str,
) -> _Sample:
    from scipy import ndimage  # SciPy only where images are drawn (the [segmentation] extra)

    geo = np.random.default_rng([*seeds, _GEOMETRY])
    curves = _structures(geo, size, p)
    blobs = _blobs(geo, size, p) if multiclass else []
    cracks = _cracks(geo, size, p)
    n_specks = int(geo.poisson(p.speckles * (size / _REF) ** 2))
    specks_xy = geo.uniform(0, size - 1, (n_specks, 2))
    specks_r = geo.uniform(0.6, 1.3, n_specks)
    specks_v = geo.uniform(0.6, 1.0, n_specks)
    tint = geo.uniform(0.8, 1.2, in_chans) if in_chans == 3 else np.ones(1)
    shift = geo.uniform(-0.05, 0.05, in_chans) if in_chans == 3 else np.zeros(1)

    xy, radius, strength = _join(curves)
    thin, label_cover = _splat(size, xy, radius, strength, np.ones_like(radius))
    blob_cover = _blob_cover(size, blobs)
    grey = 0.5 + _background(np.random.default_rng([*seeds, _BACKGROUND]), size, p)
    grey += p.contrast * thin + p.blob_contrast * blob_cover
    cxy, cradius, cstrength = _join(cracks)
    grey -= p.contrast * _splat(size, cxy, cradius, cstrength)[0]
    grey += p.contrast * _splat(size, specks_xy, specks_r, specks_v)[0]

    image = (grey - 0.5)[None] * tint[:, None, None] + 0.5 + shift[:, None, None]
    if p.blur > 0:
        image = ndimage.gaussian_filter(image, (0, p.blur, p.blur), mode="nearest")
    if p.noise > 0:
        noise_rng = np.random.default_rng([*seeds, _NOISE])
        image = image + p.noise * noise_rng.standard_normal(image.shape)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    accurate = _classes(label_cover >= 0.5, blob_cover >= 0.5)
    if variant == "accurate":
        label = accurate
    elif variant == "noisy":
        label = _noisy_label(np.random.default_rng([*seeds, _LABEL]), size, curves, blobs, p)
    else:
        label = _pseudo_label(image.mean(0), size, multiclass, p)
    return _Sample(image, accurate, label)


def _classes(thin: np.ndarray, blob: np.ndarray) -> np.ndarray:
    """Class map: 1 on thin structures, 2 on blobs that no structure crosses, 0 elsewhere."""
    out = np.where(blob, 2, 0).astype(np.uint8)
    out[thin] = 1
    return out


# ------------------------------------------------------------------------------- labels


def _noisy_curve(rng: np.random.Generator, c: _Curve, rate: float) -> _Curve:
    """One structure's label with a missing stretch, a shifted stretch and a wrong thickness,
    each with probability ``rate``."""
    s = c.arclength
    xy, width = c.xy.copy(), c.width.copy()
    keep = np.ones(len(s), dtype=bool)
    if rng.random() < rate and s[-1] > 12:  # missing stretch: a visible gap of 4-10 px
        centre, gap = rng.uniform(0.1, 0.9) * s[-1], rng.uniform(4.0, 10.0)
        keep &= np.abs(s - centre) > (gap + float(width.max())) / 2
    if rng.random() < rate and s[-1] > 12:  # shifted stretch: a bump of 1.5-3 px sideways
        centre, half = rng.uniform(0.1, 0.9) * s[-1], rng.uniform(4.0, 10.0)
        t = np.clip((s - centre) / half, -1, 1)
        bump = rng.choice([-1, 1]) * rng.uniform(1.5, 3.0) * np.cos(t * math.pi / 2) ** 2
        normal = np.stack([-np.sin(c.heading), np.cos(c.heading)], 1)
        xy += bump[:, None] * normal
    if rng.random() < rate:  # thickness error: 0.5-0.7x or 1.5-2.2x, at least 1 px wide
        factor = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
        width = np.maximum(width * factor, 1.0)
    return _Curve(xy[keep], c.heading[keep], width[keep], c.strength[keep])


def _noisy_label(
    rng: np.random.Generator,
    size: int,
    curves: Sequence[_Curve],
    blobs: Sequence[_Blob],
    p: ThinStructureParams,
) -> np.ndarray:
    noisy = [_noisy_curve(rng, c, p.label_error_rate) for c in curves]
    xy, radius, _ = _join(noisy)
    thin = _splat(size, xy, radius, np.ones_like(radius))[0] >= 0.5
    grow = [
        (rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.5))
        if rng.random() < p.label_error_rate
        else 1.0
        for _ in blobs
    ]
    return _classes(thin, _blob_cover(size, blobs, grow) >= 0.5)


_DISC2 = np.hypot(*np.mgrid[-2:3, -2:3]) <= 2.0


def _pseudo_label(
    grey: np.ndarray, size: int, multiclass: bool, p: ThinStructureParams
) -> np.ndarray:
    """Difference of Gaussians (0.7 px and 3 px) above ``pseudo_threshold`` standard deviations,
    components under 5 px dropped; blobs: a coarser response opened with a disc of radius 2."""
    from scipy import ndimage  # SciPy only where images are drawn (the [segmentation] extra)

    response = ndimage.gaussian_filter(grey, 0.7) - ndimage.gaussian_filter(grey, 3.0)
    fg = response > response.mean() + p.pseudo_threshold * response.std()
    components, count = ndimage.label(fg, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    fg = (sizes >= 5)[components] & fg
    blob = np.zeros_like(fg)
    if multiclass:
        coarse = ndimage.gaussian_filter(grey, 1.0) - ndimage.gaussian_filter(grey, size / 8)
        blob = ndimage.binary_opening(coarse > coarse.mean() + coarse.std(), _DISC2)
        fg &= ~blob
    return _classes(fg, blob)


# ----------------------------------------------------------------------------- public API


class ThinStructureArrays(NamedTuple):
    """Arrays of one split, as :func:`thin_structures` returns them."""

    images: np.ndarray
    """float32 (N, C, S, S), values in [0, 1]."""
    masks: np.ndarray
    """int64 (N, S, S): the requested label variant (class indices)."""
    accurate_masks: np.ndarray
    """int64 (N, S, S): the accurate labels (the truth the test splits are scored against)."""


def thin_structures(
    n: int,
    split: str = "train",
    *,
    image_size: int = 64,
    in_chans: int = 1,
    multiclass: bool = False,
    labels: str = "accurate",
    params: ThinStructureParams | None = None,
    seed: int = 0,
) -> ThinStructureArrays:
    """Draw ``n`` samples of a split of the thin-structure data.

    Sample ``i`` of split ``split`` depends only on ``(seed, split, i)``, the image size, the
    channel count, ``multiclass`` and ``params``; the label variant changes the masks only. The
    OOD splits draw the structures of the ``"test"`` split and render them with the shift of
    :data:`OOD_SHIFTS`, so an ID/OOD difference is the shift's effect alone.

    Args:
        n: number of samples, >= 1.
        split: one of :data:`SPLITS` or :data:`OOD_SPLITS`.
        image_size: side ``S`` in px, >= 16; default 64.
        in_chans: 1 (grey) or 3 (a random per-image tint and offset per channel, independent
            noise per channel).
        multiclass: ``False``: classes 0 (background) and 1 (thin structure). ``True``: also
            class 2, elliptic blobs; a structure crossing a blob keeps class 1.
        labels: ``"accurate"``; ``"noisy"`` (each structure loses a 4-10 px stretch, has a
            1.5-3 px sideways bump over 8-20 px and gets 0.5-0.7x or 1.5-2.2x its width, each
            with probability ``params.label_error_rate``; blobs get 0.6-0.8x or 1.25-1.5x their
            size with that probability); ``"pseudo"`` (a thresholded difference-of-Gaussians
            filter of the image: misses faded stretches, picks up specks and texture).
        params: the generator's knobs (:class:`ThinStructureParams`); ``None`` uses defaults.
        seed: any int >= 0.

    Example:
        >>> data = thin_structures(8, "train", seed=0)
        >>> data.images.shape, data.masks.shape, data.masks.dtype
        ((8, 1, 64, 64), (8, 64, 64), dtype('int64'))
    """
    check_int(n, "n", 1)
    check_choice(split, SPLITS + OOD_SPLITS, "split")
    check_int(image_size, "image_size", 16)
    check_image_options(image_size, in_chans)
    check_choice(labels, LABEL_VARIANTS, "labels")
    check_int(seed, "seed", 0)
    if not isinstance(multiclass, bool):
        raise ValueError(f"`multiclass` must be a bool; got {multiclass!r}.")
    params = split_params(params or ThinStructureParams(), split)
    code = _SPLIT_CODES.get(split, _SPLIT_CODES["test"])
    images = np.empty((n, in_chans, image_size, image_size), dtype=np.float32)
    masks = np.empty((n, image_size, image_size), dtype=np.int64)
    accurate = np.empty_like(masks)
    for i in range(n):
        sample = _render((seed, code, i), image_size, in_chans, multiclass, params, labels)
        images[i], masks[i], accurate[i] = sample.image, sample.label, sample.accurate
    return ThinStructureArrays(images, masks, accurate)


SampleTransform = Callable[[dict[str, Any]], dict[str, Any]]
"""A callable on a sample mapping ``{"image", "mask", "index", ...}`` returning a mapping."""


def apply_transforms(
    sample: dict[str, Any], transforms: Sequence[SampleTransform]
) -> dict[str, Any]:
    """Run ``transforms`` in order; each must return a mapping (it may add keys)."""
    for transform in transforms:
        sample = transform(sample)
        if not isinstance(sample, Mapping):
            raise TypeError(
                f"a sample transform must return a mapping; {transform!r} returned "
                f"{type(sample).__name__}."
            )
        sample = dict(sample)
    return sample


class ThinStructuresDataset(Dataset[dict[str, Any]]):
    """One split of the thin-structure data as mapping samples, built once at construction.

    Item ``i`` is ``{"image": float32 (C, S, S), "mask": int64 (S, S), "index": i}`` after the
    ``transforms`` (which may add entries such as ``"skeleton"``; the default collate stacks
    them). Images are normalised as ``(x - mean) / std`` per channel.

    Args:
        size: number of samples, >= 1.
        split, image_size, in_chans, multiclass, labels, params, seed: as in
            :func:`thin_structures`.
        mean, std: per-channel statistics; ``None`` computes them from these images (pass the
            training split's to the others).
        transforms: sample transforms applied in order to every item.

    Attributes:
        images: float32 tensor (N, C, S, S), normalised.
        masks: int64 tensor (N, S, S) of the label variant.
        accurate_masks: int64 tensor (N, S, S), the accurate labels.
        num_classes: 2, or 3 when ``multiclass``.
        mean: the per-channel means used to normalise.
        std: the per-channel standard deviations used to normalise.
        split: the split's name.
        labels: the label variant.

    Example:
        >>> train = ThinStructuresDataset(32, "train")
        >>> test = ThinStructuresDataset(16, "ood_blur", mean=train.mean, std=train.std)
        >>> sorted(test[0]), test[0]["image"].shape
        (['image', 'index', 'mask'], torch.Size([1, 64, 64]))
    """

    def __init__(
        self,
        size: int = 256,
        split: str = "train",
        image_size: int = 64,
        in_chans: int = 1,
        multiclass: bool = False,
        labels: str = "accurate",
        params: ThinStructureParams | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transforms: Sequence[SampleTransform] = (),
    ) -> None:
        check_int(size, "size", 1)
        stats = check_stats(mean, std, in_chans)
        data = thin_structures(
            size,
            split,
            image_size=image_size,
            in_chans=in_chans,
            multiclass=multiclass,
            labels=labels,
            params=params,
            seed=seed,
        )
        x = torch.from_numpy(data.images)
        if stats is None:
            x64 = x.to(torch.float64)
            stats = (
                tuple(float(v) for v in x64.mean(dim=(0, 2, 3))),
                tuple(safe_std(float(v)) for v in x64.std(dim=(0, 2, 3), unbiased=False)),
            )
        m = torch.tensor(stats[0], dtype=torch.float32).view(1, in_chans, 1, 1)
        s = torch.tensor(stats[1], dtype=torch.float32).view(1, in_chans, 1, 1)
        self.images: Tensor = ((x - m) / s).contiguous()
        self.masks: Tensor = torch.from_numpy(data.masks)
        self.accurate_masks: Tensor = torch.from_numpy(data.accurate_masks)
        self.mean, self.std = stats
        self.split, self.labels = split, labels
        self.num_classes: int = 3 if multiclass else 2
        self.transforms: tuple[SampleTransform, ...] = tuple(transforms)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {"image": self.images[index], "mask": self.masks[index], "index": index}
        return apply_transforms(sample, self.transforms)
