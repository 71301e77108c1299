"""MIP loss (SPOCKMIP): a float64 reference from the formula in 2-D and 3-D, axes, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss
from lightning_losses.losses.topology_mip import MIPLoss
from lightning_losses.testing import no_host_sync


def _soft_dice(p: torch.Tensor, g: torch.Tensor, s: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss of one channel, a plain float64 sum (MONAI's smoothing)."""
    return 1 - (2 * (p * g).sum() + s) / (p.sum() + g.sum() + s)


def _mip_reference(logits, y, axes):
    """Dice(P, L) + sum_a Dice(max_a P, max_a L), per image, mean over classes, in float64."""
    p = torch.softmax(logits.double(), 1)
    n, k = p.shape[:2]
    g = F.one_hot(y, k).movedim(-1, 1).double()
    out = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        volume = sum(_soft_dice(p[i, c], g[i, c]) for c in range(k)) / k
        projections = 0.0
        for a in axes:
            projections += sum(_soft_dice(p[i, c].amax(a), g[i, c].amax(a)) for c in range(k)) / k
        out[i] = volume + projections
    return out


@pytest.mark.parametrize(
    ("spatial", "axes"),
    [((6, 7), None), ((6, 7), [1]), ((4, 5, 6), None), ((4, 5, 6), [0])],
    ids=["2d-all", "2d-one", "3d-all", "3d-slice-axis"],
)
def test_mip_loss_equals_the_formula_in_float64(spatial, axes):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, *spatial, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (3, *spatial), generator=g)
    loss = MIPLoss(axes=axes, reduction="none")
    used = range(len(spatial)) if axes is None else axes
    torch.testing.assert_close(loss(x, y), _mip_reference(x, y, used))


def test_a_broken_vessel_costs_more_than_a_shifted_one():
    """The projection term sees a gap that a projection of the target does not have."""
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 4, 4, :] = 1  # a straight vessel along the last axis
    broken = F.one_hot(target, 2).movedim(-1, 1).double()
    broken[0, 1, 4, 4, 3:5], broken[0, 0, 4, 4, 3:5] = 0.0, 1.0  # a 2-voxel gap
    volume_only = build_loss("dice", from_logits=False)
    mip = MIPLoss(from_logits=False, axes=[0])
    gap_volume = volume_only(broken, target)
    gap_mip = mip(broken, target)
    assert gap_mip > gap_volume > 0


def test_binary_mode_and_base_options():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 5, 6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 5, 6, 7), generator=g)
    loss = MIPLoss(mode="binary", base="tversky", base_kwargs={"alpha": 0.5, "beta": 0.5})
    dice = MIPLoss(mode="binary")
    torch.testing.assert_close(loss(x, y), dice(x, y))  # Tversky 0.5/0.5 is Dice
    half = MIPLoss(mode="binary", projection_weight=0.5, reduction="none")(x, y)
    volume = build_loss("dice", mode="binary", reduction="none")(x, y)
    full = MIPLoss(mode="binary", reduction="none")(x, y)
    torch.testing.assert_close(half - volume, (full - volume) / 2)


def test_ignored_pixels_never_win_a_maximum():
    """Ignored columns project to 0 in both maps, so they add nothing: here ignoring equals
    slicing, for the volume term and for projections along the other axis."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 6, 6), generator=g)
    y_ignored = y.clone()
    y_ignored[:, :, 4:] = 255
    got = MIPLoss(ignore_index=255, axes=[0], reduction="none")(x, y_ignored)
    sliced = MIPLoss(axes=[0], reduction="none")(x[..., :4], y[..., :4])
    torch.testing.assert_close(got, sliced)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="`base` must name a dense loss"):
        MIPLoss(base="cross_entropy")
    with pytest.raises(ValueError, match="`base` must name a dense loss"):
        MIPLoss(base="skeleton_recall")
    with pytest.raises(ValueError, match="base_kwargs"):
        MIPLoss(base_kwargs={"mode": "binary"})
    with pytest.raises(ValueError, match="axes"):
        MIPLoss(axes=[2])(torch.randn(2, 2, 5, 5), torch.randint(0, 2, (2, 5, 5)))
    with pytest.raises(ValueError, match="input"):
        MIPLoss()(torch.randn(2, 2, 5), torch.randint(0, 2, (2, 5)))


def test_mip_loss_reads_nothing_back_to_the_host():
    x = torch.randn(2, 2, 4, 5, 6, requires_grad=True)
    y = torch.randint(0, 2, (2, 4, 5, 6))
    with no_host_sync():
        MIPLoss()(x, y).backward()
    assert torch.isfinite(x.grad).all()
