"""GroupBalancedSampler: balanced epochs, reweighted frequencies, determinism, DDP shares, state."""

from __future__ import annotations

import doctest
import math
import re
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses.data import group_balanced
from lightning_losses.data.group_balanced import GroupBalancedSampler

DOC = Path(__file__).parents[2] / "docs" / "data_group_balanced.md"

# 4 groups of sizes 50, 20, 7, 3 (minimum 3), interleaved over the indices.
SIZES = [50, 20, 7, 3]


def _groups(sizes=SIZES, seed=0) -> torch.Tensor:
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    return g[torch.randperm(len(g), generator=torch.Generator().manual_seed(seed))]


def _epoch(sampler: GroupBalancedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


# -- subsample ----------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_subsample_epoch_has_min_count_of_every_group_without_repeats(epoch):
    groups = _groups()
    sampler = GroupBalancedSampler(groups, mode="subsample", seed=3)
    idx = _epoch(sampler, epoch)
    assert len(idx) == len(sampler) == 4 * 3
    assert len(set(idx)) == len(idx)
    assert Counter(int(groups[i]) for i in idx) == {0: 3, 1: 3, 2: 3, 3: 3}
    # the smallest group is always taken whole
    assert {i for i in idx if groups[i] == 3} == set(torch.nonzero(groups == 3).flatten().tolist())


def test_subsample_draws_every_member_uniformly_over_epochs():
    # group 0 has 50 members and 3 slots: each member is picked with probability 3/50 per epoch
    groups = _groups()
    sampler = GroupBalancedSampler(groups, mode="subsample", seed=0)
    epochs = 400
    counts = Counter(i for e in range(epochs) for i in _epoch(sampler, e) if groups[i] == 0)
    members = torch.nonzero(groups == 0).flatten().tolist()
    assert set(counts) == set(members)
    p = 3 / 50
    se = math.sqrt(epochs * p * (1 - p))
    # max over 50 members of a ~normal deviation: 5 standard errors is a safe bound
    assert max(abs(counts[m] - epochs * p) for m in members) < 5 * se


def test_subsample_shuffles_the_groups_together():
    groups = _groups([40, 40])
    idx = _epoch(GroupBalancedSampler(groups, seed=0), 0)
    labels = [int(groups[i]) for i in idx]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_fixed_subset_with_resample_false():
    groups = _groups()
    sampler = GroupBalancedSampler(groups, seed=5, resample=False)
    first = _epoch(sampler, 0)
    orders = [_epoch(sampler, e) for e in range(1, 6)]
    assert all(sorted(o) == sorted(first) for o in orders)
    assert any(o != first for o in orders), "the order must still change between epochs"
    fresh = GroupBalancedSampler(groups, seed=5)
    assert len({tuple(sorted(_epoch(fresh, e))) for e in range(6)}) > 1


# -- reweight -----------------------------------------------------------------------------------


def test_reweight_group_frequencies_are_uniform():
    groups = _groups()
    n = len(groups)
    sampler = GroupBalancedSampler(groups, mode="reweight", seed=1)
    assert len(sampler) == n  # as WeightedRandomSampler(weights, len(dataset)) in group_DRO
    epochs = 200
    draws = torch.tensor([i for e in range(epochs) for i in _epoch(sampler, e)])
    total = epochs * n
    freq = torch.bincount(groups[draws], minlength=4).double() / total
    se = math.sqrt(0.25 * 0.75 / total)
    assert bool(((freq - 0.25).abs() < 5 * se).all()), freq.tolist()


def test_reweight_sample_probability_is_inverse_group_size():
    # p_i = 1 / (G n_g): within a group every member is equally likely
    groups = _groups([6, 2])
    sampler = GroupBalancedSampler(groups, mode="reweight", seed=2)
    epochs = 3000
    counts = torch.bincount(
        torch.tensor([i for e in range(epochs) for i in _epoch(sampler, e)]), minlength=8
    ).double()
    total = epochs * 8
    for i in range(8):
        p = 1 / (2 * (6 if groups[i] == 0 else 2))
        se = math.sqrt(p * (1 - p) / total)
        assert abs(counts[i] / total - p) < 5 * se, (i, float(counts[i] / total), p)


# -- determinism and epochs ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["subsample", "reweight"])
def test_epochs_differ_and_are_reproducible(mode):
    groups = _groups()
    a = GroupBalancedSampler(groups, mode=mode, seed=7)
    b = GroupBalancedSampler(groups.tolist(), mode=mode, seed=7)  # a list gives the same
    seqs = [_epoch(a, e) for e in range(5)]
    assert len({tuple(s) for s in seqs}) == 5
    assert [_epoch(b, e) for e in range(5)] == seqs
    assert _epoch(a, 2) == seqs[2]  # going back reproduces it
    c = GroupBalancedSampler(groups, mode=mode, seed=8)
    assert _epoch(c, 0) != seqs[0]


def test_global_rng_is_untouched():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    for mode in ("subsample", "reweight"):
        list(GroupBalancedSampler(_groups(), mode=mode))
    torch.testing.assert_close(torch.rand(3), before)


def test_numpy_groups_and_num_groups():
    groups = _groups()
    s = GroupBalancedSampler(groups.numpy(), num_groups=4)
    assert _epoch(s, 0) == _epoch(GroupBalancedSampler(groups), 0)


# -- DDP shares ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["subsample", "reweight"])
def test_two_ranks_take_disjoint_halves_of_the_one_rank_epoch(mode):
    groups = _groups([50, 20, 7, 4])  # subsample: 16 per epoch; reweight: 81 (odd)
    one = GroupBalancedSampler(groups, mode=mode, seed=4, num_replicas=1, rank=0)
    ranks = [
        GroupBalancedSampler(groups, mode=mode, seed=4, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for epoch in (0, 3):
        full = _epoch(one, epoch)
        shares = [_epoch(s, epoch) for s in ranks]
        assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(full) // 2
        # rank r holds positions r, r + 2, ... of the one-rank sequence; the odd tail is dropped
        kept = full[: 2 * (len(full) // 2)]
        assert shares[0] == kept[0::2] and shares[1] == kept[1::2]
        if mode == "subsample":
            assert not set(shares[0]) & set(shares[1])
            assert sorted(shares[0] + shares[1]) == sorted(full)


def test_three_ranks_drop_the_tail_rather_than_pad():
    groups = _groups([9, 5])  # subsample: 10 per epoch, 3 ranks get 3 each, 1 dropped
    full = _epoch(GroupBalancedSampler(groups, seed=0), 0)
    shares = [
        _epoch(GroupBalancedSampler(groups, seed=0, num_replicas=3, rank=r), 0) for r in (0, 1, 2)
    ]
    assert [len(s) for s in shares] == [3, 3, 3]
    union = [i for s in shares for i in s]
    assert len(set(union)) == 9 and set(union) == set(full[:9])


def test_rank_and_world_size_default_to_the_process_group(monkeypatch):
    groups = _groups([50, 20, 7, 4])
    assert (GroupBalancedSampler(groups).num_replicas, GroupBalancedSampler(groups).rank) == (1, 0)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    sampler = GroupBalancedSampler(groups, seed=4)
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    full = _epoch(GroupBalancedSampler(groups, seed=4, num_replicas=1, rank=0), 3)
    assert _epoch(sampler, 3) == full[1::2]


# -- state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["subsample", "reweight"])
def test_state_dict_round_trip_continues_the_order(mode):
    groups = _groups()
    run = GroupBalancedSampler(groups, mode=mode, seed=11)
    uninterrupted = [_epoch(run, e) for e in range(6)]

    first = GroupBalancedSampler(groups, mode=mode, seed=11)
    for e in range(3):
        _epoch(first, e)
    state = first.state_dict()
    assert state == {"seed": 11, "epoch": 2, "mode": mode, "num_samples": len(groups)}
    resumed = GroupBalancedSampler(groups, mode=mode, seed=0)  # seed comes from the state
    resumed.load_state_dict(state)
    assert list(resumed) == uninterrupted[2]
    assert [_epoch(resumed, e) for e in range(3, 6)] == uninterrupted[3:]


def test_load_state_dict_errors():
    s = GroupBalancedSampler(_groups())
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['mode', 'num_samples'\]"):
        s.load_state_dict({"seed": 0, "epoch": 1})
    other = GroupBalancedSampler(_groups(), mode="reweight").state_dict()
    with pytest.raises(ValueError, match="mode='reweight' over 80 samples"):
        s.load_state_dict(other)
    with pytest.raises(ValueError, match="epoch"):
        s.load_state_dict({"seed": 0, "epoch": -1, "mode": "subsample", "num_samples": 80})


# -- with a Trainer -----------------------------------------------------------------------------


class Indexed(Dataset):
    def __init__(self, groups):
        self.groups = groups

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        x, i = batch
        self.seen.setdefault(self.current_epoch, []).extend(i.tolist())
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_sets_the_epoch():
    groups = _groups()
    sampler = GroupBalancedSampler(groups, seed=2)
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(Indexed(groups), batch_size=5, sampler=sampler))
    reference = GroupBalancedSampler(groups, seed=2)
    assert model.seen == {e: _epoch(reference, e) for e in range(3)}


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"groups": []}, ValueError, "empty"),
        ({"groups": [0, 0, 2, 2]}, ValueError, r"empty groups \[1\]"),
        ({"groups": [0, 1], "num_groups": 3}, ValueError, r"empty groups \[2\]"),
        ({"groups": [0, 3], "num_groups": 3}, ValueError, r"outside \[0, 2\]"),
        ({"groups": [0, -1]}, ValueError, ">= 0"),
        ({"groups": [[0, 1], [1, 0]]}, ValueError, "1-D"),
        ({"groups": [0.0, 1.0]}, TypeError, "integer group ids"),
        ({"groups": torch.tensor([True, False])}, TypeError, "integer group ids"),
        ({"groups": "abc"}, TypeError, "`groups`"),
        ({"groups": [0, 1], "mode": "reweigh"}, ValueError, "Did you mean 'reweight'"),
        ({"groups": [0, 1], "seed": 1.5}, ValueError, "`seed`"),
        ({"groups": [0, 1], "num_replicas": 0}, ValueError, "`num_replicas`"),
        (
            {"groups": [0, 1], "num_replicas": 2, "rank": 2},
            ValueError,
            r"`rank` must lie in \[0, 1\]",
        ),
        ({"groups": [0, 1], "num_replicas": 2, "rank": -1}, ValueError, "`rank`"),
        ({"groups": [0, 1], "num_replicas": 3, "rank": 0}, ValueError, "fewer than num_replicas"),
        ({"groups": [0, 1], "mode": "reweight", "resample": False}, ValueError, "subsample"),
        ({"groups": [0, 1], "resample": 0}, TypeError, "`resample`"),
    ],
)
def test_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        GroupBalancedSampler(**kwargs)


def test_set_epoch_errors():
    s = GroupBalancedSampler([0, 1])
    with pytest.raises(ValueError, match="`epoch`"):
        s.set_epoch(-1)
    with pytest.raises(ValueError, match="`epoch`"):
        s.set_epoch(1.0)


# -- docs ---------------------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(group_balanced)
    assert result.attempted >= 1 and result.failed == 0


def test_doc_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)
    counts = namespace["counts"]
    assert len(set(counts.values())) == 1 and np.array(list(counts.values())).min() > 0
