"""Pair-based metric-learning losses: naive float64 references, pytorch-metric-learning side by
side, anchors without pairs, low precision, memory and host reads.

The references loop over anchors and pairs with scalar float64 tensor operations, written from
the papers' formulas and independent of the library's masked matrix code (distances are taken
as norms of differences, not from a Gram matrix).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_losses import build_loss
from lightning_losses.losses.metric import (
    AlignUniformLoss,
    CircleLoss,
    NTXentLoss,
    SupConLoss,
    TripletLoss,
)
from lightning_losses.testing import no_host_sync

PAIR_LOSSES = ("triplet", "circle", "supcon", "nt_xent", "align_uniform")


def _embeddings(n=12, d=6, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype)


def _labels(n=12, per_identity=3):
    """Identities of ``per_identity`` consecutive samples, the last one a singleton."""
    y = torch.arange(n) // per_identity
    y[-1] = n  # an identity seen once: no positive for that anchor
    return y


# -- naive references ------------------------------------------------------------------------


def _unit(v):
    return v / v.norm()


def _dist(a, b, distance, normalize=False):
    if normalize:
        a, b = _unit(a), _unit(b)
    if distance == "euclidean":
        return (a - b).norm()
    if distance == "sqeuclidean":
        return ((a - b) ** 2).sum()
    return 1.0 - (_unit(a) * _unit(b)).sum()


def _positives_negatives(y, i):
    n = len(y)
    pos = [j for j in range(n) if j != i and y[j] == y[i]]
    neg = [j for j in range(n) if y[j] != y[i]]
    return pos, neg


def triplet_reference(x, y, margin=0.3, mining="hard", distance="euclidean", normalize=False):
    out = []
    for i in range(len(y)):
        pos, neg = _positives_negatives(y, i)
        if not pos or not neg:
            out.append(x.new_zeros(()))
            continue
        dp = torch.stack([_dist(x[i], x[p], distance, normalize) for p in pos])
        dn = torch.stack([_dist(x[i], x[k], distance, normalize) for k in neg])
        if mining == "hard":
            d_pos, d_neg = dp.max(), dn.min()
        else:  # softmax weights exp(d) over positives, exp(-d) over negatives
            d_pos = (dp.exp() * dp).sum() / dp.exp().sum()
            d_neg = ((-dn).exp() * dn).sum() / (-dn).exp().sum()
        gap = d_pos - d_neg
        out.append(torch.log1p(gap.exp()) if margin == "soft" else (gap + margin).clamp_min(0))
    return torch.stack(out)


def _cos(a, b):
    return (_unit(a) * _unit(b)).sum()


def circle_reference(x, y, m=0.25, gamma=128.0):
    out = []
    for i in range(len(y)):
        pos, neg = _positives_negatives(y, i)
        if not pos or not neg:
            out.append(x.new_zeros(()))
            continue
        sum_p = x.new_zeros(())
        for p in pos:
            s = _cos(x[i], x[p])
            alpha = max(0.0, 1.0 + m - s.item())  # detached
            sum_p = sum_p + torch.exp(-gamma * alpha * (s - (1.0 - m)))
        sum_n = x.new_zeros(())
        for k in neg:
            s = _cos(x[i], x[k])
            alpha = max(0.0, s.item() + m)
            sum_n = sum_n + torch.exp(gamma * alpha * (s - m))
        out.append(torch.log1p(sum_n * sum_p))
    return torch.stack(out)


def supcon_reference(x, y, tau=0.1, relu=False):
    z = x.clamp_min(0) if relu else x
    out = []
    for i in range(len(y)):
        pos, _ = _positives_negatives(y, i)
        if not pos:
            out.append(x.new_zeros(()))
            continue
        denominator = sum(torch.exp(_cos(z[i], z[a]) / tau) for a in range(len(y)) if a != i)
        terms = [torch.log(torch.exp(_cos(z[i], z[p]) / tau) / denominator) for p in pos]
        out.append(-sum(terms) / len(pos))
    return torch.stack(out)


def ntxent_reference(x, y, tau=0.1):
    out = []
    for i in range(len(y)):
        pos, neg = _positives_negatives(y, i)
        if not pos:
            out.append(x.new_zeros(()))
            continue
        negatives = sum((torch.exp(_cos(x[i], x[k]) / tau) for k in neg), x.new_zeros(()))
        terms = []
        for p in pos:
            e = torch.exp(_cos(x[i], x[p]) / tau)
            terms.append(-torch.log(e / (e + negatives)))
        out.append(sum(terms) / len(pos))
    return torch.stack(out)


def align_uniform_reference(x, y, alpha=2.0, t=2.0):
    f = [_unit(v) for v in x]
    n = len(y)
    total, count = x.new_zeros(()), 0
    for i in range(n):
        for j in range(n):
            if y[i] != y[j]:
                total = total + torch.exp(-t * ((f[i] - f[j]) ** 2).sum())
                count += 1
    uniform = torch.log(total / count)
    out = []
    for i in range(n):
        pos, _ = _positives_negatives(y, i)
        align = sum(((f[i] - f[p]).norm() ** alpha for p in pos), x.new_zeros(())) / max(
            1, len(pos)
        )
        out.append(align + uniform)
    return torch.stack(out)


def _values_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    values = fn(x)
    values.sum().backward()
    return values.detach(), x.grad


def _check_against(loss, reference, x, y):
    ours, g_ours = _values_and_grad(lambda e: loss(e, y), x)
    ref, g_ref = _values_and_grad(lambda e: reference(e, y), x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("distance", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("mining", ["hard", "weighted"])
@pytest.mark.parametrize("margin", [0.3, "soft"])
def test_triplet_matches_the_formula(distance, mining, margin):
    x, y = _embeddings(), _labels()
    loss = TripletLoss(margin, mining=mining, distance=distance, reduction="none")
    _check_against(
        loss, lambda e, t: triplet_reference(e, t.tolist(), margin, mining, distance), x, y
    )


def test_triplet_normalized_is_fast_reid_cosine():
    """fast-reid's normalised distance 2 - 2 cos is the squared distance of unit vectors."""
    x, y = _embeddings(), _labels()
    loss = TripletLoss(distance="sqeuclidean", normalize=True, reduction="none")
    _check_against(
        loss,
        lambda e, t: triplet_reference(e, t.tolist(), 0.3, "hard", "sqeuclidean", True),
        x,
        y,
    )
    cosine = TripletLoss(margin=0.6, distance="cosine", reduction="none")(x, y)
    torch.testing.assert_close(2 * cosine, TripletLoss(1.2, **_fast_reid_cosine())(x, y))


def _fast_reid_cosine():
    return dict(distance="sqeuclidean", normalize=True, reduction="none")


@pytest.mark.parametrize(("m", "gamma"), [(0.25, 128.0), (0.4, 80.0), (0.25, 32.0)])
def test_circle_matches_the_formula(m, gamma):
    x, y = _embeddings(), _labels()
    loss = CircleLoss(m, gamma, reduction="none")
    _check_against(loss, lambda e, t: circle_reference(e, t.tolist(), m, gamma), x, y)


@pytest.mark.parametrize("relu", [False, True])
def test_supcon_matches_the_formula(relu):
    x, y = _embeddings(), _labels()
    loss = SupConLoss(0.1, relu=relu, reduction="none")
    _check_against(loss, lambda e, t: supcon_reference(e, t.tolist(), 0.1, relu), x, y)


def test_nt_xent_matches_the_formula():
    x, y = _embeddings(), _labels()
    _check_against(
        NTXentLoss(0.1, reduction="none"), lambda e, t: ntxent_reference(e, t.tolist()), x, y
    )


def test_nt_xent_in_simclr_setting_is_the_mean_over_2n_views():
    """Two views per image: the 2N x 2N similarity matrix, each row a (2N-1)-way softmax."""
    n = 5
    x = _embeddings(2 * n, 4)
    y = torch.arange(n).repeat(2)
    z = torch.nn.functional.normalize(x, dim=1)
    logits = z @ z.T / 0.5
    logits.fill_diagonal_(-math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    expected = torch.nn.functional.cross_entropy(logits, partner)
    torch.testing.assert_close(NTXentLoss(0.5)(x, y), expected)
    # with one positive per anchor SupCon and NT-Xent coincide
    torch.testing.assert_close(SupConLoss(0.5)(x, y), expected)


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_align_uniform_matches_the_formula(alpha):
    x, y = _embeddings(), _labels()
    loss = AlignUniformLoss(alpha, 2.0, reduction="none")
    _check_against(loss, lambda e, t: align_uniform_reference(e, t.tolist(), alpha, 2.0), x, y)


def test_align_uniform_mean_is_the_papers_objective():
    """mean over anchors = L_align + L_uniform (two-view batch, one positive per anchor)."""
    n = 6
    x = _embeddings(2 * n, 5)
    y = torch.arange(n).repeat(2)
    f = torch.nn.functional.normalize(x, dim=1)
    align = (f[:n] - f[n:]).norm(dim=1).pow(2).mean()
    sq = torch.cdist(f, f).pow(2)
    different = y[:, None] != y[None, :]
    uniform = torch.log(torch.exp(-2 * sq[different]).mean())
    torch.testing.assert_close(AlignUniformLoss()(x, y), align + uniform)
    weighted = AlignUniformLoss(align_weight=0.5, uniform_weight=2.0)(x, y)
    torch.testing.assert_close(weighted, 0.5 * align + 2.0 * uniform)


# -- pytorch-metric-learning side by side -----------------------------------------------------

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402
from pytorch_metric_learning.distances import LpDistance  # noqa: E402
from pytorch_metric_learning.reducers import DoNothingReducer  # noqa: E402


def _pml_per_element(loss_fn, x, y, indices_tuple=None):
    out = loss_fn(x, y, indices_tuple)["loss"]
    return out["losses"], out["indices"]


@pytest.mark.parametrize("smooth", [False, True])
def test_triplet_batch_hard_agrees_with_pml_per_anchor(smooth):
    """Same per-anchor values and gradients; PML averages over non-zero triplets, we over all
    anchors (the paper's and fast-reid's mean)."""
    x, y = _embeddings().requires_grad_(True), _labels()
    dist = LpDistance(normalize_embeddings=False)
    margin = 0.0 if smooth else 0.3
    miner = pml_miners.BatchHardMiner(distance=dist)
    pml_loss = pml_losses.TripletMarginLoss(
        margin=margin, smooth_loss=smooth, distance=dist, reducer=DoNothingReducer()
    )
    triplets = miner(x, y)
    per_triplet, (anchors, _, _) = _pml_per_element(pml_loss, x, y, triplets)
    ours = TripletLoss("soft" if smooth else 0.3, reduction="none")(x, y)
    # PML lists the anchors with a positive and a negative; the others are our zeros
    assert anchors.tolist() == [i for i in range(12) if i != 11]
    torch.testing.assert_close(ours[anchors], per_triplet)
    assert ours[11] == 0
    g_pml = torch.autograd.grad(per_triplet.sum(), x)[0]
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    torch.testing.assert_close(g_ours, g_pml)
    # the reductions differ: PML's AvgNonZeroReducer divides by the non-zero triplets
    default = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=smooth, distance=dist)
    nonzero = (per_triplet > 0).sum()
    torch.testing.assert_close(default(x, y, triplets), per_triplet.sum() / nonzero)
    torch.testing.assert_close(TripletLoss("soft" if smooth else 0.3)(x, y), ours.sum() / 12)


def test_triplet_cosine_agrees_with_pml_cosine_similarity():
    from pytorch_metric_learning.distances import CosineSimilarity

    x, y = _embeddings(), _labels()
    sim = CosineSimilarity()
    triplets = pml_miners.BatchHardMiner(distance=sim)(x, y)
    pml_loss = pml_losses.TripletMarginLoss(margin=0.2, distance=sim, reducer=DoNothingReducer())
    per_triplet, (anchors, _, _) = _pml_per_element(pml_loss, x, y, triplets)
    ours = TripletLoss(0.2, distance="cosine", reduction="none")(x, y)
    torch.testing.assert_close(ours[anchors], per_triplet)


def test_triplet_pml_defaults_differ():
    """PML's TripletMarginLoss defaults to a 0.05 margin on L2-normalised embeddings."""
    x, y = _embeddings(scale=3.0), _labels()
    triplets = pml_miners.BatchHardMiner()(x, y)
    pml_default = pml_losses.TripletMarginLoss(reducer=DoNothingReducer())
    per_triplet, (anchors, _, _) = _pml_per_element(pml_default, x, y, triplets)
    same = TripletLoss(0.05, distance="euclidean", normalize=True, reduction="none")(x, y)
    torch.testing.assert_close(same[anchors], per_triplet)
    ours_default = TripletLoss(reduction="none")(x, y)
    assert not torch.allclose(ours_default[anchors], per_triplet)


@pytest.mark.parametrize(("m", "gamma"), [(0.25, 128.0), (0.4, 80.0)])
def test_circle_agrees_with_pml_per_anchor(m, gamma):
    x, y = _embeddings().requires_grad_(True), _labels()
    per_anchor, _ = _pml_per_element(
        pml_losses.CircleLoss(m=m, gamma=gamma, reducer=DoNothingReducer()), x, y
    )
    per_anchor = per_anchor.squeeze(1)  # PML keeps a trailing dim
    ours = CircleLoss(m, gamma, reduction="none")(x, y)
    torch.testing.assert_close(ours, per_anchor)
    g_pml = torch.autograd.grad(per_anchor.sum(), x)[0]
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    torch.testing.assert_close(g_ours, g_pml)


def test_circle_pml_defaults_and_reduction_differ():
    x, y = _embeddings(), _labels()
    pml_default = pml_losses.CircleLoss()  # m = 0.4, gamma = 80, mean over non-zero anchors
    ours = CircleLoss(0.4, 80.0, reduction="none")(x, y)
    torch.testing.assert_close(pml_default(x, y), ours.sum() / (ours > 0).sum())
    torch.testing.assert_close(CircleLoss(0.4, 80.0)(x, y), ours.sum() / 12)
    assert not torch.allclose(CircleLoss()(x, y), CircleLoss(0.4, 80.0)(x, y))


def test_supcon_agrees_with_pml_per_anchor():
    x, y = _embeddings().requires_grad_(True), _labels()
    per_anchor, _ = _pml_per_element(
        pml_losses.SupConLoss(temperature=0.1, reducer=DoNothingReducer()), x, y
    )
    ours = SupConLoss(0.1, reduction="none")(x, y)
    torch.testing.assert_close(ours, per_anchor)
    g_pml = torch.autograd.grad(per_anchor.sum(), x)[0]
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    torch.testing.assert_close(g_ours, g_pml)
    # PML's mean skips the anchor without a positive (11 of 12); ours counts every anchor
    torch.testing.assert_close(pml_losses.SupConLoss(0.1)(x, y), ours.sum() / 11)
    torch.testing.assert_close(SupConLoss(0.1)(x, y), ours.sum() / 12)


def test_nt_xent_agrees_with_pml_on_two_views():
    """Two views per source: one positive per anchor, per-pair = per-anchor."""
    n = 6
    x = _embeddings(2 * n, 5).requires_grad_(True)
    y = torch.arange(n).repeat(2)
    per_pair, (a, _) = _pml_per_element(
        pml_losses.NTXentLoss(temperature=0.1, reducer=DoNothingReducer()), x, y
    )
    ours = NTXentLoss(0.1, reduction="none")(x, y)
    torch.testing.assert_close(ours[a], per_pair)
    torch.testing.assert_close(NTXentLoss(0.1)(x, y), pml_losses.NTXentLoss(0.1)(x, y))
    g_pml = torch.autograd.grad(per_pair.sum(), x)[0]
    g_ours = torch.autograd.grad(ours.sum(), x)[0]
    torch.testing.assert_close(g_ours, g_pml)


def test_nt_xent_reduction_differs_from_pml_with_unequal_positives():
    """PML averages over positive pairs; we average each anchor's pairs, then the anchors."""
    x = _embeddings(7, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # anchors with 2 and with 1 positive
    per_pair, (a, _) = _pml_per_element(
        pml_losses.NTXentLoss(temperature=0.1, reducer=DoNothingReducer()), x, y
    )
    per_anchor = torch.zeros(7, dtype=x.dtype).index_add(0, a, per_pair)
    per_anchor = per_anchor / torch.bincount(a, minlength=7).to(x.dtype)
    ours = NTXentLoss(0.1, reduction="none")(x, y)
    torch.testing.assert_close(ours, per_anchor)
    assert not torch.allclose(ours.mean(), per_pair.mean())
    torch.testing.assert_close(pml_losses.NTXentLoss(0.1)(x, y), per_pair.mean())


# -- anchors without a valid pair -------------------------------------------------------------


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_no_positive_anchors_give_zero_and_are_counted(name):
    x = _embeddings(6, 4).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 2, 3, 3])  # anchors 2 and 3 have no positive
    loss = build_loss(name, reduction="none")
    values = loss(x, y)
    assert loss.last_invalid_anchors.dtype == torch.long
    assert int(loss.last_invalid_anchors) == 2
    if name != "align_uniform":  # its uniformity term is a batch statistic every anchor carries
        assert values[2] == 0 and values[3] == 0
        assert (values[[0, 1, 4, 5]] > 0).all()
    values.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_a_batch_without_any_pair_gives_zero_with_a_count_and_one_warning(name):
    x = _embeddings(5, 4).requires_grad_(True)
    y = torch.arange(5)  # every identity once
    loss = build_loss(name)
    value = loss(x, y)
    value.backward()
    if name != "align_uniform":
        assert value == 0
        assert (x.grad == 0).all()
    assert torch.isfinite(x.grad).all()
    assert int(loss.last_invalid_anchors) == 5
    loss(x, y)
    assert int(loss.invalid_anchors_seen) == 10
    with pytest.warns(UserWarning, match="10 anchors had no valid positive"):
        assert loss.warn_invalid_anchors() == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loss.warn_invalid_anchors() == 10  # warns once
    loss.reset_invalid_anchors()
    loss(x[:4], torch.tensor([0, 0, 1, 1]))
    assert int(loss.invalid_anchors_seen) == 0 and int(loss.last_invalid_anchors) == 0


def test_triplet_anchor_without_negative_is_counted():
    x = _embeddings(4, 3)
    loss = TripletLoss(reduction="none")
    values = loss(x, torch.zeros(4, dtype=torch.long))  # one identity: no negatives
    assert (values == 0).all() and int(loss.last_invalid_anchors) == 4


def test_counts_are_not_saved_in_checkpoints():
    loss = TripletLoss()
    assert "last_invalid_anchors" not in loss.state_dict()
    assert dict(loss.named_buffers())["invalid_anchors_seen"].dtype == torch.long


# -- low precision ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIR_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings_stay_finite_and_close(name, dtype):
    """Squared distances of these embeddings (~1e6) overflow fp16, and fp16/bf16 sentinels of
    1e9 would be inf: the losses compute in float32 with finfo sentinels."""
    x = _embeddings(10, 8, scale=300.0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 5])
    low = x.to(dtype).requires_grad_(True)
    loss = build_loss(name, reduction="none")
    values = loss(low, y)
    assert values.dtype == torch.float32
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(low.grad.float()).all()
    reference = build_loss(name, reduction="none")(low.detach().double(), y)
    torch.testing.assert_close(values.double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_autocast_keeps_the_pair_matrix_in_float32(name):
    """Under bf16 autocast the Gram matrix would be a bf16 matmul; it is computed in float32."""
    x = _embeddings(10, 8, scale=2.0, dtype=torch.float32)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    loss = build_loss(name, reduction="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(x, y)
    torch.testing.assert_close(low.double(), loss(x.double(), y), rtol=1e-5, atol=1e-5)


# -- memory -----------------------------------------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("triplet", {}), ("triplet", {"mining": "weighted"})] + [(n, {}) for n in PAIR_LOSSES[1:]],
)
def test_memory_is_one_pair_matrix_never_triplets(name, kwargs):
    """Forward and backward at N = 256 allocate nothing larger than the N x N pair matrix
    (N^3 = 16.7M elements would be a triplet tensor, N^2 = 65,536)."""
    n = 256
    x = _embeddings(n, 16, dtype=torch.float32).requires_grad_(True)
    y = torch.arange(n) // 4
    loss = build_loss(name, **kwargs)
    with _LargestTensor() as probe:
        loss(x, y).backward()
    assert probe.largest <= n * n, probe.largest


def test_triplet_at_a_batch_where_triplet_lists_would_not_fit():
    """N = 2048: all (a, p, n) triplets of 4-per-identity batches are ~2048 * 3 * 2044 = 12.6M
    index triples (PML materialises them for "all" triplets); the batch-hard loss uses one
    2048 x 2048 matrix and returns at once."""
    n = 2048
    x = _embeddings(n, 32, dtype=torch.float32).requires_grad_(True)
    y = torch.arange(n) // 4
    loss = TripletLoss(mining="weighted")
    with _LargestTensor() as probe:
        loss(x, y).backward()
    assert probe.largest <= n * n
    assert torch.isfinite(x.grad).all()


CHUNKED = [
    ("triplet", {}),
    ("triplet", {"mining": "weighted", "margin": "soft"}),
    ("circle", {}),
    ("supcon", {"relu": True}),
    ("nt_xent", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), CHUNKED)
def test_chunks_give_the_same_values_and_gradients(name, kwargs):
    x, y = _embeddings(11, 5), torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5])
    whole = build_loss(name, reduction="none", **kwargs)
    chunked = build_loss(name, reduction="none", chunk_size=4, **kwargs)
    ours, g_ours = _values_and_grad(lambda e: chunked(e, y), x)
    ref, g_ref = _values_and_grad(lambda e: whole(e, y), x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    assert int(chunked.last_invalid_anchors) == 2


@pytest.mark.parametrize(("name", "kwargs"), CHUNKED)
def test_chunks_bound_the_largest_tensor(name, kwargs):
    """With blocks of 32 anchors at N = 256 nothing reaches 32 x 256 x 2 elements in the
    forward or the backward (the N x N matrix would be 65,536)."""
    n, chunk = 256, 32
    x = _embeddings(n, 16, dtype=torch.float32).requires_grad_(True)
    y = torch.arange(n) // 4
    loss = build_loss(name, chunk_size=chunk, **kwargs)
    with _LargestTensor() as probe:
        loss(x, y).backward()
    assert probe.largest <= chunk * n, probe.largest


def test_chunk_size_is_checked_and_not_offered_by_batch_statistics():
    with pytest.raises(ValueError, match="`chunk_size` must be an integer >= 1"):
        TripletLoss(chunk_size=0)
    with pytest.raises(TypeError, match=r"unknown option.*chunk_size"):
        build_loss("align_uniform", chunk_size=8)


# -- host reads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("triplet", {}),
        ("triplet", {"margin": "soft", "mining": "weighted", "distance": "cosine"}),
        ("triplet", {"distance": "sqeuclidean", "normalize": True, "gather_across_ranks": True}),
        ("circle", {"gather_across_ranks": True}),
        ("supcon", {"relu": True}),
        ("nt_xent", {"chunk_size": 3}),
        ("align_uniform", {"alpha": 1.0}),
    ],
)
@pytest.mark.parametrize("validate_args", [False, True])
def test_no_host_reads_even_with_invalid_anchors(name, kwargs, validate_args):
    x = _embeddings(8, 5, dtype=torch.float32).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])  # anchors without positives
    loss = build_loss(name, validate_args=validate_args, **kwargs)
    loss(x, y)
    with no_host_sync():
        value = loss(x, y, sample_weight=torch.rand(8))
        value.backward()


# -- options and errors -----------------------------------------------------------------------


def test_gather_is_a_no_op_outside_a_process_group():
    x, y = _embeddings(), _labels()
    for name in PAIR_LOSSES:
        torch.testing.assert_close(
            build_loss(name, gather_across_ranks=True)(x, y), build_loss(name)(x, y)
        )


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_bad_input_is_a_clear_error(name):
    loss = build_loss(name)
    x, y = _embeddings(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"`input` must be embeddings of shape \(N, D\)"):
        loss(x[:, 0], y)
    with pytest.raises(ValueError, match=r"`target` must hold one label per embedding.*\(5,\)"):
        loss(x, y[:5])
    with pytest.raises(TypeError, match="`target` must hold integer labels"):
        loss(x, y.double())
    with pytest.raises(TypeError, match="`input` must be floating-point"):
        loss(x.long(), y)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="`distance` must be one of"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match="`mining` must be one of"):
        TripletLoss(mining="semihard")
    with pytest.raises(ValueError, match="`margin` must be one of 'soft'"):
        TripletLoss(margin="hard")
    with pytest.raises(ValueError, match="`margin` must lie in"):
        CircleLoss(margin=1.5)
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        SupConLoss(temperature=0.0)


def test_defaults_follow_their_sources():
    assert TripletLoss().margin == 0.3
    assert (CircleLoss().margin, CircleLoss().gamma) == (0.25, 128.0)
    assert SupConLoss().temperature == 0.1 and NTXentLoss().temperature == 0.1
    assert (AlignUniformLoss().alpha, AlignUniformLoss().t) == (2.0, 2.0)


@pytest.mark.compile
@pytest.mark.parametrize("name", ["triplet", "supcon"])
def test_compiles_without_graph_breaks(name):
    """No data-dependent branch, host read or untraceable mutation: fullgraph compiles, and the
    invalid-anchor count (a buffer updated in place) is kept."""
    torch._dynamo.reset()
    x = _embeddings(8, 5, dtype=torch.float32)
    y = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4])
    loss = build_loss(name, reduction="none")
    compiled = torch.compile(loss, fullgraph=True)
    torch.testing.assert_close(compiled(x, y), loss(x, y), rtol=1e-5, atol=1e-6)
    loss.last_invalid_anchors.zero_()
    compiled(x, y)
    assert int(loss.last_invalid_anchors) == 2  # set by the compiled call
