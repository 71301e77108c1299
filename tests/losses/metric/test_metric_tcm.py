"""Threshold-consistent margin: a float64 loop over pairs written from the paper's formula,
pytorch-metric-learning's ``ThresholdConsistentMarginLoss`` side by side, per-anchor shares,
empty hard sets, host reads and errors."""

from __future__ import annotations

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import ThresholdConsistentMarginLoss
from lightning_losses.testing import no_host_sync


def _embeddings(n=12, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


def _labels():
    return torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])


def tcm_reference(x, y, lp=1.0, lm=1.0, mp=0.9, mm=0.5):
    """The batch value: mean of (m+ - s) over the hard positive pairs plus mean of (s - m-)
    over the hard negative pairs (ordered pairs, each a scalar float64 computation)."""
    unit = [v / v.norm() for v in x]
    pos_sum, pos_count, neg_sum, neg_count = x.new_zeros(()), 0, x.new_zeros(()), 0
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            s = (unit[i] * unit[j]).sum()
            if y[i] == y[j] and s <= mp:
                pos_sum, pos_count = pos_sum + (mp - s), pos_count + 1
            elif y[i] != y[j] and s >= mm:
                neg_sum, neg_count = neg_sum + (s - mm), neg_count + 1
    pos = pos_sum / pos_count if pos_count else x.new_zeros(())
    neg = neg_sum / neg_count if neg_count else x.new_zeros(())
    return lp * pos + lm * neg


@pytest.mark.parametrize(
    ("lp", "lm", "mp", "mm"), [(1.0, 1.0, 0.9, 0.5), (0.5, 2.0, 0.7, 0.1), (1.0, 1.0, 0.9, -0.2)]
)
def test_mean_matches_the_formula_with_gradients(lp, lm, mp, mm):
    x, y = _embeddings(), _labels()
    loss = ThresholdConsistentMarginLoss(lp, lm, mp, mm)
    ours_x = x.clone().requires_grad_(True)
    ref_x = x.clone().requires_grad_(True)
    ours, ref = loss(ours_x, y), tcm_reference(ref_x, y, lp, lm, mp, mm)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-10, atol=1e-13)


def test_per_anchor_values_are_shares_of_the_batch_sums():
    """value_a = N * (lambda+ * sum_j hard_pos_aj / H+ + lambda- * sum_j hard_neg_aj / H-)."""
    x, y = _embeddings(), _labels()
    z = torch.nn.functional.normalize(x, dim=1)
    s = z @ z.T
    same = y[:, None] == y[None, :]
    eye = torch.eye(12, dtype=torch.bool)
    hard_pos = same & ~eye & (s <= 0.9)
    hard_neg = ~same & (s >= 0.5)
    pos = torch.where(hard_pos, 0.9 - s, 0.0).sum(1) / hard_pos.sum()
    neg = torch.where(hard_neg, s - 0.5, 0.0).sum(1) / hard_neg.sum()
    values = ThresholdConsistentMarginLoss(reduction="none")(x, y)
    torch.testing.assert_close(values, 12 * (pos + neg))


def test_no_hard_pair_gives_zero():
    """Tight identities far apart: no positive below m+ and no negative above m-."""
    base = torch.eye(4, dtype=torch.float64)
    x = torch.cat([base, base + 0.01])  # each identity's two samples almost equal
    y = torch.arange(4).repeat(2)
    x = x.requires_grad_(True)
    value = ThresholdConsistentMarginLoss()(x, y)
    value.backward()
    assert value == 0 and (x.grad == 0).all()


def test_singletons_are_counted_only_when_they_have_no_pair_at_all():
    x = _embeddings(5, 3)
    loss = ThresholdConsistentMarginLoss(reduction="none")
    loss(x, torch.arange(5))  # no positive anywhere, but negatives: every anchor is valid
    assert int(loss.last_invalid_anchors) == 0
    loss(x[:1], torch.zeros(1, dtype=torch.long))
    assert int(loss.last_invalid_anchors) == 1


pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402


@pytest.mark.parametrize(("mp", "mm"), [(0.9, 0.5), (0.6, 0.0)])
def test_agrees_with_pml(mp, mm):
    """PML's ThresholdConsistentMarginLoss returns the batch value: same value and gradient."""
    x, y = _embeddings(), _labels()
    ours_x = x.clone().requires_grad_(True)
    pml_x = x.clone().requires_grad_(True)
    ours = ThresholdConsistentMarginLoss(margin_plus=mp, margin_minus=mm)(ours_x, y)
    theirs = pml_losses.ThresholdConsistentMarginLoss(margin_plus=mp, margin_minus=mm)(pml_x, y)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_x.grad, pml_x.grad)


@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads(validate_args):
    x = _embeddings(12, 5, dtype=torch.float32).requires_grad_(True)
    loss = build_loss("tcm", validate_args=validate_args, gather_across_ranks=True)
    loss(x, _labels())
    with no_host_sync():
        loss(x, _labels(), sample_weight=torch.rand(12)).backward()


def test_bad_options_and_input_are_clear_errors():
    with pytest.raises(ValueError, match="`margin_plus` must lie in"):
        ThresholdConsistentMarginLoss(margin_plus=1.5)
    with pytest.raises(ValueError, match="`lambda_minus` must be >= 0"):
        ThresholdConsistentMarginLoss(lambda_minus=-1.0)
    with pytest.raises(TypeError, match=r"unknown option.*chunk_size"):
        build_loss("tcm", chunk_size=4)
    with pytest.raises(ValueError, match=r"`input` must be embeddings of shape \(N, D\)"):
        ThresholdConsistentMarginLoss()(torch.randn(4), torch.arange(4))


def test_defaults_follow_the_paper():
    loss = ThresholdConsistentMarginLoss()
    assert (loss.lambda_plus, loss.lambda_minus) == (1.0, 1.0)
    assert (loss.margin_plus, loss.margin_minus) == (0.9, 0.5)
