"""Topology metrics: clDice against a float64 loop, Betti errors on known shapes, batch and
process reduction semantics, layouts and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from lightning_losses.metrics import BettiMatchingError, BettiNumberError, ClDiceScore
from lightning_losses.metrics.topology import cl_dice


def _disk(size, radius, center):
    yy, xx = np.mgrid[:size, :size]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _ring(size=32, center=(16, 16)):
    return _disk(size, 10, center) & ~_disk(size, 6, center)


def _line(size=32, gap=False):
    m = np.zeros((size, size), bool)
    m[15:18, 3:29] = True
    if gap:
        m[:, 14:18] = False
    return m


def _blobs(n, size=24, seed=0):
    """Random smooth binary masks (thresholded blurred noise)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2))
    return torch.from_numpy(noise > 0.05)


def _naive_cl_dice(p: np.ndarray, g: np.ndarray) -> float:
    """clDice from its definition, sums as float64 loops over the pixels."""
    sp, sg = skeletonize(p), skeletonize(g)
    hits_p = hits_g = len_p = len_g = 0.0
    for idx in np.ndindex(p.shape):
        len_p += float(sp[idx])
        len_g += float(sg[idx])
        hits_p += float(sp[idx] and g[idx])
        hits_g += float(sg[idx] and p[idx])
    t_prec, t_sens = hits_p / len_p, hits_g / len_g
    return 2 * t_prec * t_sens / (t_prec + t_sens)


def test_cl_dice_is_one_for_identical_masks_and_lower_for_a_broken_line():
    for mask in (_ring(), _line()):
        assert cl_dice(mask, mask) == 1.0
    broken = cl_dice(_line(gap=True), _line())
    assert 0.5 < broken < 1.0
    metric = ClDiceScore()
    metric.update(
        torch.tensor(np.stack([_line(gap=True), _ring()])),
        torch.tensor(np.stack([_line(), _ring()])),
    )
    torch.testing.assert_close(
        metric.compute(), torch.tensor((broken + 1.0) / 2, dtype=torch.float64)
    )


def test_cl_dice_equals_a_naive_float64_loop():
    preds, target = _blobs(6, seed=1), _blobs(6, seed=2)
    metric = ClDiceScore()
    metric.update(preds, target)
    expected = np.mean(
        [_naive_cl_dice(p.numpy(), g.numpy()) for p, g in zip(preds, target, strict=True)]
    )
    torch.testing.assert_close(metric.compute(), torch.tensor(expected, dtype=torch.float64))


def test_cl_dice_empty_masks():
    empty, line = np.zeros((32, 32), bool), _line()
    assert cl_dice(empty, empty) == 1.0
    assert cl_dice(empty, line) == 0.0 and cl_dice(line, empty) == 0.0


@pytest.mark.parametrize("metric_cls", [ClDiceScore, BettiNumberError, BettiMatchingError])
def test_two_batches_equal_one_and_merged_processes_equal_one(metric_cls):
    preds, target = _blobs(8, seed=3), _blobs(8, seed=4)
    whole, split = metric_cls(), metric_cls()
    whole.update(preds, target)
    split.update(preds[:3], target[:3])
    split.update(preds[3:], target[3:])
    # Two "ranks" with disjoint halves, states combined as DDP's sum reduction does.
    rank0, rank1 = metric_cls(), metric_cls()
    rank0.update(preds[::2], target[::2])
    rank1.update(preds[1::2], target[1::2])
    rank0.merge_state(rank1)
    for other in (split, rank0):
        torch.testing.assert_close(other.compute(), whole.compute())
    for name, reduce in whole._reductions.items():
        assert reduce is not None, name  # every state has a dist_reduce_fx


def test_betti_number_error_on_known_shapes():
    disk = _disk(32, 10, (16, 16))
    two = _disk(32, 5, (8, 8)) | _disk(32, 5, (22, 22))
    preds = torch.tensor(np.stack([_ring(), two, disk]))
    target = torch.tensor(np.stack([disk, disk, disk]))
    metric = BettiNumberError()
    metric.update(preds, target)
    out = metric.compute()
    assert set(out) == {"betti_0", "betti_1"}
    torch.testing.assert_close(out["betti_0"], torch.tensor(1 / 3, dtype=torch.float64))
    torch.testing.assert_close(out["betti_1"], torch.tensor(1 / 3, dtype=torch.float64))


def test_betti_matching_sees_displaced_features_that_betti_numbers_miss():
    gt = _disk(40, 5, (10, 10)) | _disk(40, 5, (10, 28))
    pred = _disk(40, 5, (28, 10)) | _disk(40, 5, (28, 28))
    preds, target = torch.tensor(pred[None]), torch.tensor(gt[None])
    numbers, matching = BettiNumberError(), BettiMatchingError()
    numbers.update(preds, target), matching.update(preds, target)
    assert numbers.compute()["betti_0"] == 0
    assert matching.compute() == {"betti_matching_0": 4.0, "betti_matching_1": 0.0}


def test_probabilities_are_thresholded_and_a_channel_axis_is_accepted():
    masks = _blobs(4, seed=5)
    probs = (0.8 * masks.double() + 0.1)[:, None]  # (N, 1, H, W)
    a, b = ClDiceScore(), ClDiceScore(threshold=0.5)
    a.update(masks, masks)
    b.update(probs, masks[:, None].long())
    assert a.compute() == b.compute() == 1.0
    c = ClDiceScore(threshold=0.95)  # nothing predicted: every non-empty image scores 0
    c.update(probs, masks)
    assert c.compute() == 0.0


def test_multiclass_scores_each_foreground_class_per_image():
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 15:18, 3:29] = 1
    target[:, 3:29, 6:9] = 2
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    broken = logits.clone()
    broken[0, 1, :, 14:18] = 0.0  # class 1 broken in image 0 (those pixels become class 0)
    metric = ClDiceScore("multiclass", num_classes=3)
    metric.update(broken, target)
    expected = (cl_dice(broken[0].argmax(0).numpy() == 1, target[0].numpy() == 1) + 3.0) / 4
    torch.testing.assert_close(metric.compute(), torch.tensor(expected, dtype=torch.float64))
    assert metric.count == 4
    with_background = ClDiceScore("multiclass", num_classes=3, include_background=True)
    with_background.update(target, target)  # index predictions
    assert with_background.count == 6 and with_background.compute() == 1.0


def test_multilabel_and_three_dimensional_inputs():
    vol = np.zeros((16, 16, 16), bool)
    vol[4:12, 4:12, 4:12] = True
    shell = vol.copy()
    shell[7:9, 7:9, 7:9] = False  # a cavity
    preds = torch.tensor(np.stack([shell, vol]))[None].float()  # (1, 2, D, H, W) channels
    target = torch.tensor(np.stack([vol, vol]))[None].long()
    metric = BettiNumberError("multilabel", spatial_dims=3, include_background=True)
    metric.update(preds, target)
    out = metric.compute()
    assert set(out) == {"betti_0", "betti_1", "betti_2"}
    assert out["betti_2"] == 0.5 and out["betti_0"] == 0 and out["betti_1"] == 0
    matching = BettiMatchingError(spatial_dims=3)
    matching.update(torch.tensor(shell[None]), torch.tensor(vol[None]))
    assert matching.compute() == {"betti_matching_0": 0.0, "betti_matching_2": 1.0}
    cl = ClDiceScore(spatial_dims=3)
    cl.update(torch.tensor(vol[None]), torch.tensor(vol[None]))
    assert cl.compute() == 1.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`mode`"):
        ClDiceScore("multi")
    with pytest.raises(ValueError, match="`num_classes`"):
        BettiNumberError("multiclass")
    with pytest.raises(ValueError, match="`spatial_dims`"):
        ClDiceScore(spatial_dims=4)
    metric = ClDiceScore()
    with pytest.raises(ValueError, match="`target` must match"):
        metric.update(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="only 0 and 1"):
        metric.update(torch.zeros(2, 8, 8), torch.full((2, 8, 8), 2))
    with pytest.raises(ValueError, match=r"`preds` must be \(N, \*spatial\)"):
        metric.update(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    multiclass = ClDiceScore("multiclass", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3 channels"):
        multiclass.update(torch.zeros(2, 4, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` class indices"):
        multiclass.update(torch.zeros(2, 3, 8, 8), torch.full((2, 8, 8), 3))


@pytest.mark.parametrize("metric_cls", [ClDiceScore, BettiNumberError, BettiMatchingError])
def test_an_empty_batch_adds_nothing(metric_cls):
    kwargs = {"num_classes": 3} if metric_cls is ClDiceScore else {}
    mode = "multiclass" if metric_cls is ClDiceScore else "binary"
    metric = metric_cls(mode, **kwargs)
    empty = torch.zeros(0, 8, 8, dtype=torch.long)
    metric.update(empty, empty)
    assert metric.count == 0
