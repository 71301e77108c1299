"""Multi-scale structural similarity loss, through torchmetrics' functional MS-SSIM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..._checks import check_choice, check_number, check_positive
from ..._reduce import PerSample
from ...registry import register_loss
from ._dense import DenseLoss

#: Wang et al.'s scale weights (MS-SSIM, Asilomar 2003), also torchmetrics' default.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window_size(sigma: float) -> int:
    """The Gaussian window torchmetrics uses for ``sigma`` (it derives the size from ``sigma``
    and ignores ``kernel_size``): 11 taps for the default 1.5."""
    return int(3.5 * sigma + 0.5) * 2 + 1


def ms_ssim_min_size(window: int, scales: int) -> int:
    """The smallest spatial size for ``scales`` scales and a ``window``-tap window: torchmetrics'
    own bound, and the coarsest scale still holding one whole window."""
    div = max(1, scales - 1) ** 2
    return max(2**scales, max(div, 2 ** (scales - 1)) * window)


@register_loss(
    "ms_ssim",
    family="segmentation",
    paper="Snell et al., Learning to Generate Images with Perceptual Similarity Metrics, ICIP "
    "2017 (MS-SSIM: Wang, Simoncelli and Bovik, Asilomar 2003)",
)
class MSSSIMLoss(DenseLoss):
    r"""One minus the multi-scale structural similarity of each class's probability map and
    target, averaged over classes.

    With :math:`l_j, c_j, s_j` the luminance, contrast and structure terms of SSIM at scale
    :math:`j` (Gaussian window of width :math:`\sigma`, constants :math:`C_1 = (k_1 L)^2`,
    :math:`C_2 = (k_2 L)^2`, :math:`L = 1` for probabilities), each scale half the size of the
    one before (2x2 average pooling), and :math:`M` scales:

    .. math::
        \mathrm{MS\text{-}SSIM}(p, g) = l_M(p, g)^{\beta_M} \prod_{j=1}^{M}
            \bigl(c_j(p, g)\, s_j(p, g)\bigr)^{\beta_j},
        \qquad
        \ell = \frac{1}{C} \sum_c \bigl(1 - \mathrm{MS\text{-}SSIM}(p_c, g_c)\bigr).

    Each image and class goes through torchmetrics'
    ``multiscale_structural_similarity_index_measure`` on its own (``reduction="none"``), so the
    dense options apply per class. torchmetrics averages the contrast-structure terms over the
    pixels whose window lies inside the image and the last scale's full SSIM over the whole
    image, reflect-padded (the float64 reference test follows both). Computed in float32 with
    autocast off (a bf16 convolution would change the statistics). ``normalize="relu"``
    (torchmetrics' default for training) clips negative contrast-structure terms at 0 before
    the fractional powers, which would otherwise be NaN.

    The window has :math:`2\lfloor 3.5\sigma + 0.5\rfloor + 1` taps, torchmetrics' rule (11
    for :math:`\sigma = 1.5`; :func:`gaussian_window_size`). The image must be large enough for
    the scales: with 5 scales and 11 taps every spatial size must be at least 176
    (:func:`ms_ssim_min_size`); fewer ``betas`` or a smaller ``sigma`` serve small images, and a
    too-small input is a ``ValueError`` naming the size. 2-D and 3-D (a 3-D Gaussian window).

    Args:
        betas: the scale weights; Wang et al.'s five (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
        sigma: Gaussian window width, which also sets the window size; 1.5 (Wang et al.,
            torchmetrics), an 11-tap window.
        k1, k2: SSIM constants; 0.01, 0.03 (Wang et al.).
        normalize: ``"relu"`` (default), ``"simple"`` or ``None``, torchmetrics' option.
        mode, from_logits, include_background, ignore_index, empty_target: the dense contract,
            see :mod:`lightning_losses.losses.segmentation._dense`. Ignored pixels are zeroed in
            the prediction and the target (a window sees its neighbours, so ignoring is not
            slicing). ``reduce_over`` must be ``"image"``: a similarity of windows has no
            pooled batch form.

    Shape: input (N, C, H, W) or (N, C, D, H, W) logits; target (N, *spatial) class indices or
    (N, C, *spatial) (see ``mode``); output (N,) with ``reduction="none"``.

    Example:
        >>> loss = MSSSIMLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 192, 192), torch.randint(0, 2, (2, 192, 192)))  # doctest: +SKIP
    """

    min_spatial_dims: ClassVar[int] = 2
    #: the conformance suite's input size for this loss (the default scales need 176 pixels)
    conformance_spatial: ClassVar[tuple[int, ...]] = (176, 176)

    def __init__(
        self,
        *,
        betas: Sequence[float] = MS_SSIM_BETAS,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
        normalize: str | None = "relu",
        mode: str = "multiclass",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            include_background=include_background,
            ignore_index=ignore_index,
            reduce_over=reduce_over,
            empty_target=empty_target,
            reduction=reduction,
            validate_args=validate_args,
        )
        if reduce_over != "image":
            raise ValueError(
                f"`reduce_over` of {type(self).__name__} must be 'image' (a similarity of windows "
                f"has no pooled batch form); got {reduce_over!r}."
            )
        self.betas = tuple(check_positive(b, "betas") for b in betas)
        if not self.betas:
            raise ValueError("`betas` must hold at least one scale weight; got none.")
        self.sigma = check_positive(sigma, "sigma")
        self.window = gaussian_window_size(self.sigma)
        self.k1 = check_number(k1, "k1")
        self.k2 = check_number(k2, "k2")
        if normalize is not None:
            check_choice(normalize, ("relu", "simple"), "normalize")
        self.normalize = normalize

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        if input.ndim not in (4, 5):
            raise ValueError(
                f"`input` of {type(self).__name__} must be (N, C, H, W) or (N, C, D, H, W) logits; "
                f"got shape {tuple(input.shape)}."
            )
        need = ms_ssim_min_size(self.window, len(self.betas))
        if min(input.shape[2:]) < need:
            raise ValueError(
                f"`input` is too small for MS-SSIM with {len(self.betas)} scales and a "
                f"{self.window}-tap window: every spatial size must be at least {need}; got "
                f"shape {tuple(input.shape)}. Pass fewer `betas` or a smaller `sigma`."
            )
        # imported on first use: the losses import with torch alone (core install)
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

        d = self.prepare(input, target)
        n, c = d.probs.shape[:2]
        spatial = tuple(input.shape[2:])
        p = d.probs.reshape(n * c, 1, *spatial)
        g = d.target.reshape(n * c, 1, *spatial)
        with torch.autocast(device_type=p.device.type, enabled=False):
            score = multiscale_structural_similarity_index_measure(
                p,
                g,
                gaussian_kernel=True,
                sigma=self.sigma,
                kernel_size=self.window,
                reduction="none",
                data_range=1.0,
                k1=self.k1,
                k2=self.k2,
                betas=self.betas,
                normalize=self.normalize,
            )
        per_class = 1.0 - score.reshape(n, c)
        return self.mean_over_classes(d, per_class, d.target.sum(2) > 0)

    def extra_repr(self) -> str:
        return f"betas={self.betas}, sigma={self.sigma}, {super().extra_repr()}"
