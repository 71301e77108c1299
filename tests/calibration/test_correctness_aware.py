"""Correctness-aware (CA) calibration: the ``correctness_aware`` loss against a naive float64 loop,
and ``CorrectnessAwareCalibrator`` on a synthetic over-confident problem.

What was checked against the sources (Liu, Wang, Zou, Zou, Zheng, "Optimizing Calibration by
Gaining Aware of Prediction Correctness", arXiv 2404.13016; official code
github.com/liuyvchi/Correctness-aware-calibration):

* The loss (``src/cal_metrics/temperature_scaling_CA.py``, ``Temperature_adaptive.set_temperature``:
  ``loss_CA = mse_criterion(conf_out, correctness.float())``): the squared error between the
  calibrated max-softmax confidence and the correctness ``argmax(original logits) == label``.
  Squared error, not BCE (a BCE head exists in that file but only for a logged side output).
* Class balance (same function): correct samples weighted by ``1 - acc``, wrong ones by ``acc``
  (acc of the mini-batch), loss ``sum(w * l) / sum(w)``; reproduced in ``fit(balanced=True)``.
* Calibrator (same file, ``Temperature_adaptive``): ``Linear(12, 5)``, ReLU, ``Linear(5, 1)``, the
  output clamped to [0.1, 10] is a per-sample temperature, calibrated logits = logits / T.
  Here: the same layers and range, reached through a sigmoid in log space (a clamp has no
  gradient outside its range), last layer at zero so that T = 1 before fitting.
* Cues (``src/run_cal.py``: ``temp_args = cat([p2topk1, p3topk1, p4topk1])``): the softmax of each
  of three transformed views gathered at the top-4 classes of the original logits (3 x 4 = 12).
* Views (``src/options.py``: prediction paths ``*_out_rotation``, ``*_out_grey``,
  ``*_out_colorjitter``; abstract: "rotated, greyscaled and color-jittered").
* Optimiser (``set_temperature``): Adam, lr 1e-4, 10 epochs, batches of 1000 (ImageNet val).
  Here: full batch, lr 1e-2, 500 steps by default (the same number of steps).

Not verified: the rotation angle and the colour-jitter strengths (the released code reads
pre-computed logits; the script that made them is not in the repository), so
``augmentation_views`` uses 90 degrees and factors of 1.2, a documented choice. The paper's text
(equations, section numbers) could not be read in full; the formula follows the code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_losses import build_loss, loss_info
from lightning_losses.calibration import (
    CalibrationReport,
    CorrectnessAwareCalibrator,
    augmentation_views,
)
from lightning_losses.losses import CorrectnessAwareLoss


@pytest.fixture(autouse=True)
def _one_thread():
    """The fits are many tiny ops; on a small shared machine one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# naive float64 reference, written from the formula


def naive_ca(z, y, *, weight=None, ignore_index=-100):
    out = []
    for row, t in zip(z.double().tolist(), y.tolist(), strict=True):
        if t == ignore_index:
            out.append(0.0)
            continue
        m = max(row)
        s = sum(math.exp(v - m) for v in row)
        conf = 1.0 / s  # exp(max - max) / sum
        pred = row.index(m)
        a = 1.0 if pred == t else 0.0
        w = 1.0 if weight is None else weight[t]
        out.append(w * (conf - a) ** 2)
    return torch.tensor(out, dtype=torch.float64)


def _ece(logits, labels):
    report = CalibrationReport(num_classes=logits.shape[1], n_bins=15)
    report.update(logits, labels)
    d = report.compute()
    return float(d["ece"]), float(d["accuracy"])


def _problem(n, seed, k=10, d=16, scale=3.0, noise=0.1):
    """Logits of a known linear model whose labels are drawn from its own softmax (so the
    unscaled logits are calibrated), 10% of the labels then replaced at random, and the logits
    multiplied by ``scale`` (over-confident). Fixed weights; ``seed`` picks the samples."""
    w = torch.randn(d, k, generator=torch.Generator().manual_seed(123)) * 0.5
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g) @ w
    y = torch.multinomial(F.softmax(z, dim=1), 1, generator=g).squeeze(1)
    flip = torch.rand(n, generator=g) < noise
    y = torch.where(flip, torch.randint(0, k, (n,), generator=g), y)
    return z * scale, y, g


def _views(z, y, g, num=3):
    """Synthetic transformed views: the prediction is stabler under transformation when it is
    right (correct samples get less noise), the cue the paper relies on."""
    correct = (z.argmax(1) == y).float()[:, None]
    sigma = 0.5 + 2.5 * (1 - correct)
    return [z + sigma * torch.randn(z.shape, generator=g) for _ in range(num)]


# ---------------------------------------------------------------------------------------------
# the loss


def test_registered_with_metadata():
    info = loss_info("correctness_aware")
    assert info.family == "calibration"
    assert info.cls is CorrectnessAwareLoss
    assert "Liu" in info.paper and "Correctness" in info.paper
    assert info.target == "index"


@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_loss_matches_naive_loop(scale):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 6, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 6, (40,), generator=g)
    y[:10] = z[:10].argmax(1)  # ensure both outcomes occur
    got = build_loss("correctness_aware", reduction="none")(z, y)
    torch.testing.assert_close(got, naive_ca(z, y), rtol=1e-12, atol=1e-12)
    assert got[:10].max() < 1.0  # correct: (1 - c)^2 < 1
    torch.testing.assert_close(build_loss("correctness_aware")(z, y), naive_ca(z, y).mean())


def test_loss_weight_and_ignore_index():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (12,), generator=g)
    y[[2, 7]] = -1
    w = [1.0, 2.0, 0.5, 3.0]
    got = CorrectnessAwareLoss(weight=w, ignore_index=-1, reduction="none")(z, y)
    torch.testing.assert_close(got, naive_ca(z, y, weight=w, ignore_index=-1))
    assert got[2] == 0 and got[7] == 0


def test_dense_input_averages_each_sample_elements():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 5, 2), generator=g)
    got = CorrectnessAwareLoss(reduction="none")(z, y)
    rows = z.movedim(1, -1).reshape(3, 10, 4)
    want = torch.stack([naive_ca(rows[i], y[i].reshape(-1)).mean() for i in range(3)])
    torch.testing.assert_close(got, want)


def test_wrong_prediction_pushes_temperature_up_and_correct_down():
    """The calibration aim: a wrong prediction should lose confidence (d loss / d T < 0), a
    right one gain it (d loss / d T > 0), even when the wrong one is a narrow miss."""
    z = torch.tensor([[2.0, 1.6, -1.0], [2.0, 0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])  # row 0: narrowly wrong; row 1: right
    t = torch.ones(2, dtype=torch.float64, requires_grad=True)
    CorrectnessAwareLoss(reduction="sum")(z / t[:, None], y).backward()
    assert t.grad[0] < 0 < t.grad[1]


def test_finite_at_saturated_logits_and_confident_correct_is_zero():
    z = torch.tensor([[100.0, -100.0, -100.0], [-100.0, 100.0, 100.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = CorrectnessAwareLoss(reduction="none")(z, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    assert loss[0] == 0  # confident and right
    torch.testing.assert_close(loss[1], torch.tensor(0.25))  # 50/50 tie, wrong


def test_loss_errors():
    loss = CorrectnessAwareLoss()
    z = torch.randn(4, 3)
    with pytest.raises(TypeError, match="soft targets"):
        loss(z, F.softmax(torch.randn(4, 3), dim=1))
    with pytest.raises(ValueError, match="input"):
        loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        loss(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="target"):
        loss(z, torch.zeros(5, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# the calibrator


def test_unfitted_calibrator_is_identity():
    z = torch.randn(8, 5)
    cal = CorrectnessAwareCalibrator()
    torch.testing.assert_close(cal.temperature(z), torch.ones(8))
    torch.testing.assert_close(cal(z), z)
    assert not any(p.requires_grad for p in cal.parameters())


def test_fit_lowers_ece_and_keeps_every_prediction():
    z_val, y_val, _ = _problem(2000, seed=1)
    z_test, y_test, _ = _problem(2000, seed=2)
    cal = CorrectnessAwareCalibrator().fit(z_val, y_val)
    assert cal is not None and not any(p.requires_grad for p in cal.parameters())
    out = cal(z_test)
    assert torch.equal(out.argmax(1), z_test.argmax(1))
    ece_raw, acc_raw = _ece(z_test, y_test)
    ece_cal, acc_cal = _ece(out, y_test)
    assert acc_cal == acc_raw
    assert ece_raw > 0.15, "the synthetic problem must be miscalibrated"
    assert ece_cal < 0.5 * ece_raw, (ece_raw, ece_cal)
    t = cal.temperature(z_test)
    assert (t > 1.5).all() and (t < 10).all()  # it undoes the x3 over-confidence


def test_fit_with_views_lowers_ece_and_separates_correct_from_wrong():
    z_val, y_val, g = _problem(2000, seed=3)
    v_val = _views(z_val, y_val, g)
    z_test, y_test, g = _problem(2000, seed=4)
    v_test = _views(z_test, y_test, g)
    cal = CorrectnessAwareCalibrator(num_views=3).fit(
        z_val, y_val, views=v_val, epochs=30, batch_size=500
    )
    out = cal(z_test, views=torch.stack(v_test))
    assert torch.equal(out.argmax(1), z_test.argmax(1))
    ece_raw, _ = _ece(z_test, y_test)
    ece_cal, _ = _ece(out, y_test)
    assert ece_cal < 0.5 * ece_raw, (ece_raw, ece_cal)
    correct = z_test.argmax(1) == y_test
    t = cal.temperature(z_test, v_test)
    assert t[~correct].mean() > t[correct].mean()  # the views' cue is used


def test_fit_is_seeded():
    z, y, _ = _problem(300, seed=5)
    a = CorrectnessAwareCalibrator().fit(z, y, epochs=50, seed=7)
    b = CorrectnessAwareCalibrator().fit(z, y, epochs=50, seed=7)
    c = CorrectnessAwareCalibrator().fit(z, y, epochs=50, seed=8)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.embed.weight, c.embed.weight)
    # a second fit starts afresh: refitting gives the same result
    assert torch.equal(a.fit(z, y, epochs=50, seed=8).embed.weight, c.embed.weight)


def test_balanced_weighting_changes_the_fit():
    z, y, _ = _problem(400, seed=6)
    a = CorrectnessAwareCalibrator().fit(z, y, epochs=50, balanced=True)
    b = CorrectnessAwareCalibrator().fit(z, y, epochs=50, balanced=False)
    assert not torch.equal(a.temperature(z), b.temperature(z))


def test_calibrator_errors():
    z = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    with pytest.raises(ValueError, match="t_min"):
        CorrectnessAwareCalibrator(t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match="top_k"):
        CorrectnessAwareCalibrator(top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        CorrectnessAwareCalibrator(top_k=6)(z)
    with pytest.raises(ValueError, match="logits"):
        CorrectnessAwareCalibrator()(torch.randn(6))
    with pytest.raises(ValueError, match="views"):
        CorrectnessAwareCalibrator(num_views=2)(z)
    with pytest.raises(ValueError, match="views"):
        CorrectnessAwareCalibrator(num_views=2)(z, views=[z])
    with pytest.raises(ValueError, match=r"views\[1\]"):
        CorrectnessAwareCalibrator(num_views=2)(z, views=[z, torch.randn(5, 5)])
    with pytest.raises(ValueError, match="num_views=0"):
        CorrectnessAwareCalibrator()(z, views=[z])
    with pytest.raises(TypeError, match="labels"):
        CorrectnessAwareCalibrator().fit(z, y.float())
    with pytest.raises(ValueError, match="labels"):
        CorrectnessAwareCalibrator().fit(z, y[:5])
    with pytest.raises(ValueError, match="labels"):
        CorrectnessAwareCalibrator().fit(z, torch.full((6,), 5))
    with pytest.raises(ValueError, match="epochs"):
        CorrectnessAwareCalibrator().fit(z, y, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        CorrectnessAwareCalibrator().fit(z, y, lr=-1.0)
    with pytest.raises(ValueError, match="logits"):
        CorrectnessAwareCalibrator().fit(torch.full((6, 5), float("nan")), y)


# ---------------------------------------------------------------------------------------------
# the image views


def test_augmentation_views():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g)
    rotated, grey, jitter = augmentation_views(images)
    assert torch.equal(rotated, torch.rot90(images, 1, dims=(2, 3)))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    torch.testing.assert_close(
        grey[:, 0], 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    )
    assert jitter.shape == images.shape and jitter.min() >= 0 and jitter.max() <= 1
    assert not torch.equal(jitter, images)
    with pytest.raises(ValueError, match="images"):
        augmentation_views(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="square"):
        augmentation_views(torch.rand(2, 3, 8, 6))
