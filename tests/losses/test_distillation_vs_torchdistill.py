"""Distillation losses against torchdistill (a test-only dependency) where the definitions agree.

torchdistill's losses return the batch objective, reading tensors from ``io_dict[path][io]``;
ours return one value per sample, whose mean is compared. Where the scale conventions differ,
the test states the factor: torchdistill's ``KDLoss`` without ``alpha`` is the ``batchmean`` KL
without the ``T²`` (ours includes it), and its ``ATLoss(mode="code")`` is the plain mean of the
squared difference of the normalised maps (ours has ``β/2`` in front, so ``β = 2`` matches).
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import build_loss

mid_level = pytest.importorskip("torchdistill.losses.mid_level")


def _io(tensor: torch.Tensor, path: str = "out") -> dict:
    return {path: {"output": tensor}}


def _logits(n: int = 16, k: int = 10, seed: int = 0):
    """Student and teacher logits, and labels (ours read them for ``ignore_index`` only)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    t = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    return s, t, torch.randint(0, k, (n,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_is_t_squared_times_torchdistill_kd(temperature):
    s, t, y = _logits()
    # alpha 0: torchdistill returns the soft term alone
    theirs = mid_level.KDLoss("out", "output", "out", "output", temperature=temperature, alpha=0)
    ref = theirs(_io(s), _io(t))
    ours = build_loss("kd", temperature=temperature)(s, y, teacher_logits=t)
    torch.testing.assert_close(ours, temperature**2 * ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_torchdistill_dist(beta, gamma, tau):
    s, t, y = _logits(n=32, k=7, seed=1)
    theirs = mid_level.DISTLoss("out", "output", "out", "output", beta=beta, gamma=gamma, tau=tau)
    ref = theirs(_io(s), _io(t))
    ours = build_loss("dist", beta=beta, gamma=gamma, temperature=tau)(s, y, teacher_logits=t)
    # torchdistill adds eps = 1e-8 inside the Pearson correlation; ours does not need it here
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)


def test_attention_transfer_matches_torchdistill_code_mode():
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(6, 4, 5, 5, generator=g, dtype=torch.float64)
    ft = torch.randn(6, 9, 5, 5, generator=g, dtype=torch.float64)  # channels may differ
    pair = {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}
    theirs = mid_level.ATLoss({"pair": pair}, mode="code")
    ref = theirs(_io(fs, "s"), _io(ft, "t"))
    ours = build_loss("attention_transfer", p=2.0, beta=2.0)(fs, None, teacher_features=ft)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("wd", "wa"), [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_torchdistill_rkd(wd, wa):
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(12, 8, generator=g, dtype=torch.float64)
    ft = torch.randn(12, 16, generator=g, dtype=torch.float64)
    theirs = mid_level.RKDLoss("s", "t", dist_factor=wd, angle_factor=wa, reduction="mean")
    ref = theirs(_io(fs, "s"), _io(ft, "t"))
    ours = build_loss("rkd", distance_weight=wd, angle_weight=wa)(fs, None, teacher_features=ft)
    # torchdistill's pairwise distance expands |a|^2 + |b|^2 - 2ab (rounding of order 1e-15)
    torch.testing.assert_close(ours, torch.as_tensor(ref, dtype=ours.dtype), rtol=1e-9, atol=1e-12)
