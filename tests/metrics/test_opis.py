"""OPIS against a naive float64 loop over unordered pairs (NumPy quantiles for the calibration
range), its extreme cases, the Metric's accumulation and chunking, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_losses.metrics.opis import OPIS, operating_point_inconsistency


def _data(n=30, d=4, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64)
    spread = torch.linspace(0.2, 1.5, classes, dtype=torch.float64)[y, None]  # uneven classes
    x = centres[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = y.clone()
    y[-1] = 99  # a singleton class: negatives only, not evaluated
    return x, y


def opis_reference(x, y, thresholds=None, far_range=(0.01, 0.1), num_thresholds=101):
    x = x.numpy()
    y = y.tolist()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(y)
    pairs = [(i, j, float(unit[i] @ unit[j])) for i in range(n) for j in range(i + 1, n)]
    negatives = [s for i, j, s in pairs if y[i] != y[j]]
    if thresholds is None:
        low = np.quantile(negatives, 1 - far_range[1])
        high = np.quantile(negatives, 1 - far_range[0])
    else:
        low, high = thresholds
    grid = np.linspace(low, high, num_thresholds)

    def utility(pos, neg, t):
        tar = sum(s >= t for s in pos) / len(pos)
        trr = sum(s < t for s in neg) / len(neg)
        return 0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr)

    all_pos = [s for i, j, s in pairs if y[i] == y[j]]
    classes = [c for c in sorted(set(y)) if y.count(c) >= 2]
    total = 0.0
    for c in classes:
        pos = [s for i, j, s in pairs if y[i] == y[j] == c]
        neg = [s for i, j, s in pairs if (y[i] == c) != (y[j] == c)]
        gaps = [utility(pos, neg, t) - utility(all_pos, negatives, t) for t in grid]
        total += np.mean(np.square(gaps))
    return total / len(classes)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_naive_loop_with_the_far_calibration(seed):
    x, y = _data(seed=seed)
    ours = operating_point_inconsistency(x, y, num_thresholds=21)
    expected = opis_reference(x, y, num_thresholds=21)
    assert ours.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert ours > 0


def test_matches_a_naive_loop_with_fixed_thresholds():
    x, y = _data()
    ours = operating_point_inconsistency(x, y, thresholds=(-0.2, 0.8), num_thresholds=11)
    expected = opis_reference(x, y, thresholds=(-0.2, 0.8), num_thresholds=11)
    assert ours.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_identical_classes_are_perfectly_consistent():
    """Every class an identical cluster, clusters orthogonal: every class has the same utility
    as the pooled pairs at every threshold."""
    x = torch.eye(4, dtype=torch.float64).repeat_interleave(3, 0)
    y = torch.arange(4).repeat_interleave(3)
    assert operating_point_inconsistency(x, y, thresholds=(0.1, 0.9)) == 0


def test_metric_accumulates_batches_and_chunks_change_nothing():
    x, y = _data()
    metric = OPIS(num_thresholds=21, chunk_size=7)
    for part in torch.arange(30).split(8):
        metric.update(x[part], y[part])
    expected = operating_point_inconsistency(x, y, num_thresholds=21)
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-12, atol=1e-15)
    metric.reset()
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(ValueError, match="needs at least one update"),
    ):
        metric.compute()


def test_bad_input_and_options_are_clear_errors():
    x, y = _data()
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(N, D\)"):
        operating_point_inconsistency(x[:, 0], y)
    with pytest.raises(ValueError, match=r"`labels` must hold one label per embedding"):
        OPIS().update(x, y[:5])
    with pytest.raises(TypeError, match="`labels` must be an integer tensor"):
        OPIS().update(x, y.double())
    with pytest.raises(ValueError, match="`thresholds` must be increasing"):
        OPIS(thresholds=(0.5, 0.2))
    with pytest.raises(ValueError, match="`far_range` must lie in"):
        OPIS(far_range=(0.01, 2.0))
    with pytest.raises(ValueError, match="at least one class with two samples"):
        operating_point_inconsistency(x[:3], torch.arange(3))
