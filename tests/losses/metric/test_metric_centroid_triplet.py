"""Centroid triplet loss: a float64 loop over anchors and classes written from the paper's
formula, anchors without a positive, chunks, low precision, host reads and errors.

pytorch-metric-learning 2.9 has no centroid triplet loss, so no side-by-side test exists.
"""

from __future__ import annotations

import pytest
import torch

from lightning_losses import build_loss
from lightning_losses.losses.metric import CentroidTripletLoss, TripletLoss
from lightning_losses.testing import no_host_sync


def _embeddings(n=12, d=5, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)


def _labels():
    # identities of 3, 3, 2 and 3 samples, and a singleton (no positive)
    return torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4])


def _distance(a, b, distance):
    if distance == "euclidean":
        return (a - b).norm()
    if distance == "sqeuclidean":
        return ((a - b) ** 2).sum()
    return 1.0 - (a / a.norm() * b / b.norm()).sum()


def centroid_triplet_reference(x, y, margin=0.3, distance="euclidean", normalize=False):
    if normalize:
        x = torch.stack([v / v.norm() for v in x])
    labels = y.tolist()
    out = []
    for a in range(len(labels)):
        positives = [j for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        others = sorted({k for k in labels if k != labels[a]})
        if not positives or not others:
            out.append(x.new_zeros(()))
            continue
        own = sum(x[j] for j in positives) / len(positives)
        centroids = [
            sum(x[j] for j in range(len(labels)) if labels[j] == k) / labels.count(k)
            for k in others
        ]
        d_pos = _distance(x[a], own, distance)
        d_neg = torch.stack([_distance(x[a], c, distance) for c in centroids]).min()
        out.append((margin + d_pos - d_neg).clamp_min(0.0))
    return torch.stack(out)


def _values_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    values = fn(x)
    values.sum().backward()
    return values.detach(), x.grad


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("margin", [0.3, 1.0])
def test_matches_the_formula(distance, normalize, margin):
    x, y = _embeddings(), _labels()
    loss = CentroidTripletLoss(margin, distance=distance, normalize=normalize, reduction="none")
    ours, g_ours = _values_and_grad(lambda e: loss(e, y), x)
    ref, g_ref = _values_and_grad(
        lambda e: centroid_triplet_reference(e, y, margin, distance, normalize), x
    )
    assert (ours > 0).sum() >= 4  # the test exercises active hinges
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-11)


def test_two_per_identity_is_triplet_with_the_mean_of_each_other_identity():
    """With K = 2 the positive centroid is the other sample itself: the loss differs from the
    batch-hard triplet loss only on the negative side (centroids instead of samples)."""
    x = _embeddings(8, 4)
    y = torch.arange(8) // 2
    ours = CentroidTripletLoss(reduction="none")(x, y)
    torch.testing.assert_close(ours, centroid_triplet_reference(x, y))
    triplet = TripletLoss(reduction="none")(x, y)
    assert not torch.allclose(ours, triplet)


def test_anchor_without_positive_or_negative_gives_zero_and_is_counted():
    x = _embeddings(6, 4).requires_grad_(True)
    loss = CentroidTripletLoss(reduction="none")
    values = loss(x, torch.tensor([0, 0, 1, 2, 3, 3]))
    assert values[2] == 0 and values[3] == 0 and int(loss.last_invalid_anchors) == 2
    values.sum().backward()
    assert torch.isfinite(x.grad).all()
    one_identity = loss(x, torch.zeros(6, dtype=torch.long))
    assert (one_identity == 0).all() and int(loss.last_invalid_anchors) == 6


def test_anchor_on_its_centroid_has_a_finite_gradient():
    """Duplicated embeddings put an anchor exactly on its positive centroid (zero distance)."""
    x = _embeddings(4, 3)
    x = torch.cat([x[:1], x[:1], x[2:]]).requires_grad_(True)
    for distance in ("euclidean", "cosine"):
        loss = CentroidTripletLoss(distance=distance)
        loss(x, torch.tensor([0, 0, 1, 1])).backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


def test_chunks_give_the_same_values_and_gradients():
    x, y = _embeddings(), _labels()
    ours, g_ours = _values_and_grad(
        lambda e: CentroidTripletLoss(chunk_size=5, reduction="none")(e, y), x
    )
    ref, g_ref = _values_and_grad(lambda e: CentroidTripletLoss(reduction="none")(e, y), x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    """Squared distances of these embeddings (~1e6) overflow float16."""
    x, y = _embeddings(12, 8, scale=300.0), _labels()
    low = x.to(dtype).requires_grad_(True)
    values = CentroidTripletLoss(reduction="none")(low, y)
    assert values.dtype == torch.float32
    values.sum().backward()
    assert torch.isfinite(low.grad.float()).all()
    reference = CentroidTripletLoss(reduction="none")(low.detach().double(), y)
    torch.testing.assert_close(values.double(), reference, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads(validate_args):
    x = _embeddings(12, 5, dtype=torch.float32).requires_grad_(True)
    loss = build_loss("centroid_triplet", validate_args=validate_args, gather_across_ranks=True)
    loss(x, _labels())
    with no_host_sync():
        loss(x, _labels(), sample_weight=torch.rand(12)).backward()


def test_bad_input_and_options_are_clear_errors():
    loss = CentroidTripletLoss()
    x, y = _embeddings(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"`input` must be embeddings of shape \(N, D\)"):
        loss(x[:, 0], y)
    with pytest.raises(ValueError, match=r"`target` must hold one label per embedding"):
        loss(x, y[:5])
    with pytest.raises(ValueError, match="`margin` must be >= 0"):
        CentroidTripletLoss(margin=-0.1)
    with pytest.raises(ValueError, match="`distance` must be one of"):
        CentroidTripletLoss(distance="manhattan")


def test_default_margin_follows_the_paper():
    assert CentroidTripletLoss().margin == 0.3
    assert CentroidTripletLoss().distance == "euclidean"
