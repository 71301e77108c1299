"""BASNet's hybrid loss and the MS-SSIM loss: float64 references written from the formulas, and
the SSIM maps against kornia and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from lightning_losses.losses.segmentation import BASNetHybridLoss, MSSSIMLoss
from lightning_losses.losses.segmentation.basnet import ssim_map
from lightning_losses.losses.segmentation.ms_ssim import gaussian_window_size, ms_ssim_min_size
from lightning_losses.testing import no_host_sync

C1, C2 = 0.01**2, 0.03**2


def _gauss(size: int, sigma: float) -> list[float]:
    w = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(size)]
    return [v / sum(w) for v in w]


def _ssim_zero_padded(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5):
    """SSIM map of two 2-D float64 images, a loop over pixels and window taps; pixels outside
    the image are 0 (BASNet's zero-padded filtering)."""
    h, w = x.shape
    g = _gauss(size, sigma)
    r = size // 2
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            mx = my = sxx = syy = sxy = 0.0
            for a in range(size):
                for b in range(size):
                    u, v = i + a - r, j + b - r
                    if 0 <= u < h and 0 <= v < w:
                        k = g[a] * g[b]
                        xv, yv = float(x[u, v]), float(y[u, v])
                        mx, my = mx + k * xv, my + k * yv
                        sxx, syy, sxy = sxx + k * xv * xv, syy + k * yv * yv, sxy + k * xv * yv
            vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
            out[i, j] = ((2 * mx * my + C1) * (2 * cxy + C2)) / (
                (mx * mx + my * my + C1) * (vx + vy + C2)
            )
    return out


def _basnet_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - SSIM) + (1 - IoU) per channel, mean over channels, a loop in float64."""
    n, c = logits.shape[:2]
    p = torch.sigmoid(logits.double())
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        total = 0.0
        for k in range(c):
            pk, gk = p[i, k], target[i, k].double()
            bce = -(gk * torch.log(pk) + (1 - gk) * torch.log(1 - pk)).mean()
            ssim = _ssim_zero_padded(pk, gk).mean()
            tp = (pk * gk).sum()
            iou = (tp + 1e-5) / (pk.sum() + gk.sum() - tp + 1e-5)
            total = total + bce + (1 - ssim) + (1 - iou)
        out[i] = total / c
    return out


def test_basnet_hybrid_equals_the_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 13, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(2, 2, 9, 13, generator=g) > 0.6).double()
    got = BASNetHybridLoss(reduction="none")(x, y)
    torch.testing.assert_close(got, _basnet_reference(x, y))


def test_basnet_binary_mode_equals_one_multilabel_channel_and_takes_index_targets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 12, 12, generator=g)
    y = torch.randint(0, 2, (3, 12, 12), generator=g)
    binary = BASNetHybridLoss(mode="binary", reduction="none")(x, y)
    multilabel = BASNetHybridLoss(reduction="none")(x, y[:, None].float())
    torch.testing.assert_close(binary, multilabel)


def test_ssim_map_interior_equals_kornia_and_torchmetrics():
    """Away from the border (5 pixels for the 11-tap window) padding plays no part, so the
    zero-padded map of BASNet equals kornia's and torchmetrics' SSIM maps there."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 24, 20, generator=g, dtype=torch.float64)
    y = (x + 0.3 * torch.randn(2, 1, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim_map(x, y)[..., 5:-5, 5:-5]
    kornia = pytest.importorskip("kornia")
    theirs = kornia.metrics.ssim(x, y, 11, max_val=1.0, eps=0.0)[..., 5:-5, 5:-5]
    torch.testing.assert_close(ours, theirs)
    _, full = structural_similarity_index_measure(
        x, y, data_range=1.0, reduction="none", return_full_image=True
    )
    torch.testing.assert_close(ours, full[..., 5:-5, 5:-5])


def test_kornia_ssim_loss_halves_the_dissimilarity():
    """kornia's ``ssim_loss`` is (1 - SSIM) / 2 with reflect padding; BASNet's term is
    1 - SSIM with zero padding (the paper's code), which this loss follows."""
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)
    y = torch.rand(1, 1, 16, 16, generator=g, dtype=torch.float64)
    kornia_map = kornia.metrics.ssim(x, y, 11, max_val=1.0, eps=0.0)
    halved = kornia.losses.ssim_loss(x, y, 11, max_val=1.0, eps=0.0)
    torch.testing.assert_close(halved, ((1 - kornia_map) / 2).mean())


def test_basnet_options_are_checked():
    with pytest.raises(ValueError, match="'binary' or 'multilabel'"):
        BASNetHybridLoss(mode="multiclass")
    with pytest.raises(ValueError, match="reduce_over"):
        BASNetHybridLoss(reduce_over="batch")
    with pytest.raises(ValueError, match="kernel_size"):
        BASNetHybridLoss(kernel_size=10)
    with pytest.raises(ValueError, match="input"):
        BASNetHybridLoss()(torch.randn(2, 3, 8), torch.ones(2, 3, 8))


def test_basnet_reads_nothing_back_to_the_host():
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    y = torch.randint(0, 2, (2, 1, 16, 16)).float()
    with no_host_sync():
        BASNetHybridLoss()(x, y).backward()
    assert torch.isfinite(x.grad).all()


# -- MS-SSIM ---------------------------------------------------------------------------------


def _ms_ssim_reference(p: torch.Tensor, g: torch.Tensor, betas, size, sigma) -> float:
    """Wang et al.'s MS-SSIM of two 2-D float64 maps: contrast-structure at every scale but
    the last (valid Gaussian filtering), full SSIM at the last (over the reflect-padded image,
    as torchmetrics), 2x2 average pooling between scales, negative terms clipped at 0
    (torchmetrics' ``normalize="relu"``)."""
    w = torch.tensor(_gauss(size, sigma), dtype=torch.float64)
    kernel = (w[:, None] * w[None, :])[None, None]
    x, y = p[None, None], g[None, None]
    factors = []
    for j, beta in enumerate(betas):
        mx, my = F.conv2d(x, kernel), F.conv2d(y, kernel)
        vx = (F.conv2d(x * x, kernel) - mx**2).clamp_min(0)
        vy = (F.conv2d(y * y, kernel) - my**2).clamp_min(0)
        cxy = F.conv2d(x * y, kernel) - mx * my
        cs = ((2 * cxy + C2) / (vx + vy + C2)).mean()
        if j == len(betas) - 1:  # full SSIM over the whole image, reflect-padded
            r = size // 2
            xp, yp = (F.pad(t, (r, r, r, r), mode="reflect") for t in (x, y))
            mx, my = F.conv2d(xp, kernel), F.conv2d(yp, kernel)
            vx = (F.conv2d(xp * xp, kernel) - mx**2).clamp_min(0)
            vy = (F.conv2d(yp * yp, kernel) - my**2).clamp_min(0)
            cxy = F.conv2d(xp * yp, kernel) - mx * my
            lum = (2 * mx * my + C1) / (mx**2 + my**2 + C1)
            term = (lum * (2 * cxy + C2) / (vx + vy + C2)).mean()
        else:
            term = cs
        factors.append(max(float(term), 0.0) ** beta)
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return math.prod(factors)


def test_ms_ssim_equals_the_formula_in_float64():
    betas, sigma = (0.2, 0.3, 0.5), 1.0
    size = gaussian_window_size(sigma)  # 9 taps
    side = ms_ssim_min_size(size, len(betas))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, side + 3, side + 1, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, side + 3, side + 1), generator=g)
    loss = MSSSIMLoss(betas=betas, sigma=sigma, reduction="none")
    p = torch.softmax(x, 1)
    onehot = F.one_hot(y, 3).movedim(-1, 1).double()
    expected = torch.tensor(
        [
            sum(1 - _ms_ssim_reference(p[i, c], onehot[i, c], betas, size, sigma) for c in range(3))
            / 3
            for i in range(2)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(loss(x, y), expected)


def test_ms_ssim_with_the_default_scales_equals_torchmetrics_per_channel():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 176, 180, generator=g)
    y = torch.randint(0, 2, (2, 176, 180), generator=g)
    ours = MSSSIMLoss(mode="binary", reduction="none")(x, y)
    theirs = multiscale_structural_similarity_index_measure(
        torch.sigmoid(x), y[:, None].float(), data_range=1.0, reduction="none"
    )
    torch.testing.assert_close(ours, 1 - theirs)


def test_ms_ssim_in_3d_with_fewer_scales():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, 12, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 12, 12, 12), generator=g)
    loss = MSSSIMLoss(betas=(0.5, 0.5), sigma=0.5, reduction="none")
    p = torch.softmax(x, 1)
    onehot = F.one_hot(y, 2).movedim(-1, 1).double()
    per_class = [
        multiscale_structural_similarity_index_measure(
            p[:, c : c + 1],
            onehot[:, c : c + 1],
            sigma=0.5,
            kernel_size=5,
            betas=(0.5, 0.5),
            data_range=1.0,
            reduction="none",
        )
        for c in range(2)
    ]
    torch.testing.assert_close(loss(x, y), 1 - (per_class[0] + per_class[1]) / 2)


def test_ms_ssim_too_small_an_image_is_a_clear_error():
    x, y = torch.randn(1, 2, 64, 64), torch.randint(0, 2, (1, 64, 64))
    with pytest.raises(ValueError, match=r"`input` is too small.*at least 176"):
        MSSSIMLoss()(x, y)
    with pytest.raises(ValueError, match="reduce_over"):
        MSSSIMLoss(reduce_over="batch")


def test_ms_ssim_bf16_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 24, 24, generator=g)
    y = torch.randint(0, 2, (1, 24, 24), generator=g)
    loss = MSSSIMLoss(betas=(0.5, 0.5), sigma=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x.bfloat16(), y)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, loss(x.bfloat16().float(), y), rtol=1e-5, atol=1e-6)
