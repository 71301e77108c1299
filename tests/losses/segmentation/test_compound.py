"""CompoundLoss: the weighted per-sample sum, deep supervision, schedules and late terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss
from lightning_losses.losses import CompoundLoss, LinearSchedule
from lightning_losses.losses.compound import deep_supervision_weights, resize_target
from lightning_losses.testing import no_host_sync


def _batch(n=3, k=3, size=(8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, *size, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n, *size), generator=g)
    return x, y


def test_weighted_sum_per_sample_and_terms_logged_by_name():
    x, y = _batch()
    ce = build_loss("cross_entropy", reduction="none")
    dice = build_loss("dice", reduction="none")
    loss = CompoundLoss({"cross_entropy": {}, "dice": {}}, [1.0, 0.5], reduction="none")
    expected = ce(x, y) + 0.5 * dice(x, y)
    got = loss(x, y)
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(CompoundLoss(weights=[1.0, 0.5])(x, y), expected.mean())
    assert set(loss.last_terms) == {"cross_entropy", "dice"}
    torch.testing.assert_close(loss.last_terms["dice"], dice(x, y).mean())


def test_weights_as_a_mapping_and_built_terms():
    x, y = _batch()
    terms = {"region": build_loss("dice"), "ce": build_loss("cross_entropy")}
    loss = CompoundLoss(terms, {"ce": 2.0})
    expected = build_loss("dice")(x, y) + 2.0 * build_loss("cross_entropy")(x, y)
    torch.testing.assert_close(loss(x, y), expected)


def test_deep_supervision_resizes_targets_and_weights_outputs_as_nnunet():
    x, y = _batch(size=(8, 8))
    side = F.avg_pool2d(x, 2)
    smallest = F.avg_pool2d(x, 4)
    dice = build_loss("dice", reduction="none")
    loss = CompoundLoss(["dice"], reduction="none")
    v = deep_supervision_weights(3)
    torch.testing.assert_close(v, [4 / 7, 2 / 7, 1 / 7])
    y2 = F.interpolate(y[:, None].float(), size=(4, 4), mode="nearest").long()[:, 0]
    y4 = F.interpolate(y[:, None].float(), size=(2, 2), mode="nearest").long()[:, 0]
    expected = v[0] * dice(x, y) + v[1] * dice(side, y2) + v[2] * dice(smallest, y4)
    torch.testing.assert_close(loss([x, side, smallest], y), expected)
    equal = CompoundLoss(["dice"], deep_supervision_weights=[1.0, 1.0], reduction="none")
    torch.testing.assert_close(equal([x, side], y), dice(x, y) + dice(side, y2))


def test_resize_target_keeps_labels_and_soft_targets_distributions():
    y = torch.tensor([[[0, 0, 255, 255], [0, 0, 255, 255], [1, 1, 2, 2], [1, 1, 2, 2]]])
    small = resize_target(y, (2, 2), dense=False)
    assert small.dtype == y.dtype and small.tolist() == [[[0, 255], [1, 2]]]
    soft = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    pooled = resize_target(soft, (4, 4), dense=True)
    torch.testing.assert_close(pooled.sum(1), torch.ones(2, 4, 4))


def test_context_terms_see_the_full_resolution_output_only():
    x, y = _batch(k=2, size=(8, 8))
    skeleton = (y > 0).long()
    recall = build_loss("skeleton_recall", reduction="none")
    dice = build_loss("dice", reduction="none")
    loss = CompoundLoss(["dice", "skeleton_recall"], deep_supervision_weights=[1.0, 1.0])
    side = F.avg_pool2d(x, 2)
    y2 = resize_target(y, (4, 4), dense=False)
    expected = dice(x, y) + dice(side, y2) + recall(x, y, skeleton=skeleton)
    torch.testing.assert_close(
        loss.__class__(
            ["dice", "skeleton_recall"], deep_supervision_weights=[1.0, 1.0], reduction="none"
        )([x, side], y, skeleton=skeleton),
        expected,
    )
    assert loss.context == ("skeleton",)
    with pytest.raises(TypeError, match="skeleton"):
        loss(x, y)


def test_a_scheduled_weight_follows_the_epoch():
    x, y = _batch(k=2)
    phi = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    loss = CompoundLoss(
        ["dice", "boundary"],
        schedules={
            "dice": {"start": 1.0, "end": 0.01, "epochs": 99},
            "boundary": LinearSchedule(0.0, 0.99, 99),
        },
    )
    assert loss.context == ("epoch", "distance")
    dice, boundary = build_loss("dice")(x, y), build_loss("boundary")(x, y, distance=phi)
    for epoch, alpha in ((0, 1.0), (10, 0.9), (99, 0.01), (150, 0.01)):
        torch.testing.assert_close(
            loss(x, y, epoch=epoch, distance=phi), alpha * dice + (1 - alpha) * boundary
        )
    # a float epoch is a per-step schedule
    torch.testing.assert_close(
        loss(x, y, epoch=10.5, distance=phi), 0.895 * dice + 0.105 * boundary
    )


def test_activate_when_skips_a_term_until_its_fraction_of_training():
    x, y = _batch(k=2)
    calls = []

    class Counting(type(build_loss("cldice"))):
        def per_sample(self, input, target, **context):
            calls.append(1)
            return super().per_sample(input, target, **context)

    loss = CompoundLoss({"dice": {}, "cldice": Counting()}, activate_when={"cldice": 0.7})
    with pytest.raises(ValueError, match="max_epochs"):
        loss(x, y, epoch=0)
    loss.max_epochs = 10
    torch.testing.assert_close(loss(x, y, epoch=6), build_loss("dice")(x, y))
    assert not calls and set(loss.last_terms) == {"dice"}
    expected = build_loss("dice")(x, y) + build_loss("cldice")(x, y)
    torch.testing.assert_close(loss(x, y, epoch=7), expected)
    assert calls and set(loss.last_terms) == {"dice", "cldice"}


def test_every_term_inactive_gives_zero_with_a_gradient():
    x, y = _batch()
    x.requires_grad_(True)
    loss = CompoundLoss(["dice"], activate_when={"dice": 0.5}, max_epochs=4)
    out = loss(x, y, epoch=0)
    out.backward()
    assert out == 0 and torch.equal(x.grad, torch.zeros_like(x))


def test_ignored_samples_stay_out_of_the_mean():
    x, y = _batch()
    y[1] = 255
    loss = CompoundLoss({"dice": {"ignore_index": 255}, "cross_entropy": {"ignore_index": 255}})
    none = CompoundLoss(
        {"dice": {"ignore_index": 255}, "cross_entropy": {"ignore_index": 255}},
        reduction="none",
    )(x, y)
    assert none[1] == 0
    torch.testing.assert_close(loss(x, y), (none[0] + none[2]) / 2)


def test_no_host_read_with_deep_supervision_and_a_schedule():
    x, y = _batch(k=2)
    x = x.float().requires_grad_(True)
    loss = CompoundLoss(
        ["cross_entropy", "dice"], schedules={"dice": {"start": 0, "end": 1, "epochs": 5}}
    )
    with no_host_sync():
        loss([x, F.avg_pool2d(x, 2)], y, epoch=2).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"terms": []}, ValueError, "at least one"),
        ({"terms": ["dice", "dice"]}, ValueError, "each loss once"),
        ({"terms": ["dcie"]}, ValueError, "Did you mean 'dice'"),
        ({"weights": [1.0]}, ValueError, "one weight per loss term"),
        ({"schedules": {"focal": {"start": 1}}}, ValueError, "keyed by the term names"),
        ({"schedules": {"dice": {"begin": 1}}}, ValueError, "LinearSchedule arguments"),
        ({"schedules": {"dice": 3}}, TypeError, "callable"),
        ({"activate_when": {"dice": 1.5}}, ValueError, "activate_when"),
        ({"terms": {"dice": torch.nn.MSELoss()}}, TypeError, "lightning_losses Loss"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        CompoundLoss(**kwargs)


def test_side_outputs_of_another_batch_size_are_a_clear_error():
    x, y = _batch()
    with pytest.raises(ValueError, match=r"input\[1\]"):
        CompoundLoss()([x, x[:2]], y)
    with pytest.raises(ValueError, match="deep_supervision_weights"):
        CompoundLoss(deep_supervision_weights=[1.0])([x, x], y)


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 6)], ids=["2d", "3d"])
def test_cross_entropy_plus_dice_equals_monai_dice_ce(spatial):
    """The default compound is MONAI's ``DiceCELoss`` (same smoothing, weights 1 and 1)."""
    monai_losses = pytest.importorskip("monai.losses")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, *spatial, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 4, (3, *spatial), generator=g)
    ours = CompoundLoss()(x, y)
    x2 = x.detach().clone().requires_grad_(True)
    theirs = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True)(x2, y.unsqueeze(1))
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(x.grad, x2.grad)
