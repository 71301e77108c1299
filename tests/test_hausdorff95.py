"""HD95 against a naive float64 double loop and against MONAI's compute_hausdorff_distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_losses.tasks.hausdorff import HausdorffDistance95, hd95


def _naive_hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """Boundary pixels by the 4-neighbour rule, distances by a loop over every pixel pair."""

    def boundary(mask):
        h, w = mask.shape
        out = []
        for y in range(h):
            for x in range(w):
                if not mask[y, x]:
                    continue
                neighbours = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
                if any(not (0 <= a < h and 0 <= b < w) or not mask[a, b] for a, b in neighbours):
                    out.append((y, x))
        return out

    bp, bg = boundary(pred), boundary(target)

    def directed(src, dst):
        return [min(math.hypot(y - v, x - u) for v, u in dst) for y, x in src]

    return max(np.percentile(directed(bp, bg), 95), np.percentile(directed(bg, bp), 95))


def _masks(seed: int, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.zeros((size, size), bool)
    target[
        rng.integers(0, 8) : rng.integers(10, size), rng.integers(0, 6) : rng.integers(8, 14)
    ] = 1
    pred = np.roll(target, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    pred |= rng.random((size, size)) > 0.93  # specks far from the structure
    return pred, target


@pytest.mark.parametrize("seed", range(4))
def test_hd95_equals_the_naive_loop(seed):
    pred, target = _masks(seed)
    assert hd95(pred, target) == pytest.approx(_naive_hd95(pred, target), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_equals_monai(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, target = _masks(seed)

    def onehot(mask):
        return F.one_hot(torch.as_tensor(mask, dtype=torch.long), 2).permute(2, 0, 1)[None]

    theirs = monai_metrics.compute_hausdorff_distance(
        onehot(pred), onehot(target), include_background=False, percentile=95
    )
    assert hd95(pred, target) == pytest.approx(float(theirs), abs=1e-5)


def test_metric_averages_defined_pairs_and_counts_the_empty_ones():
    pred, target = _masks(0)
    preds = torch.as_tensor(np.stack([pred, np.zeros_like(pred)])).long()
    targets = torch.as_tensor(np.stack([target, target])).long()
    metric = HausdorffDistance95(num_classes=2)
    metric.update(preds[:1], targets[:1])
    metric.update(preds[1:], targets[1:])  # an empty prediction: undefined, not averaged
    result = metric.compute()
    assert float(result["hd95"]) == pytest.approx(hd95(pred, target))
    assert float(result["hd95_undefined"]) == 0.5


def test_identical_masks_have_zero_distance_and_bad_shapes_are_named():
    _, target = _masks(1)
    assert hd95(target, target) == 0.0
    with pytest.raises(ValueError, match="`preds` and `target` must be class indices"):
        HausdorffDistance95(2).update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="`percentile`"):
        HausdorffDistance95(2, percentile=120)
