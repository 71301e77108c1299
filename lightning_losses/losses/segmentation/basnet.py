"""BASNet's hybrid loss: binary cross-entropy + SSIM + IoU, for crisp boundaries."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_int, check_positive
from ..._reduce import PerSample
from ...registry import register_loss
from ._dense import DenseLoss, safe_ratio

#: SSIM constants for data in [0, 1]: (0.01 L)^2 and (0.03 L)^2 with L = 1 (Wang et al. 2004).
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: Any) -> Tensor:
    """A normalised 1-D Gaussian window of ``size`` taps."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter of ``(B, 1, *spatial)`` with zero padding (same size)."""
    k = window.numel()
    dims = x.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = k
        padding = [0] * dims
        padding[axis] = k // 2
        x = conv(x, window.reshape(shape), padding=tuple(padding))
    return x


def ssim_map(x: Tensor, y: Tensor, kernel_size: int = 11, sigma: float = 1.5) -> Tensor:
    r"""The SSIM map of ``x`` and ``y`` ``(B, 1, *spatial)`` in [0, 1] (Wang et al., 2004):

    .. math::
        \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                             {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}

    with Gaussian-weighted local statistics, zero padded at the border (BASNet's
    ``pytorch_ssim``), so the map has the input's size.
    """
    window = gaussian_window(kernel_size, sigma, x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    xx, yy, xy = _blur(x * x, window), _blur(y * y, window), _blur(x * y, window)
    var_x, var_y = xx - mu_x.square(), yy - mu_y.square()
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x.square() + mu_y.square() + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return num / den


@register_loss(
    "basnet_hybrid",
    family="segmentation",
    paper="Qin et al., BASNet: Boundary-Aware Salient Object Detection, CVPR 2019",
)
class BASNetHybridLoss(DenseLoss):
    r"""BASNet's hybrid loss: pixel-level BCE, patch-level SSIM and map-level IoU, per channel.

    With probabilities :math:`p = \sigma(x)` and target :math:`g` of one channel over the
    :math:`|\Omega|` pixels of one image:

    .. math::
        \ell_{bce} = -\frac{1}{|\Omega|}\sum_q \bigl(g \log p + (1 - g)\log(1 - p)\bigr),\qquad
        \ell_{ssim} = 1 - \frac{1}{|\Omega|}\sum_q \mathrm{SSIM}(p, g)(q),

    .. math::
        \ell_{iou} = 1 - \frac{\sum pg + s}{\sum p + \sum g - \sum pg + s},\qquad
        \ell = \frac{1}{C}\sum_c \bigl(\ell_{bce} + \ell_{ssim} + \ell_{iou}\bigr).

    SSIM (:func:`ssim_map`) uses an 11-tap Gaussian window with :math:`\sigma = 1.5` and zero
    padding, as BASNet's code; its map averages over every pixel. The BCE is computed from the
    logits in log space (``binary_cross_entropy_with_logits``; from probabilities it is
    ``binary_cross_entropy``, whose logs are floored at -100). The paper sums the three terms
    with equal weights on every side output (8 outputs, equally weighted): wrap this loss in
    :class:`~lightning_losses.losses.compound.CompoundLoss` with
    ``deep_supervision_weights=[1.0] * 8`` for that.

    BASNet's task is binary (saliency): ``mode="binary"`` with one channel, or
    ``"multilabel"`` (the default, each channel its own binary map; for one channel the two
    agree). The paper's IoU term has no smoothing (0/0 on an empty target with an empty
    prediction); :math:`s` = 1e-5 gives 0 there instead. The reference IoU pools all channels
    of an image; this takes the mean of per-channel values, the dense contract's class mean
    (the same for one channel).

    Args:
        kernel_size: SSIM window; 11 (BASNet's ``pytorch_ssim``).
        sigma: SSIM Gaussian width; 1.5 (BASNet's ``pytorch_ssim``).
        smooth: :math:`s` of the IoU term; 1e-5 (the paper has none).
        mode: ``"multilabel"`` (default) or ``"binary"``.
        from_logits, include_background, ignore_index, empty_target: the dense contract, see
            :mod:`lightning_losses.losses.segmentation._dense`. Ignored pixels are left out of
            the BCE and SSIM means and zeroed in the SSIM inputs (a window sees its neighbours,
            so ignoring is not slicing). ``reduce_over`` must be ``"image"``.

    Shape: input (N, C, H, W) (or (N, C, D, H, W), a 3-D window) logits; target
    (N, C, *spatial) in [0, 1], or (N, *spatial) in binary mode; output (N,) with
    ``reduction="none"``.

    Example:
        >>> loss = BASNetHybridLoss(mode="binary")
        >>> loss(torch.randn(2, 1, 64, 64), torch.randint(0, 2, (2, 64, 64)))  # doctest: +SKIP
    """

    target_kind: ClassVar[str] = "multilabel"
    min_spatial_dims: ClassVar[int] = 2

    def __init__(
        self,
        *,
        kernel_size: int = 11,
        sigma: float = 1.5,
        smooth: float = 1e-5,
        mode: str = "multilabel",
        from_logits: bool = True,
        include_background: bool = True,
        ignore_index: int | None = None,
        reduce_over: str = "image",
        empty_target: str = "keep",
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        if mode == "multiclass":
            raise ValueError(
                "`mode` of the BASNet hybrid loss must be 'binary' or 'multilabel' (a binary "
                "cross-entropy per channel); got 'multiclass'."
            )
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
                f"`reduce_over` of {type(self).__name__} must be 'image' (SSIM has no pooled "
                f"batch form); got {reduce_over!r}."
            )
        self.kernel_size = check_int(kernel_size, "kernel_size", 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd; got {kernel_size}.")
        self.sigma = check_positive(sigma, "sigma")
        self.smooth = check_positive(smooth, "smooth", allow_zero=True)

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        if input.ndim not in (4, 5):
            raise ValueError(
                f"`input` of {type(self).__name__} must be (N, C, H, W) or (N, C, D, H, W) logits; "
                f"got shape {tuple(input.shape)}."
            )
        d = self.prepare(input, target)
        n, c, s = d.probs.shape
        spatial = tuple(input.shape[2:])
        # float32 throughout (a bf16 convolution would change the SSIM statistics; CUDA
        # autocast refuses binary_cross_entropy on probabilities)
        with torch.autocast(device_type=d.probs.device.type, enabled=False):
            if self.from_logits:
                bce = F.binary_cross_entropy_with_logits(d.scores, d.target, reduction="none")
            else:
                bce = F.binary_cross_entropy(d.scores, d.target, reduction="none")
            sim = ssim_map(
                d.probs.reshape(n * c, 1, *spatial),
                d.target.reshape(n * c, 1, *spatial),
                self.kernel_size,
                self.sigma,
            ).reshape(n, c, s)
        if d.mask is None:
            bce_mean, ssim_mean = bce.mean(2), sim.mean(2)
        else:
            count = d.mask.expand(n, c, s).sum(2)
            bce_mean = safe_ratio((bce * d.mask).sum(2), count)
            ssim_mean = safe_ratio((sim * d.mask).sum(2), count)
        tp = (d.probs * d.target).sum(2)
        union = d.probs.sum(2) + d.target.sum(2) - tp
        iou = (tp + self.smooth) / (union + self.smooth).clamp_min(torch.finfo(tp.dtype).eps)
        per_class = bce_mean + (1.0 - ssim_mean) + (1.0 - iou)
        return self.mean_over_classes(d, per_class, d.target.sum(2) > 0)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, sigma={self.sigma}, smooth={self.smooth}, "
            f"{super().extra_repr()}"
        )


__all__ = ["BASNetHybridLoss", "gaussian_window", "ssim_map"]
