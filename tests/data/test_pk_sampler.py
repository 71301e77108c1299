"""PKSampler: P identities x K instances per batch, whole identities per rank, exact resume."""

from __future__ import annotations

from collections import Counter

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_losses import LossMixin
from lightning_losses.callbacks import InfoBatch
from lightning_losses.data.pk_sampler import PKSampler


def make_ids(num_ids=40, low=2, high=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(low, high, (num_ids,), generator=g)
    ids = (torch.arange(num_ids) * 10 + 3).repeat_interleave(counts)  # non-contiguous ids
    return ids[torch.randperm(len(ids), generator=g)]


def test_each_batch_holds_p_identities_with_k_instances_each():
    ids = make_ids(low=4)
    sampler = PKSampler(ids, p=5, k=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.rounds * (40 // 5)
    for batch in batches:
        assert len(batch) == 20 == sampler.batch_size
        assert len(set(batch)) == 20  # every identity has >= K instances: no repeat in a batch
        per_id = Counter(ids[batch].tolist())
        assert len(per_id) == 5 and set(per_id.values()) == {4}
        # identity-major: each run of K indices belongs to one identity
        assert all(len(set(ids[batch[i : i + 4]].tolist())) == 1 for i in range(0, 20, 4))


def test_every_identity_visited_rounds_times_and_instances_used_evenly():
    ids = torch.arange(12).repeat_interleave(8)  # 12 identities, 8 instances each
    sampler = PKSampler(ids, p=3, k=2, seed=0, rounds=4)
    seen = Counter(i for batch in sampler for i in batch)
    # 12 identities / 3 per step: nobody left out, so every identity is visited 4 times and
    # its 8 instances are each used exactly once (one shuffled pass).
    assert len(sampler) == 16
    assert sorted(seen) == list(range(96)) and set(seen.values()) == {1}


def test_default_rounds_make_an_epoch_about_the_dataset_size():
    ids = torch.arange(10).repeat_interleave(12)
    sampler = PKSampler(ids, p=2, k=4)
    assert sampler.rounds == 3 and len(sampler) * sampler.batch_size == 120


def test_short_identities_are_filled_with_replacement():
    ids = torch.tensor([0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])  # id 0: one, id 1: two instances
    sampler = PKSampler(ids, p=4, k=4, seed=1, rounds=3)
    for batch in sampler:
        per_id = Counter(ids[batch].tolist())
        assert per_id == {0: 4, 1: 4, 2: 4, 3: 4}
        ones = [i for i in batch if ids[i] == 1]
        assert set(ones) == {1, 2}  # both instances, then draws from them


def test_replace_false_names_the_short_identities():
    ids = [5, 5, 5, 8, 9, 9, 9]
    with pytest.raises(ValueError, match=r"id 8 \(1\)"):
        PKSampler(ids, p=2, k=3, replace=False)
    PKSampler([5, 5, 9, 9], p=2, k=2, replace=False)  # enough instances: fine


def test_two_ranks_get_disjoint_whole_identities_and_equal_lengths():
    ids = make_ids(num_ids=33, seed=2)
    ranks = [PKSampler(ids, p=4, k=3, seed=5, num_replicas=2, rank=r) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == ranks[0].rounds * (33 // 8)
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        for b0, b1 in zip(*(list(s) for s in ranks), strict=True):
            id0, id1 = Counter(ids[b0].tolist()), Counter(ids[b1].tolist())
            assert set(id0.values()) == set(id1.values()) == {3}  # whole identities on a rank
            assert len(id0) == len(id1) == 4 and not set(id0) & set(id1)
    # the two ranks' step together equals one process drawing 2P identities
    single = PKSampler(ids, p=8, k=3, seed=5, rounds=ranks[0].rounds)
    single.set_epoch(1)
    joint = [b0 + b1 for b0, b1 in zip(*(list(s) for s in ranks), strict=True)]
    assert joint == list(single)


def test_order_depends_on_seed_and_epoch_only():
    ids = make_ids()
    a, b = PKSampler(ids, p=4, k=2, seed=7), PKSampler(ids, p=4, k=2, seed=7)
    assert list(a) == list(b)
    state = torch.get_rng_state()
    b.set_epoch(1)
    assert list(b) != list(a)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert list(PKSampler(ids, p=4, k=2, seed=8)) != list(a)


def test_resume_mid_epoch_yields_exactly_the_remaining_batches():
    ids = make_ids()
    full = PKSampler(ids, p=4, k=2, seed=1, rounds=2)
    full.set_epoch(3)
    uninterrupted = list(full)
    full.set_epoch(4)
    next_epoch = list(full)

    run = PKSampler(ids, p=4, k=2, seed=1, rounds=2)
    run.set_epoch(3)
    it = iter(run)
    trained = [next(it) for _ in range(5)]
    state = run.state_dict()
    assert state["batches_done"] == 5

    resumed = PKSampler(ids, p=4, k=2, seed=123, rounds=2)  # seed comes from the state
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning sets the same epoch again on resume
    assert len(resumed) == len(uninterrupted) - 5
    rest = list(resumed)
    assert trained + rest == uninterrupted
    assert len(resumed) == len(uninterrupted)  # the skip applied to one pass only
    resumed.set_epoch(4)
    assert list(resumed) == next_epoch


def test_state_dict_takes_the_trained_count_and_a_new_epoch_drops_the_skip():
    ids = make_ids()
    s = PKSampler(ids, p=4, k=2, seed=0)
    batches = list(s)
    state = s.state_dict(batches_done=2)  # e.g. workers prefetched more than was trained
    t = PKSampler(ids, p=4, k=2, seed=0)
    t.load_state_dict(state)
    assert list(t) == batches[2:]
    t.load_state_dict(state)
    t.set_epoch(1)  # the checkpoint's epoch is over: a full new epoch
    s.set_epoch(1)
    assert len(t) == len(s) and list(t) == list(s)


def test_load_state_dict_rejects_other_data():
    ids = make_ids()
    state = PKSampler(ids, p=4, k=2).state_dict()
    with pytest.raises(ValueError, match="'k': 2"):
        PKSampler(ids, p=4, k=3).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        PKSampler(ids, p=4, k=2).load_state_dict({"seed": 0})
    with pytest.raises(ValueError, match="batches_done"):
        PKSampler(ids, p=4, k=2).state_dict(batches_done=10_000)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ids": [[0, 1]]}, ValueError, "1-D"),
        ({"ids": []}, ValueError, "non-empty"),
        ({"ids": [0.5, 1.0]}, TypeError, "integer"),
        ({"ids": [0, 0, 1, 1], "p": 3}, ValueError, "distinct identities"),
        ({"ids": [0, 0, 1, 1], "p": 1, "num_replicas": 3}, ValueError, "distinct identities"),
        ({"ids": [0, 0, 1, 1], "p": 0}, ValueError, "`p`"),
        ({"ids": [0, 0, 1, 1], "k": 0}, ValueError, "`k`"),
        ({"ids": [0, 0, 1, 1], "p": 1, "num_replicas": 2, "rank": 2}, ValueError, "rank"),
        ({"ids": [0, 0, 1, 1], "replace": 1}, TypeError, "replace"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"p": 2, "k": 2} | kwargs
    with pytest.raises(error, match=match):
        PKSampler(**kwargs)


def test_lightning_sets_the_epoch_through_the_sampler_attribute():
    from lightning.fabric.utilities.data import _set_sampler_epoch

    s = PKSampler(make_ids(), p=4, k=2)
    loader = DataLoader(TensorDataset(torch.zeros(len(s.ids))), batch_sampler=s)
    _set_sampler_epoch(loader, 6)
    assert s.epoch == 6 and len(loader) == len(s)


class _Tiny(LossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 2)
        self.criterion = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.compute_loss(self.net(x), y % 2, batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_infobatch_refuses_the_pk_sampler_by_name():
    ids = make_ids()
    data = TensorDataset(torch.randn(len(ids), 2), ids)
    loader = DataLoader(data, batch_sampler=PKSampler(ids, p=4, k=2))
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[InfoBatch()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="custom one \\(PKSampler\\)"):
        trainer.fit(_Tiny(), train_dataloaders=loader)
