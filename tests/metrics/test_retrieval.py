"""CMC, mAP and mINP against a naive float64 loop of the Market-1501 protocol; chunking, DDP."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses.metrics.reranking import average_query_expansion, k_reciprocal_rerank
from lightning_losses.metrics.retrieval import ReIDMetrics, pairwise_distance, reid_metrics


def naive_market(dist_qg, q_ids, q_cams, g_ids, g_cams, ranks=(1, 5, 10)):
    """Per query: rank the gallery, drop junk (id -1, same id and camera), walk the list."""
    cmc, aps, inps, skipped = [], [], [], 0
    for i in range(len(q_ids)):
        if q_ids[i] in (-1, 0):
            skipped += 1
            continue
        order = sorted(range(len(g_ids)), key=lambda j, i=i: (float(dist_qg[i][j]), j))
        kept = [
            j
            for j in order
            if g_ids[j] != -1 and not (g_ids[j] == q_ids[i] and g_cams[j] == q_cams[i])
        ]
        good_ranks = [r + 1 for r, j in enumerate(kept) if g_ids[j] == q_ids[i]]
        if not good_ranks:
            skipped += 1
            continue
        cmc.append([float(good_ranks[0] <= k) for k in ranks])
        aps.append(sum((n + 1) / r for n, r in enumerate(good_ranks)) / len(good_ranks))
        inps.append(len(good_ranks) / good_ranks[-1])
    out = {f"rank{k}": float(np.mean([c[n] for c in cmc])) for n, k in enumerate(ranks)}
    return out | {"map": np.mean(aps), "minp": np.mean(inps), "skipped": skipped}


def market_like(nq=30, ng=120, dim=6, ids=15, cams=4, seed=0, dtype=torch.float64):
    """Features around identity centres; gallery with junk (-1) and distractors (0)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids + 1, dim, generator=g, dtype=dtype)
    q_ids = torch.randint(1, ids + 1, (nq,), generator=g)
    g_ids = torch.randint(1, ids + 1, (ng,), generator=g)
    g_ids[torch.rand(ng, generator=g) < 0.1] = -1
    g_ids[torch.rand(ng, generator=g) < 0.1] = 0
    q_ids[:2] = torch.tensor([0, -1])  # queries that cannot count
    q_cams, g_cams = (torch.randint(cams, (n,), generator=g) for n in (nq, ng))
    q = centres[q_ids.clamp_min(0)] + 0.9 * torch.randn(nq, dim, generator=g, dtype=dtype)
    gal = centres[g_ids.clamp_min(0)] + 0.9 * torch.randn(ng, dim, generator=g, dtype=dtype)
    return q, q_ids, q_cams, gal, g_ids, g_cams


def check_against_naive(ours, dist_qg, q_ids, q_cams, g_ids, g_cams):
    ref = naive_market(
        dist_qg.tolist(), q_ids.tolist(), q_cams.tolist(), g_ids.tolist(), g_cams.tolist()
    )
    for key in ("rank1", "rank5", "rank10", "map", "minp"):
        assert ours[key].dtype == torch.float64
        np.testing.assert_allclose(float(ours[key]), ref[key], rtol=1e-12, err_msg=key)
    assert int(ours["num_skipped"]) == ref["skipped"]
    assert int(ours["num_queries"]) + ref["skipped"] == len(q_ids)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_naive_market_protocol(metric, seed):
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=seed)
    ours = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, metric=metric)
    check_against_naive(ours, pairwise_distance(q, g, metric), q_ids, q_cams, g_ids, g_cams)
    ref = naive_market(
        pairwise_distance(q, g, metric).tolist(),
        *(t.tolist() for t in (q_ids, q_cams, g_ids, g_cams)),
    )
    assert 0 < ref["map"] < 1 and 0 < ref["minp"] < ref["map"]  # a non-trivial case
    assert ref["skipped"] >= 2


def test_distances_are_what_the_docstring_says():
    q, _, _, g, _, _ = market_like(nq=3, ng=5)
    qn, gn = q / q.norm(dim=1, keepdim=True), g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(pairwise_distance(q, g), 1 - qn @ gn.T)
    torch.testing.assert_close(pairwise_distance(q, g, "euclidean"), torch.cdist(q, g))


def test_hand_worked_query():
    # gallery after ranking: same cam match (junk), wrong, good, junk id, distractor, good
    q = torch.tensor([[0.0]])
    g = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6]])
    g_ids = torch.tensor([7, 3, 7, -1, 0, 7])
    g_cams = torch.tensor([1, 2, 2, 2, 2, 3])
    out = reid_metrics(
        q, torch.tensor([7]), torch.tensor([1]), g, g_ids, g_cams, metric="euclidean"
    )
    # kept ranking: wrong(1), good(2), distractor(3), good(4)
    assert float(out["rank1"]) == 0.0 and float(out["rank5"]) == 1.0
    assert float(out["map"]) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert float(out["minp"]) == pytest.approx(2 / 4)


def test_chunked_equals_unchunked_and_metric_equals_functional():
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(nq=37, seed=4)
    whole = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, chunk_size=1000)
    for chunk in (1, 5, 16):
        part = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, chunk_size=chunk)
        for key, value in whole.items():
            torch.testing.assert_close(part[key], value, rtol=1e-14, atol=0)
    metric = ReIDMetrics(chunk_size=7)
    for s in range(0, 37, 10):  # queries and gallery in mixed batches
        metric.update(q[s : s + 10], q_ids[s : s + 10], q_cams[s : s + 10], True)
        metric.update(
            g[3 * s : 3 * s + 30], g_ids[3 * s : 3 * s + 30], g_cams[3 * s : 3 * s + 30], False
        )
    metric.update(g[120:], g_ids[120:], g_cams[120:], False)
    for key, value in metric.compute().items():
        torch.testing.assert_close(value, whole[key], rtol=1e-14, atol=0)


def test_is_query_as_a_mask_and_repeated_indices_count_once():
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=5)
    ref = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams)
    feats = torch.cat([q, g, g[:4], q[:3]])  # the tail repeats samples, as DDP padding does
    ids = torch.cat([q_ids, g_ids, g_ids[:4], q_ids[:3]])
    cams = torch.cat([q_cams, g_cams, g_cams[:4], q_cams[:3]])
    is_query = torch.cat([torch.ones(30), torch.zeros(124), torch.ones(3)]).bool()
    indices = torch.cat([torch.arange(30), torch.arange(120), torch.arange(4), torch.arange(3)])
    metric = ReIDMetrics()
    metric.update(feats, ids, cams, is_query, indices=indices)
    for key, value in metric.compute().items():
        torch.testing.assert_close(value, ref[key])
    without = ReIDMetrics()
    without.update(feats, ids, cams, is_query)
    assert int(without.compute()["num_queries"]) > int(ref["num_queries"])  # repeats count


def test_rerank_and_query_expansion_rank_by_the_processed_distances():
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=6)
    ours = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, rerank=True, k1=8, k2=3)
    d = k_reciprocal_rerank(
        pairwise_distance(q, g), pairwise_distance(q, q), pairwise_distance(g, g), k1=8, k2=3
    )
    check_against_naive(ours, d, q_ids, q_cams, g_ids, g_cams)
    plain = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams)
    assert float(ours["map"]) != float(plain["map"])
    aqe = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, query_expansion=3)
    qe = average_query_expansion(q, g, k=3)
    check_against_naive(aqe, pairwise_distance(qe, g), q_ids, q_cams, g_ids, g_cams)


def test_no_counting_query_gives_nan_not_zero():
    out = reid_metrics(
        torch.randn(2, 3), torch.tensor([1, 2]), torch.tensor([0, 0]),
        torch.randn(3, 3), torch.tensor([1, 2, 3]), torch.tensor([0, 0, 1]),
    )  # fmt: skip
    assert int(out["num_queries"]) == 0 and int(out["num_skipped"]) == 2
    assert torch.isnan(out["map"]) and torch.isnan(out["rank1"])


@pytest.mark.skipif(importlib.util.find_spec("faiss") is not None, reason="faiss installed")
def test_faiss_backend_without_faiss_names_the_extra():
    with pytest.raises(ImportError, match="retrieval"):
        ReIDMetrics(backend="faiss")


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="needs faiss")
def test_faiss_backend_equals_torch():
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=7, dtype=torch.float32)
    for metric in ("cosine", "euclidean"):
        a = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, metric=metric, backend="faiss")
        b = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams, metric=metric)
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_bad_input_names_the_argument():
    m = ReIDMetrics()
    with pytest.raises(ValueError, match="features must be a 2-D"):
        m.update(torch.randn(4), torch.arange(4), torch.zeros(4, dtype=torch.long), True)
    with pytest.raises(ValueError, match="ids must be a tensor of shape \\(4,\\)"):
        m.update(torch.randn(4, 2), torch.arange(3), torch.zeros(4, dtype=torch.long), True)
    with pytest.raises(ValueError, match="cameras must be integers"):
        m.update(torch.randn(4, 2), torch.arange(4), torch.zeros(4), True)
    with pytest.raises(ValueError, match="is_query"):
        m.update(torch.randn(4, 2), torch.arange(4), torch.zeros(4, dtype=torch.long), 1)
    m.update(torch.randn(4, 2), torch.arange(4), torch.zeros(4, dtype=torch.long), True)
    with pytest.raises(ValueError, match="keep their size"):
        m.update(torch.randn(4, 3), torch.arange(4), torch.zeros(4, dtype=torch.long), False)
    with pytest.raises(ValueError, match="before any update"):
        ReIDMetrics().compute()
    with pytest.raises(ValueError, match="metric"):
        ReIDMetrics(metric="l1")
    with pytest.raises(ValueError, match="chunk_size"):
        ReIDMetrics(chunk_size=0)
    with pytest.raises(ValueError, match="same feature size"):
        reid_metrics(torch.randn(2, 3), torch.arange(2), torch.arange(2),
                     torch.randn(2, 4), torch.arange(2), torch.arange(2))  # fmt: skip


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=8)
        metric = ReIDMetrics(chunk_size=8)
        # each rank sees a different, unequal share of both splits
        qs, gs = slice(rank * 11, 11 + rank * 19), slice(rank * 50, 50 + rank * 70)
        metric.update(q[qs], q_ids[qs], q_cams[qs], True)
        metric.update(g[gs], g_ids[gs], g_cams[gs], False)
        torch.save(metric.compute(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawn: each rank imports the library afresh
@pytest.mark.skipif(not dist.is_gloo_available(), reason="needs the gloo backend")
def test_ddp_gather_equals_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    q, q_ids, q_cams, g, g_ids, g_cams = market_like(seed=8)
    single = reid_metrics(q, q_ids, q_cams, g, g_ids, g_cams)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for key, value in single.items():
            torch.testing.assert_close(got[key], value, rtol=1e-14, atol=0, msg=key)
