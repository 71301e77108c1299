"""The loss per timestep bucket: sums add up to the total, no host read on the step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_losses.diffusion import TimestepBucketLoss, bucket_sums, timestep_buckets
from lightning_losses.losses.diffusion import DiffusionLoss
from lightning_losses.testing import no_host_sync


def test_bucket_edges():
    t = torch.tensor([0, 99, 100, 555, 899, 900, 999])
    assert timestep_buckets(t, 1000, 10).tolist() == [0, 0, 1, 5, 8, 9, 9]
    # T not divisible by B: floor(t·B/T), every bucket non-empty over the full range
    ids = timestep_buckets(torch.arange(7), 7, 3)
    assert ids.tolist() == [0, 0, 0, 1, 1, 2, 2]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    steps=st.integers(1, 1000),
    buckets=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_bucket_sums_add_up_to_the_total(n, steps, buckets, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, generator=g, dtype=torch.float64)
    t = torch.randint(0, steps, (n,), generator=g)
    sums, counts = bucket_sums(values, t, steps, buckets)
    assert sums.shape == counts.shape == (buckets,)
    torch.testing.assert_close(sums.sum(), values.sum())
    assert counts.sum().item() == n
    ids = timestep_buckets(t, steps, buckets)
    for b in range(buckets):  # naive loop
        assert sums[b].item() == pytest.approx(values[ids == b].sum().item(), abs=1e-12)


def test_loss_buckets_sum_to_the_summed_loss():
    loss = DiffusionLoss(weighting="min_snr", reduction="none")
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 32, 3, 4, 4, generator=g)
    t = torch.randint(0, 1000, (32,), generator=g)
    per_sample = loss(pred, target, timesteps=t)
    sums, _ = bucket_sums(per_sample, t, 1000, 10)
    total = DiffusionLoss(weighting="min_snr", reduction="sum")(pred, target, timesteps=t)
    torch.testing.assert_close(sums.sum(), total)


def test_metric_accumulates_means_per_bucket():
    metric = TimestepBucketLoss(num_timesteps=100, num_buckets=4)
    with no_host_sync():
        metric.update(torch.tensor([1.0, 3.0]), torch.tensor([0, 10]))
        metric.update(torch.tensor([5.0, 7.0]), torch.tensor([99, 60]))
    means = metric.compute()
    assert means[0].item() == 2.0 and means[2].item() == 7.0 and means[3].item() == 5.0
    assert math.isnan(means[1].item())
    logged = metric.as_dict("train/loss_t")
    assert sorted(logged) == ["train/loss_t0", "train/loss_t2", "train/loss_t3"]
    assert logged["train/loss_t3"].item() == 5.0
    metric.reset()
    assert metric.counts.sum().item() == 0


def test_bucket_arguments_are_checked():
    with pytest.raises(ValueError, match="num_buckets"):
        timestep_buckets(torch.tensor([1]), 1000, 0)
    with pytest.raises(TypeError, match=r"timesteps.*integer"):
        timestep_buckets(torch.tensor([0.5]), 1000)
    with pytest.raises(ValueError, match=r"values.*timesteps.*\(N,\)"):
        bucket_sums(torch.ones(3), torch.ones(2, dtype=torch.long), 1000)
