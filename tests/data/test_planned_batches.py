"""PlannedBatchSampler: rank shares, batch counts, skipping, and the index channel."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_losses.data.planned_batches import PlannedBatchSampler


@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 23])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_the_order_evenly_with_at_most_world_minus_one_repeats(m, world, drop_last):
    order = torch.randperm(50, generator=torch.Generator().manual_seed(m))[:m]
    samplers = [PlannedBatchSampler(4, drop_last, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_order(order)
    batches = [list(s) for s in samplers]
    assert len({len(b) for b in batches}) == 1  # every rank runs the same number of steps
    assert all(len(s) == len(b) for s, b in zip(samplers, batches, strict=True))
    shares = [s.share for s in samplers]
    assert shares == [-(-m // world)] * world
    flat = [i for b in batches for batch in b for i in batch]
    if not drop_last:
        assert sorted(set(flat)) == sorted(order.tolist())  # nothing is lost
        assert len(flat) - m == (-m % world if m else 0)  # the repeats are the padding only
    # rank r's k-th batch holds positions r, r + world, ... of the padded order
    if m and not drop_last:
        padded = (order.tolist() * world)[: m + (-m % world)]
        for r, b in enumerate(batches):
            assert [i for batch in b for i in batch] == padded[r::world]


def test_skip_batches_resumes_part_way_and_the_channel_follows_the_loader():
    data = torch.arange(100) * 10
    sampler = PlannedBatchSampler(3, drop_last=False)
    order = torch.tensor([9, 4, 7, 1, 0, 5, 8])
    sampler.set_order(order, skip_batches=1)
    assert len(sampler) == 2
    loader = DataLoader(data, batch_sampler=sampler)
    for batch in loader:
        torch.testing.assert_close(sampler.pop_batch() * 10, batch)
    with pytest.raises(RuntimeError, match="did not produce"):
        sampler.pop_batch()


def test_bad_arguments():
    with pytest.raises(ValueError, match="`rank` must lie in"):
        PlannedBatchSampler(2, False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        PlannedBatchSampler(0, False)
    with pytest.raises(ValueError, match="`order` must be a 1-D integer tensor"):
        PlannedBatchSampler(2, False).set_order(torch.rand(3))
