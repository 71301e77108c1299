"""Cross-rank references (``gather_across_ranks=True``) and the center loss's synchronised centre
update: 2 gloo processes on CPU equal 1 process on the joint batch.

Each rank holds half of a batch whose identities are split across the ranks. With the gather,
rank r's loss is the mean over its anchors against all 16 references, so the mean of the two
ranks' losses equals the single-process loss, and the gradient each rank gets for its own
embeddings (every rank's use of them summed by the gather's backward) is ``world_size`` times
the single-process gradient, which DDP's averaging over ranks divides back out.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_losses import build_loss

pytestmark = [pytest.mark.ddp, pytest.mark.slow]  # two spawned processes import torch

WORLD = 2
CASES = {
    "triplet": {},
    "triplet_weighted": {"mining": "weighted", "distance": "cosine"},
    "triplet_chunked": {"chunk_size": 3},
    "circle": {},
    "supcon": {},
    "nt_xent": {},
    "align_only": {"uniform_weight": 0.0},
}


def _loss_name(case: str) -> str:
    renamed = {"triplet_weighted": "triplet", "triplet_chunked": "triplet"}
    return {**renamed, "align_only": "align_uniform"}.get(case, case)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    # rank 0 gets rows 0-7, rank 1 rows 8-15; identities 0-3 live on both ranks, 4 and 5 only on
    # one rank each, and identity 6 once on each rank (no positive without the gather)
    y = torch.tensor([0, 0, 1, 2, 3, 4, 4, 6, 0, 1, 1, 2, 3, 5, 5, 6])
    return x, y


def _center_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Centres after one moving-average update of a center loss (seeded initial centres)."""
    torch.manual_seed(0)
    loss = build_loss("center", num_classes=7, embedding_dim=5, update="moving_average").double()
    loss(x, y)
    return loss.centers.clone()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = _batch()
        rows = slice(rank * 8, (rank + 1) * 8)
        results = {}
        for case, kwargs in CASES.items():
            loss = build_loss(_loss_name(case), gather_across_ranks=True, **kwargs)
            local = x[rows].clone().requires_grad_(True)
            value = loss(local, y[rows])
            value.backward()
            results[case] = (value.detach(), local.grad, loss.last_invalid_anchors.clone())
        results["center_update"] = _center_step(x[rows], y[rows])
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process_on_the_joint_batch(rank_results, case):
    x, y = _batch()
    loss = build_loss(_loss_name(case), **CASES[case])
    joint = x.clone().requires_grad_(True)
    value = loss(joint, y)
    value.backward()
    values = torch.stack([rank_results[r][case][0] for r in range(WORLD)])
    torch.testing.assert_close(values.mean(), value.detach())
    grads = torch.cat([rank_results[r][case][1] for r in range(WORLD)])
    torch.testing.assert_close(grads / WORLD, joint.grad)
    # identity 6 has its positive on the other rank: every anchor is valid with the gather
    assert all(int(rank_results[r][case][2]) == 0 for r in range(WORLD))


def test_without_the_gather_each_rank_sees_only_its_half():
    """The same halves alone (what a per-rank loss computes) give another value, and identity
    6 has no positive."""
    x, y = _batch()
    loss = build_loss("triplet")
    per_rank = [loss(x[r * 8 : (r + 1) * 8], y[r * 8 : (r + 1) * 8]) for r in range(WORLD)]
    assert int(loss.last_invalid_anchors) >= 1
    assert not torch.allclose(torch.stack(per_rank).mean(), loss(x, y))


def test_center_loss_moving_average_is_synchronised(rank_results):
    """Each rank's update all-reduces the class sums and counts: both ranks hold the centres
    of one update on the joint batch."""
    x, y = _batch()
    expected = _center_step(x, y)
    for r in range(WORLD):
        torch.testing.assert_close(rank_results[r]["center_update"], expected)
