"""Tests for the spurious-correlation digits: exact group counts, balance, frames, loaders."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_losses.data import spurious
from lightning_losses.data.spurious import (
    SPURIOUS_GROUPS,
    SpuriousDigits,
    SpuriousDigitsDataModule,
    frame_width,
    spurious_digits_splits,
    spurious_labels,
)

DIGITS = load_digits()


def _labels(positions: np.ndarray) -> np.ndarray:
    return (DIGITS.target[positions] >= 5).astype(np.int64)


def _raw(ds: SpuriousDigits) -> torch.Tensor:
    """Undo the normalisation: images back in [0, 1]."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return ds.images * std + mean


def _frame_mask(size: int) -> torch.Tensor:
    w = frame_width(size)
    mask = torch.ones(size, size, dtype=torch.bool)
    mask[w : size - w, w : size - w] = False
    return mask


@pytest.fixture(scope="module")
def dm() -> SpuriousDigitsDataModule:
    module = SpuriousDigitsDataModule()
    module.setup()
    return module


# --------------------------------------------------------------------------------- planning


@pytest.mark.parametrize("correlation", [0.5, 0.8, 0.95, 0.99])
def test_train_group_counts_follow_correlation_exactly(correlation):
    positions, attributes = spurious_digits_splits(correlation=correlation, seed=3)["train"]
    labels = _labels(positions)
    groups = np.bincount(2 * labels + attributes, minlength=4)
    for y in (0, 1):
        n_y = int((labels == y).sum())
        minority = math.floor(round((1 - correlation) * n_y, 9) + 0.5)
        assert groups[2 * y + (1 - y)] == minority  # (0, 1) and (1, 0)
        assert groups[2 * y + y] == n_y - minority  # (0, 0) and (1, 1)
        assert minority / n_y == pytest.approx(1 - correlation, abs=0.5 / n_y + 1e-12)
    # The frame alone predicts the label with ~correlation accuracy in training.
    assert (attributes == labels).mean() == pytest.approx(correlation, abs=1 / labels.size)


def test_default_counts():
    plan = spurious_digits_splits()
    counts = {
        name: np.bincount(2 * _labels(p) + a, minlength=4).tolist() for name, (p, a) in plan.items()
    }
    assert counts == {
        "train": [473, 25, 25, 468],
        "val": [67, 67, 67, 67],
        "test": [135, 134, 135, 134],
    }


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("split", ["val", "test"])
def test_val_test_balanced_and_attribute_independent(seed, split):
    positions, attributes = spurious_digits_splits(seed=seed)[split]
    labels = _labels(positions)
    groups = np.bincount(2 * labels + attributes, minlength=4)
    n = int((labels == 0).sum())
    assert int((labels == 1).sum()) == n  # label-balanced
    assert groups.tolist() == [math.ceil(n / 2), n // 2, math.ceil(n / 2), n // 2]
    assert groups.max() - groups.min() <= 1
    assert (attributes == labels).mean() == 0.5  # the frame is useless at test time


@pytest.mark.parametrize("seed", [0, 5])
def test_splits_disjoint_cover_all_digits_and_stratified(seed):
    plan = spurious_digits_splits(seed=seed)
    sets = {name: set(p.tolist()) for name, (p, _) in plan.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert set().union(*sets.values()) == set(range(len(DIGITS.target)))
    for name, (positions, attributes) in plan.items():
        assert np.all(np.diff(positions) > 0)
        assert set(np.unique(attributes).tolist()) == {0, 1}
        # every digit 0-9 is present in every split
        assert set(DIGITS.target[positions].tolist()) == set(range(10)), name


def test_deterministic_per_seed_and_seed_matters():
    a = spurious_digits_splits(seed=11)
    b = spurious_digits_splits(seed=11)
    c = spurious_digits_splits(seed=12)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert any(
        not np.array_equal(a[n][0], c[n][0]) or not np.array_equal(a[n][1], c[n][1])
        for n in ("train", "val", "test")
    )


def test_spurious_labels():
    assert spurious_labels(range(10)).tolist() == [0] * 5 + [1] * 5
    assert spurious_labels([3]).dtype == np.int64


# --------------------------------------------------------------------------------- dataset


@pytest.mark.parametrize("size", [8, 13, 32])
def test_frame_bright_iff_attribute(size):
    ds = SpuriousDigits("train", image_size=size, seed=2)
    raw = _raw(ds)[:, 0]
    mask = _frame_mask(size)
    border = raw[:, mask]
    framed = ds.attributes == 1
    assert torch.allclose(border[framed], torch.ones_like(border[framed]), atol=1e-5)
    assert torch.allclose(border[~framed], torch.zeros_like(border[~framed]), atol=1e-5)
    # The spurious feature read from the pixels alone predicts the label at ~correlation.
    a_hat = (border.mean(1) > 0.5).long()
    torch.testing.assert_close(a_hat, ds.attributes)
    acc = (a_hat == ds.targets).float().mean().item()
    assert acc == pytest.approx(0.95, abs=1 / len(ds))
    test = SpuriousDigits("test", image_size=size, seed=2)
    a_test = (_raw(test)[:, 0][:, mask].mean(1) > 0.5).long()
    assert (a_test == test.targets).float().mean().item() == 0.5


def test_digit_area_independent_of_attribute():
    ds = SpuriousDigits("val", image_size=16)
    raw = _raw(ds)[:, 0]
    w = frame_width(16)
    inner = raw[:, w:-w, w:-w]
    # The core feature is the resized digit, the same whatever the frame.
    digit = torch.from_numpy(DIGITS.images[ds.indices.numpy()]).float().unsqueeze(1) / 16
    expected = torch.nn.functional.interpolate(
        digit, size=(16 - 2 * w,) * 2, mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(inner, expected, atol=1e-5, rtol=0)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_dataset_fields_and_items():
    ds = SpuriousDigits("test", image_size=16, in_chans=3)
    assert ds.images.shape == (len(ds), 3, 16, 16) and ds.images.dtype == torch.float32
    torch.testing.assert_close(ds.images[:, 0], ds.images[:, 2])
    for name in ("targets", "attributes", "groups", "digits", "indices"):
        tensor = getattr(ds, name)
        assert tensor.dtype == torch.int64 and tensor.shape == (len(ds),), name
    torch.testing.assert_close(ds.groups, 2 * ds.targets + ds.attributes)
    torch.testing.assert_close(ds.digits, torch.from_numpy(DIGITS.target[ds.indices.numpy()]))
    torch.testing.assert_close(ds.targets, (ds.digits >= 5).long())
    image, label, group = ds[5]
    assert isinstance(label, int) and isinstance(group, int)
    assert label == int(ds.targets[5]) and group == int(ds.groups[5])
    assert image.shape == (3, 16, 16)
    assert ds.group_names == list(SPURIOUS_GROUPS) and ds.classes == ["0-4", "5-9"]


def test_own_stats_normalise():
    ds = SpuriousDigits("train", image_size=16)
    assert abs(float(ds.images.mean())) < 1e-4
    assert float(ds.images.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------- datamodule


def test_datamodule_attributes(dm):
    assert dm.num_classes == 2 and dm.num_groups == 4 and dm.in_chans == 1
    assert dm.group_counts.dtype == torch.float32 and dm.group_counts.shape == (4,)
    assert dm.group_counts.tolist() == [473.0, 25.0, 25.0, 468.0]
    assert dm.class_counts.tolist() == [498.0, 493.0]
    assert dm.class_counts.sum() == len(dm.train_dataset) == dm.group_counts.sum()
    torch.testing.assert_close(dm.group_counts, dm.train_dataset.group_counts)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (991, 268, 538)
    # validation and test use the training statistics
    assert dm.val_dataset.mean == dm.train_dataset.mean == dm.test_dataset.mean
    assert dm.test_dataset.std == dm.train_dataset.std


def test_datamodule_batches(dm):
    images, labels, groups = next(iter(dm.train_dataloader()))
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == groups.shape == (64,)
    assert labels.dtype == groups.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1}
    assert set(groups.unique().tolist()) <= {0, 1, 2, 3}
    torch.testing.assert_close(labels, groups // 2)
    again = next(iter(dm.train_dataloader()))
    torch.testing.assert_close(again[2], groups)  # seeded shuffle
    seen = torch.cat([g for _, _, g in dm.test_dataloader()])
    assert torch.bincount(seen, minlength=4).tolist() == [135, 134, 135, 134]


def test_datamodule_rgb_and_deterministic():
    a = SpuriousDigitsDataModule(image_size=8, in_chans=3, seed=4, batch_size=16)
    b = SpuriousDigitsDataModule(image_size=8, in_chans=3, seed=4, batch_size=16)
    a.setup()
    b.setup()
    assert a.train_dataset.images.shape[1:] == (3, 8, 8)
    torch.testing.assert_close(a.test_dataset.images, b.test_dataset.images)
    torch.testing.assert_close(a.train_dataset.groups, b.train_dataset.groups)
    x, y, g = next(iter(a.val_dataloader()))
    assert x.shape == (16, 3, 8, 8) and y.shape == g.shape == (16,)


def test_erm_fails_on_minority_groups_and_group_balancing_helps():
    """A linear model on pixels: ERM leans on the frame, group-balanced weighting less so."""
    dm = SpuriousDigitsDataModule(image_size=8)
    dm.setup()
    train, test = dm.train_dataset, dm.test_dataset
    x, y = train.images.flatten(1), train.targets.float()

    def worst_group_test_accuracy(weights: torch.Tensor) -> float:
        torch.manual_seed(0)
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            logits = x @ w + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            (loss * weights).sum().backward()
            opt.step()
        with torch.no_grad():
            pred = ((test.images.flatten(1) @ w + b) > 0).long()
        correct = (pred == test.targets).float()
        return min(correct[test.groups == g].mean().item() for g in range(4))

    erm = worst_group_test_accuracy(torch.full((len(train),), 1.0 / len(train)))
    balanced = worst_group_test_accuracy((1.0 / dm.group_counts)[train.groups] / 4)
    assert erm < 0.5
    assert balanced > erm + 0.2


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"correlation": 0.4}, "correlation"),
        ({"correlation": 1.0}, "correlation"),
        ({"correlation": float("nan")}, "correlation"),
        ({"correlation": True}, "correlation"),
        ({"correlation": "0.9"}, "correlation"),
        ({"correlation": 0.9999}, "correlation"),  # minority group would be empty
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.2}, "val_fraction"),
        ({"val_fraction": 0.001}, "val_fraction"),  # too small: an empty group
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"seed": 1.5}, "seed"),
        ({"image_size": 7}, "image_size"),
        ({"image_size": 32.0}, "image_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_datamodule_errors_name_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        SpuriousDigitsDataModule(**kwargs)


def test_dataset_errors():
    with pytest.raises(ValueError, match="`split`"):
        SpuriousDigits("validation")
    with pytest.raises(ValueError, match="`correlation`"):
        SpuriousDigits("val", correlation=0.3)
    with pytest.raises(ValueError, match="`mean`"):
        SpuriousDigits("val", mean=[0.5])
    with pytest.raises(ValueError, match="one value per channel"):
        SpuriousDigits("val", in_chans=3, mean=[0.5], std=[0.5])


def test_docstring_examples():
    result = doctest.testmod(spurious, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


# ------------------------------------------------------------------------- group_balanced


def _epoch_indices(loader) -> torch.Tensor:
    return torch.tensor(list(iter(loader.sampler)), dtype=torch.int64)


def test_group_balanced_off_keeps_the_seeded_shuffle(dm):
    loader = dm.train_dataloader()
    assert dm.group_balanced is None
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert len(loader.dataset) == 991


def test_group_balanced_subsample_gives_every_group_min_count_per_epoch():
    from lightning_losses.data.group_balanced import GroupBalancedSampler

    dm = SpuriousDigitsDataModule(image_size=8, batch_size=16, group_balanced="subsample", seed=3)
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, GroupBalancedSampler)
    assert sampler.mode == "subsample" and sampler.seed == 3 and sampler.num_replicas == 1
    m = int(dm.group_counts.min())
    groups_seen = torch.cat([g for _, _, g in loader])
    assert torch.bincount(groups_seen, minlength=4).tolist() == [m] * 4
    assert len(loader) == math.ceil(4 * m / 16)
    first = _epoch_indices(loader)
    assert first.unique().numel() == first.numel() == 4 * m  # no repeat within an epoch
    torch.testing.assert_close(
        dm.train_dataset.groups[first].bincount(minlength=4), torch.full((4,), m)
    )
    sampler.set_epoch(1)
    second = _epoch_indices(loader)
    assert set(first.tolist()) != set(second.tolist())  # a fresh subset of the large groups
    sampler.set_epoch(0)
    torch.testing.assert_close(_epoch_indices(loader), first)  # (seed, epoch) fixes the order


def test_group_balanced_reweight_draws_groups_equally_often():
    dm = SpuriousDigitsDataModule(image_size=8, group_balanced="reweight")
    loader = dm.train_dataloader()
    idx = _epoch_indices(loader)
    assert idx.numel() == len(dm.train_dataset) == 991  # the reference's len(dataset) draws
    counts = torch.bincount(dm.train_dataset.groups[idx], minlength=4).double()
    # each group has probability 1/4 per draw; 4 sigma of Binomial(991, 1/4) is about 55
    assert bool(((counts - 991 / 4).abs() < 4 * math.sqrt(991 * 3 / 16)).all())
    # minority samples repeat, majority ones are mostly left out: far from the 95/5 split
    assert counts[1] + counts[2] > 0.4 * 991


def test_group_balanced_takes_world_size_and_rank_from_the_trainer():
    from types import SimpleNamespace

    dm = SpuriousDigitsDataModule(image_size=8, group_balanced="subsample")
    dm.trainer = SimpleNamespace(
        world_size=2,
        global_rank=1,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
    )
    sampler = dm.train_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (2, 1, 50)
    dm.trainer = SimpleNamespace(
        world_size=2,
        global_rank=0,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=True),
    )
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


def test_group_balanced_trains_in_lightning_with_short_epochs(tmp_path):
    import lightning as L

    from lightning_losses.tasks.classification import ClassificationModule

    dm = SpuriousDigitsDataModule(image_size=8, batch_size=32, group_balanced="subsample")
    model = ClassificationModule(
        backbone="resnet10t", num_classes=2, num_groups=4, temperature_scaling=False
    )
    trainer = L.Trainer(
        max_epochs=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 4  # 100 images per epoch in batches of 32
    assert trainer.global_step == 8
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch


@pytest.mark.parametrize("value", ["balanced", "", 1, True])
def test_group_balanced_errors(value):
    with pytest.raises(ValueError, match="`group_balanced`"):
        SpuriousDigitsDataModule(group_balanced=value)
