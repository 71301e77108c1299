"""k-reciprocal re-ranking and average query expansion against naive float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_losses.metrics.reranking import average_query_expansion, k_reciprocal_rerank


def naive_rerank(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al. 2017, Eqs. 4-12, with Python sets and loops in float64."""
    q_g, q_q, g_g = (np.asarray(a, dtype=np.float64) for a in (q_g, q_q, g_g))
    nq, ng = q_g.shape
    n = nq + ng
    d = np.block([[q_q, q_g], [q_g.T, g_g]])
    d = d / d.max(axis=1, keepdims=True)
    order = [sorted(range(n), key=lambda j, i=i: (d[i, j], j)) for i in range(n)]

    def nbhd(i, k):
        return set(order[i][: k + 1])

    def recip(i, k):
        return {j for j in nbhd(i, k) if i in nbhd(j, k)}

    half = round(k1 / 2)
    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        star = set(r)
        for q in r:
            rq = recip(q, half)
            if len(r & rq) >= 2 / 3 * len(rq):
                star |= rq
        for j in star:
            v[i, j] = math.exp(-d[i, j])
        v[i] /= v[i].sum()
    v = np.stack([np.mean([v[j] for j in order[i][:k2]], axis=0) for i in range(n)])
    out = np.zeros((nq, ng))
    for p in range(nq):
        for g in range(ng):
            a, b = v[p], v[nq + g]
            jac = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[p, g] = (1 - lam) * jac + lam * d[p, nq + g]
    return out


def clustered(nq=6, ng=40, dim=5, ids=8, seed=0):
    """Features around a few centres, so that reciprocal neighbourhoods are not trivial."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids, dim, generator=g, dtype=torch.float64) * 2
    qi = torch.randint(ids, (nq,), generator=g)
    gi = torch.randint(ids, (ng,), generator=g)
    q = centres[qi] + torch.randn(nq, dim, generator=g, dtype=torch.float64)
    gal = centres[gi] + torch.randn(ng, dim, generator=g, dtype=torch.float64)
    return q, gal


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (7, 3, 0.5), (5, 1, 0.0)])
def test_rerank_equals_the_naive_reference(k1, k2, lam):
    q, g = clustered()
    dists = (torch.cdist(q, g) ** 2, torch.cdist(q, q) ** 2, torch.cdist(g, g) ** 2)
    ours = k_reciprocal_rerank(*dists, k1=k1, k2=k2, lambda_value=lam, chunk_size=7)
    ref = naive_rerank(*dists, k1, k2, lam)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_expansion_actually_happens_in_the_test_case():
    # guard for the reference test: R* differs from R somewhere, so that branch is compared
    q, g = clustered()
    d = torch.cdist(torch.cat([q, g]), torch.cat([q, g]))
    rank = torch.argsort(d / d.amax(1, keepdim=True), dim=1, stable=True)
    near = torch.zeros_like(d, dtype=torch.bool).scatter_(1, rank[:, :8], True)
    near_half = torch.zeros_like(d, dtype=torch.bool).scatter_(1, rank[:, :5], True)
    recip, recip_half = near & near.T, near_half & near_half.T
    grows = 0
    for i in range(len(d)):
        r = set(torch.nonzero(recip[i]).flatten().tolist())
        for c in r:
            rc = set(torch.nonzero(recip_half[c]).flatten().tolist())
            grows += len(r & rc) >= 2 / 3 * len(rc) and not rc <= r
    assert grows > 0


def test_numpy_in_numpy_out_and_lambda_one_is_the_scaled_distance():
    q, g = clustered(seed=1)
    qg, qq, gg = (torch.cdist(a, b).numpy() for a, b in ((q, g), (q, q), (g, g)))
    out = k_reciprocal_rerank(qg, qq, gg, k1=5, k2=2, lambda_value=1.0)
    assert isinstance(out, np.ndarray) and out.shape == qg.shape
    full_max = np.maximum(qq.max(1), qg.max(1))
    np.testing.assert_allclose(out, qg / full_max[:, None], rtol=1e-12)


def test_float32_input_close_to_float64():
    q, g = clustered(seed=2)
    dists = [torch.cdist(a, b) for a, b in ((q, g), (q, q), (g, g))]
    ref = k_reciprocal_rerank(*dists, k1=6, k2=3)
    out = k_reciprocal_rerank(*(x.float() for x in dists), k1=6, k2=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_rerank_errors_name_the_argument():
    qg, qq, gg = torch.rand(2, 5), torch.rand(2, 2), torch.rand(5, 5)
    with pytest.raises(ValueError, match="q_q"):
        k_reciprocal_rerank(qg, torch.rand(3, 3), gg)
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal_rerank(qg, qq, gg, k1=7)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(qg, qq, gg, k1=3, lambda_value=1.5)
    with pytest.raises(TypeError, match="q_g"):
        k_reciprocal_rerank([[0.0]], qq, gg)


def test_aqe_equals_the_naive_mean_of_neighbours():
    q, g = clustered(nq=4, ng=12, seed=3)
    out = average_query_expansion(q, g, k=3)
    for i in range(4):
        qi = q[i] / q[i].norm()
        gn = g / g.norm(dim=1, keepdim=True)
        near = sorted(range(12), key=lambda j: -float(gn[j] @ qi))[:3]
        ref = qi + sum(gn[j] for j in near)
        torch.testing.assert_close(out[i], ref / ref.norm(), rtol=1e-12, atol=1e-12)
    euclid = average_query_expansion(q.numpy(), g.numpy(), k=2, metric="euclidean")
    assert isinstance(euclid, np.ndarray)
    np.testing.assert_allclose(np.linalg.norm(euclid, axis=1), 1.0)


def test_aqe_errors():
    with pytest.raises(ValueError, match="feature size"):
        average_query_expansion(torch.rand(2, 3), torch.rand(4, 5))
    with pytest.raises(ValueError, match="`k`"):
        average_query_expansion(torch.rand(2, 3), torch.rand(4, 3), k=5)
    with pytest.raises(ValueError, match="metric"):
        average_query_expansion(torch.rand(2, 3), torch.rand(4, 3), k=2, metric="l1")
