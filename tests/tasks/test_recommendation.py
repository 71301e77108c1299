"""Recommendation task: BPR loss, ranking metrics by hand, synthetic data, a tiny fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_losses.callbacks.pld import PLD
from lightning_losses.tasks.recommendation import (
    BPRLoss,
    MatrixFactorization,
    SyntheticImplicitFeedback,
)


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _naive_ranking_metrics(scores, target, exclude, k):
    """Mean Recall@k and NDCG@k over users with a relevant item, with Python floats."""
    recalls, ndcgs = [], []
    for s, t, e in zip(scores.tolist(), target.tolist(), exclude.tolist(), strict=True):
        ranked = sorted((i for i in range(len(s)) if not e[i]), key=lambda i: -s[i])
        relevant = {i for i in range(len(s)) if t[i] and not e[i]}
        if not relevant:
            continue
        top = ranked[:k]
        recalls.append(sum(i in relevant for i in top) / len(relevant))
        dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(top) if i in relevant)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
        ndcgs.append(dcg / ideal)
    return sum(recalls) / len(recalls), sum(ndcgs) / len(ndcgs)


# ----------------------------------------------------------------------------- loss


def test_bpr_loss_matches_the_formula_per_triple():
    scores = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-30.0, 30.0], [30.0, -30.0]])
    values = BPRLoss(reduction="none")(scores, None)
    expected = [math.log1p(math.exp(n - p)) for p, n in scores.double().tolist()]
    torch.testing.assert_close(values.double(), torch.tensor(expected, dtype=torch.float64))
    assert BPRLoss()(scores, None).item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    with pytest.raises(ValueError, match=r"`input` must have shape \(N, 2\).*got \(4,\)"):
        BPRLoss()(scores[:, 0], None)


# ----------------------------------------------------------------------------- metrics


def test_ranking_metrics_on_a_hand_built_case_exclude_training_positives():
    # user 0 scores items 5, 4, ..., 0; user 1 the reverse; user 2 has no relevant item (skipped)
    model = MatrixFactorization(num_users=3, num_items=6, dim=2, top_k=2)
    with torch.no_grad():
        model.user_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.item_emb.weight.copy_(torch.tensor([[5.0 - i, float(i)] for i in range(6)]))
    target = torch.zeros(3, 6, dtype=torch.bool)
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    target[0, [2, 5]] = True  # ranks 2 and 5 once item 0 is excluded
    exclude[0, 0] = True
    target[1, 3] = True  # rank 1 once items 5 and 4 are excluded
    exclude[1, [4, 5]] = True
    exclude[2, 0] = True
    batches = [{"user": u, "target": target[u], "exclude": exclude[u]} for u in range(3)]

    result = _trainer().validate(model, DataLoader(batches, batch_size=2), verbose=False)[0]

    by_hand_ndcg = ((1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 1.0) / 2
    scores = model(torch.arange(3)).detach()
    recall, ndcg = _naive_ranking_metrics(scores, target, exclude, k=2)
    assert (recall, ndcg) == (pytest.approx(0.75), pytest.approx(by_hand_ndcg))
    assert result["val/recall@2"] == pytest.approx(recall, abs=1e-6)
    assert result["val/ndcg@2"] == pytest.approx(ndcg, abs=1e-6)
    # without the exclusion both users would rank training items first: nothing relevant on top
    assert _naive_ranking_metrics(scores, target, torch.zeros_like(exclude), k=2) == (0.0, 0.0)


# ----------------------------------------------------------------------------- data


def _data(**kwargs) -> SyntheticImplicitFeedback:
    return SyntheticImplicitFeedback(**{"num_users": 30, "num_items": 120, **kwargs})


def test_splits_are_disjoint_and_a_known_fraction_of_training_is_noise():
    dm = _data()
    assert (dm.num_clean, dm.num_noisy, dm.num_val, dm.num_test) == (28, 7, 4, 8)
    assert dm.noise_fraction == pytest.approx(0.2)
    assert (dm.train_matrix.sum(1) == 35).all() and (dm.val_matrix.sum(1) == 4).all()
    assert (dm.test_matrix.sum(1) == 8).all()
    assert (
        not (dm.train_matrix & dm.val_matrix).any() and not (dm.val_matrix & dm.test_matrix).any()
    )
    assert not (dm.train_matrix & dm.test_matrix).any()

    users = torch.arange(30)[:, None]
    noisy = dm.train_items[dm.train_noisy].view(30, -1)
    clean = dm.train_items[~dm.train_noisy].view(30, -1)
    liked = dm.val_matrix | dm.test_matrix
    liked[users, clean] = True
    assert not liked[users, noisy].any()  # noise: items the user does not like
    assert dm.affinity[users, noisy].mean() < dm.affinity[users, clean].mean() - 1.0

    again, other = _data(), _data(seed=1)
    assert torch.equal(again.train_items, dm.train_items) and torch.equal(
        again.test_matrix, dm.test_matrix
    )
    assert not torch.equal(other.train_matrix, dm.train_matrix)
    assert _data(noise=0.0).num_noisy == 0


def test_pools_hold_k_distinct_training_positives_with_negatives_outside_training():
    dm = _data(examples_per_user=2)
    examples = torch.tensor([3, 17, 45])  # example 45 is user 15's second row
    batch = dm.build_pools(examples, dm.batch_generator(0, 3))
    k = dm.num_candidates
    assert {key: tuple(v.shape) for key, v in batch.items()} == dict.fromkeys(
        ("user", "pos", "neg", "pool", "noisy"), (3 * k,)
    )
    assert batch["user"].tolist() == [3] * k + [17] * k + [15] * k
    assert batch["pool"].tolist() == [3] * k + [17] * k + [45] * k
    assert dm.train_matrix[batch["user"], batch["pos"]].all()
    assert not dm.train_matrix[batch["user"], batch["neg"]].any()
    for pool in batch["pos"].view(3, k):
        assert pool.unique().numel() == k
    noisy_matrix = torch.zeros_like(dm.train_matrix)
    noisy_matrix[torch.arange(30)[:, None], dm.train_items[:, dm.num_clean :]] = True
    assert torch.equal(batch["noisy"], noisy_matrix[batch["user"], batch["pos"]])

    same = dm.build_pools(examples, dm.batch_generator(0, 3))
    later = dm.build_pools(examples, dm.batch_generator(1, 3))
    assert all(torch.equal(same[key], batch[key]) for key in batch)
    assert not torch.equal(later["pos"], batch["pos"])
    evaluation = {"user": torch.tensor([0])}
    assert dm.on_before_batch_transfer(evaluation, 0) is evaluation


def test_a_shared_negative_pairs_every_candidate_of_a_pool_with_one_item():
    dm = _data(shared_negative=True)
    batch = dm.build_pools(torch.arange(6), dm.batch_generator(2, 0))
    neg = batch["neg"].view(6, dm.num_candidates)
    assert (neg == neg[:, :1]).all()
    assert not dm.train_matrix[batch["user"], batch["neg"]].any()
    with pytest.raises(TypeError, match=r"`shared_negative` must be a bool; got int"):
        _data(shared_negative=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise": 1.0}, r"`noise` must lie in \[0, 1\); got 1.0"),
        ({"interactions_per_user": 6}, r">= `num_candidates`=5 clean training items"),
        ({"num_items": 45}, r"`num_items`=45 is too small for 40 liked \+ 7 noisy"),
        ({"num_candidates": 0}, r"`num_candidates` must be an integer >= 1"),
    ],
)
def test_bad_data_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _data(**kwargs)


# ----------------------------------------------------------------------------- fit


def test_two_tiny_epochs_with_pld_train_and_report_ranking_metrics():
    dm = _data(batch_size=8)
    model = MatrixFactorization(dm.num_users, dm.num_items, dim=8, lr=0.05)
    before = model.item_emb.weight.detach().clone()
    trainer = _trainer(max_epochs=2, callbacks=[PLD(warmup_epochs=1)], num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/pld/selected_loss", "val/recall@10", "val/ndcg@10"} <= set(metrics)
    assert 0.0 <= metrics["val/ndcg@10"] <= 1.0 and 0.0 <= metrics["val/recall@10"] <= 1.0
    assert torch.isfinite(metrics["train/loss"])
    assert not torch.equal(model.item_emb.weight.detach(), before)
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert set(test) == {"test/recall@10", "test/ndcg@10"}
