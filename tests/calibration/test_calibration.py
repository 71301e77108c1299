"""Calibration: MDCA / DCA losses against naive float64 loops, temperature scaling, the
calibration report against naive binned metrics and torchmetrics, and the reliability plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.classification import MulticlassCalibrationError

from lightning_losses import build_loss, list_losses, loss_info
from lightning_losses.calibration import (
    CalibrationReport,
    TemperatureScaler,
    adaptive_calibration_error,
    fit_temperature,
    fit_temperature_checked,
    plot_reliability_diagram,
    reliability_bins,
)
from lightning_losses.losses import DCALoss, MDCALoss

# ---------------------------------------------------------------------------------------------
# naive float64 references, written from the formulas


def _softmax_rows(z: torch.Tensor) -> list[list[float]]:
    rows = []
    for row in z.double().tolist():
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        rows.append([v / s for v in e])
    return rows


def naive_batch_penalty_loss(z, y, *, kind, beta, gamma=None, ignore_index=-100):
    """Per-sample values (N,) for (N, K) logits: base_i + beta * penalty, 0 where ignored."""
    p = _softmax_rows(z)
    labels = y.tolist()
    k = len(p[0])
    valid = [i for i, t in enumerate(labels) if t != ignore_index]
    m = len(valid)
    if kind == "mdca":
        pen = 0.0
        for c in range(k):
            mean_p = sum(p[i][c] for i in valid) / m
            mean_y = sum(1.0 for i in valid if labels[i] == c) / m
            pen += abs(mean_p - mean_y)
        pen /= k
    else:
        conf = sum(max(p[i]) for i in valid) / m
        acc = sum(1.0 for i in valid if max(range(k), key=lambda c: p[i][c]) == labels[i]) / m
        pen = abs(conf - acc)
    out = []
    for i, t in enumerate(labels):
        if t == ignore_index:
            out.append(0.0)
            continue
        base = -math.log(p[i][t])
        if gamma is not None:
            base *= (1.0 - p[i][t]) ** gamma
        out.append(base + beta * pen)
    return torch.tensor(out, dtype=torch.float64)


def naive_binned(conf, correct, n_bins):
    """Equal-width bins [b/B, (b+1)/B), confidences of exactly 1.0 in a bin of their own."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for c, a in zip(conf, correct, strict=True):
        b = max(j for j in range(n_bins + 1) if c >= j / n_bins)
        groups.setdefault(b, []).append((c, a))
    n = len(conf)
    gaps = {
        b: (abs(sum(a for _, a in g) / len(g) - sum(c for c, _ in g) / len(g)), len(g) / n)
        for b, g in groups.items()
    }
    ece = sum(gap * w for gap, w in gaps.values())
    mce = max(gap for gap, _ in gaps.values())
    rms = math.sqrt(sum(gap**2 * w for gap, w in gaps.values()))
    return ece, mce, rms


def naive_adaptive_ece(conf, correct, n_bins):
    order = np.argsort(np.asarray(conf), kind="stable")
    c = np.asarray(conf, dtype=np.float64)[order]
    a = np.asarray(correct, dtype=np.float64)[order]
    total = 0.0
    for cb, ab in zip(np.array_split(c, n_bins), np.array_split(a, n_bins), strict=True):
        if len(cb):
            total += len(cb) / len(c) * abs(ab.mean() - cb.mean())
    return total


def top_label(z, y):
    p = _softmax_rows(z)
    conf = [max(r) for r in p]
    correct = [
        float(max(range(len(r)), key=r.__getitem__) == t)
        for r, t in zip(p, y.tolist(), strict=True)
    ]
    return p, conf, correct


def make_logits(n=400, k=7, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n,), generator=g)
    return z, y


# ---------------------------------------------------------------------------------------------
# MDCA / DCA


def test_registered_with_family_and_paper():
    assert {"mdca", "dca"} <= set(list_losses("calibration"))
    assert "Stitch in Time" in loss_info("mdca").paper and "CVPR 2022" in loss_info("mdca").paper
    assert "BMVC 2020" in loss_info("dca").paper
    assert isinstance(build_loss("mdca"), MDCALoss)
    assert build_loss("mdca").beta == 1.0
    assert build_loss("dca").beta == 10.0


@pytest.mark.parametrize("kind", ["mdca", "dca"])
@pytest.mark.parametrize("base", ["cross_entropy", "focal"])
def test_matches_naive_loop_with_ignore(kind, base):
    z, y = make_logits(n=40, k=5)
    y[[3, 17, 29]] = -100
    beta = 0.7
    gamma = 2.0 if base == "focal" else None
    loss = build_loss(kind, beta=beta, base=base, gamma=gamma, reduction="none", ignore_index=-100)
    got = loss(z, y)
    ref = naive_batch_penalty_loss(z, y, kind=kind, beta=beta, gamma=gamma)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    mean = build_loss(kind, beta=beta, base=base, gamma=gamma, ignore_index=-100)(z, y)
    torch.testing.assert_close(mean, ref.sum() / 37, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["mdca", "dca"])
def test_mean_is_base_mean_plus_beta_penalty(kind):
    z, y = make_logits(n=32, k=4, seed=3)
    ce = F.cross_entropy(z, y)
    loss = build_loss(kind, beta=2.0)
    pen = (build_loss(kind, beta=1.0)(z, y) - ce).item()
    assert pen > 0
    torch.testing.assert_close(loss(z, y), ce + 2.0 * pen, rtol=1e-12, atol=1e-12)
    none = build_loss(kind, beta=2.0, reduction="none")(z, y)
    assert none.shape == (32,)
    assert torch.equal(none.mean(), loss(z, y))
    torch.testing.assert_close(build_loss(kind, beta=0.0)(z, y), ce)


@pytest.mark.parametrize("kind", ["mdca", "dca"])
def test_dense_input_uses_all_valid_elements(kind):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 4, 5, 2, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (3, 5, 2), generator=g)
    y[0, 1, 1] = y[2, 0, 0] = -100
    got = build_loss(kind, beta=1.5, reduction="none", ignore_index=-100)(z, y)
    rows = z.movedim(1, -1).reshape(-1, 4)
    flat = y.reshape(-1)
    elem = naive_batch_penalty_loss(rows, flat, kind=kind, beta=1.5).reshape(3, 10)
    mask = (flat != -100).reshape(3, 10).double()
    torch.testing.assert_close(got, (elem * mask).sum(1) / mask.sum(1), rtol=1e-10, atol=1e-12)


def test_class_weight_applies_to_base_only():
    z, y = make_logits(n=30, k=3, seed=7)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    got = MDCALoss(beta=1.0, weight=w, reduction="none")(z, y)
    pen = naive_batch_penalty_loss(z, y, kind="mdca", beta=1.0) - F.cross_entropy(
        z, y, reduction="none"
    )
    ref = F.cross_entropy(z, y, weight=w, reduction="none") + pen
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["mdca", "dca"])
def test_sample_weight_scales_broadcast_term(kind):
    z, y = make_logits(n=20, k=3, seed=11)
    sw = torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    per = build_loss(kind, reduction="none")(z, y)
    got = build_loss(kind)(z, y, sample_weight=sw)
    torch.testing.assert_close(got, (sw * per).sum() / 20)


@pytest.mark.parametrize("kind", ["mdca", "dca"])
@pytest.mark.parametrize("base", ["cross_entropy", "focal"])
def test_finite_gradients_at_saturated_logits(kind, base):
    g = torch.Generator().manual_seed(0)
    z = (torch.randint(0, 2, (16, 5), generator=g).float() * 200 - 100).requires_grad_()
    y = torch.randint(0, 5, (16,), generator=g)
    loss = build_loss(kind, base=base)(z, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all()


def test_mdca_gradcheck():
    z, y = make_logits(n=6, k=3, seed=2)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: MDCALoss(reduction="none")(t, y), (z,))


def test_all_ignored_gives_zero_and_finite_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.full((4,), -100)
    loss = MDCALoss(ignore_index=-100)(z, y)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z.grad).all()


def test_half_precision_input_close_to_float64():
    z, y = make_logits(n=64, k=6, seed=4)
    ref = MDCALoss()(z, y)
    got = MDCALoss()(z.half(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=5e-3, atol=5e-3)


def test_loss_errors_name_the_argument():
    with pytest.raises(ValueError, match="`base`"):
        MDCALoss(base="nll")
    with pytest.raises(ValueError, match="`gamma`"):
        MDCALoss(gamma=2.0)
    with pytest.raises(ValueError, match="`beta`"):
        DCALoss(beta=-1.0)
    with pytest.raises(ValueError, match="`target`"):
        MDCALoss()(torch.randn(4, 3), torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="`target`"):
        DCALoss()(torch.randn(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="`target`"):
        MDCALoss()(torch.randn(4, 3), torch.rand(4, 3))


# ---------------------------------------------------------------------------------------------
# temperature scaling


def _synthetic(t_true, n=6000, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 4
    y = torch.multinomial(F.softmax(z / t_true, dim=1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    z, y = _synthetic(t_true)
    t = fit_temperature(z, y)
    assert abs(t - t_true) < 0.08 * t_true
    assert F.cross_entropy(z / t, y) <= F.cross_entropy(z, y)


@pytest.mark.parametrize("seed", range(4))
def test_fit_temperature_never_increases_nll(seed):
    z, y = _synthetic(1.0, n=300, k=4, seed=seed)
    t = fit_temperature(z, y, max_iter=3)
    nll = F.cross_entropy(z.double() / t, y)
    assert nll <= F.cross_entropy(z.double(), y) + 1e-12


def test_fit_temperature_ignores_ignore_index_on_dense_input():
    z, y = _synthetic(2.0, n=2000, k=5)
    dense_z = z.reshape(100, 20, 5).movedim(2, 1)
    dense_y = y.reshape(100, 20).clone()
    dense_y[:, :2] = 255
    kept = dense_y != 255
    ref = fit_temperature(dense_z.movedim(1, -1)[kept], dense_y[kept])
    assert fit_temperature(dense_z, dense_y, ignore_index=255) == pytest.approx(ref, rel=1e-9)


def test_temperature_scaler_module():
    z, y = _synthetic(2.0, n=1000)
    scaler = TemperatureScaler()
    assert torch.equal(scaler(z), z)
    assert scaler.fit(z, y) is scaler
    assert scaler.temperature == pytest.approx(fit_temperature(z, y))
    torch.testing.assert_close(scaler(z), z / scaler.temperature)
    state = scaler.state_dict()
    assert list(state) == ["log_temperature"]
    assert list(scaler.parameters()) == []
    other = TemperatureScaler()
    other.load_state_dict(state)
    assert other.temperature == pytest.approx(scaler.temperature)
    assert scaler.double()(z.double()).dtype == torch.float64


def test_perfectly_separated_split_keeps_the_temperature_at_one():
    """All predictions correct: the NLL falls as T -> 0 with no finite minimiser, so an
    unguarded fit collapses T towards 0. The checked fit keeps T = 1 and says why."""
    z, _ = _synthetic(1.0, n=200)
    y = z.argmax(1)  # every prediction correct
    fit = fit_temperature_checked(z, y)
    assert fit.skipped and fit.temperature == 1.0 and "no finite minimiser" in fit.status
    assert fit.nll_after == fit.nll_before == pytest.approx(float(F.cross_entropy(z.double(), y)))
    # the unguarded optimum really is degenerate: a smaller T always lowers this split's NLL
    nll = [float(F.cross_entropy(z.double() / t, y)) for t in (1.0, 0.1, 0.01)]
    assert nll[0] > nll[1] > nll[2]
    scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature == 1.0 and scaler.last_fit == fit


def test_a_split_with_too_few_mistakes_is_not_trusted():
    """One wrong prediction sets the minimiser: T collapses and a test split's NLL explodes."""
    z, _ = _synthetic(1.0, n=400, k=10, seed=3)
    y = z.argmax(1)
    y[0] = (y[0] + 1) % 10  # a single mistake
    fit = fit_temperature_checked(z, y)
    assert fit.skipped and fit.temperature == 1.0 and "only 1 of 400" in fit.status
    # what the unguarded fit would have done: far below the logits' true temperature, 1
    assert fit_temperature_checked(z, y, min_errors=1, bounds=(1e-6, 1e6)).temperature < 0.5
    with pytest.raises(ValueError, match="`min_errors`"):
        fit_temperature_checked(z, y, min_errors=-1)


def test_optimum_outside_the_bounds_is_not_trusted():
    z, y = _synthetic(2.5)
    assert fit_temperature_checked(z, y).status == "fitted"
    fit = fit_temperature_checked(z, y, bounds=(0.5, 2.0))  # the optimum (~2.5) lies outside
    assert fit.skipped and fit.temperature == 1.0 and "outside the trusted range" in fit.status
    with pytest.raises(ValueError, match="`bounds`"):
        fit_temperature_checked(z, y, bounds=(1.5, 2.0))


def test_fitted_result_reports_the_nll_it_was_judged_on():
    z, y = _synthetic(2.5)
    fit = fit_temperature_checked(z, y)
    assert fit.temperature == pytest.approx(fit_temperature(z, y))
    assert fit.nll_after == pytest.approx(float(F.cross_entropy(z.double() / fit.temperature, y)))
    assert fit.nll_after < fit.nll_before


def test_temperature_errors():
    z, y = _synthetic(1.0, n=50)
    with pytest.raises(ValueError, match="`max_iter`"):
        fit_temperature(z, y, max_iter=0)
    with pytest.raises(ValueError, match="`labels`"):
        fit_temperature(z, y[:-1])
    with pytest.raises(ValueError, match="`labels`"):
        fit_temperature(z, torch.full((50,), 10))
    with pytest.raises(ValueError, match="`logits`"):
        fit_temperature(z[:, 0], y)
    with pytest.raises(ValueError, match="`temperature`"):
        TemperatureScaler(temperature=0.0)


# ---------------------------------------------------------------------------------------------
# calibration report


def _report_of(z, y, n_bins=15, chunks=3, **kwargs):
    report = CalibrationReport(num_classes=z.shape[1], n_bins=n_bins, **kwargs)
    for zc, yc in zip(z.chunk(chunks), y.chunk(chunks), strict=True):
        report.update(zc, yc)
    return report.compute()


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_report_binned_errors_match_naive_and_torchmetrics(n_bins):
    z, y = make_logits(n=600, k=5, scale=2.5, seed=1)
    d = _report_of(z, y, n_bins)
    _, conf, correct = top_label(z, y)
    ece, mce, rms = naive_binned(conf, correct, n_bins)
    assert d["ece"].item() == pytest.approx(ece, abs=1e-6)
    assert d["mce"].item() == pytest.approx(mce, abs=1e-6)
    assert d["rms"].item() == pytest.approx(rms, abs=1e-6)
    probs = F.softmax(z.float(), dim=1)
    for key, norm in (("ece", "l1"), ("mce", "max"), ("rms", "l2")):
        tm = MulticlassCalibrationError(num_classes=5, n_bins=n_bins, norm=norm)
        tm.update(probs, y)
        assert d[key].item() == pytest.approx(tm.compute().item(), abs=1e-6)


def test_report_matches_torchmetrics_with_saturated_confidences():
    z, y = make_logits(n=300, k=4, scale=40.0, seed=8)
    d = _report_of(z.float(), y)
    assert (F.softmax(z.float(), 1).max(1).values == 1).any()
    tm = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    tm.update(F.softmax(z.float(), dim=1), y)
    assert d["ece"].item() == pytest.approx(tm.compute().item(), abs=1e-6)


def test_report_adaptive_ece_nll_brier_against_naive():
    z, y = make_logits(n=503, k=6, scale=2.0, seed=2)
    d = _report_of(z, y, n_bins=15)
    p, conf, correct = top_label(z, y)
    conf32 = torch.tensor(conf, dtype=torch.float64).float().double().tolist()
    assert d["adaptive_ece"].item() == pytest.approx(
        naive_adaptive_ece(conf32, correct, 15), abs=1e-9
    )
    labels = y.tolist()
    nll = sum(-math.log(p[i][t]) for i, t in enumerate(labels)) / len(labels)
    brier = sum(
        sum((p[i][c] - (1.0 if c == t else 0.0)) ** 2 for c in range(6))
        for i, t in enumerate(labels)
    ) / len(labels)
    assert d["nll"].item() == pytest.approx(nll, rel=1e-10)
    assert d["brier"].item() == pytest.approx(brier, rel=1e-10)
    assert d["accuracy"].item() == pytest.approx(sum(correct) / len(correct))
    assert d["confidence"].item() == pytest.approx(sum(conf) / len(conf), rel=1e-6)
    assert d["count"].item() == 503


@pytest.mark.parametrize("n,n_bins", [(100, 15), (7, 15), (45, 4)])
def test_adaptive_ece_equal_mass_bins(n, n_bins):
    g = torch.Generator().manual_seed(n)
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    correct = (torch.rand(n, generator=g) < conf).double()
    got = adaptive_calibration_error(conf, correct, n_bins).item()
    assert got == pytest.approx(naive_adaptive_ece(conf.tolist(), correct.tolist(), n_bins))


def test_reliability_bins_against_naive():
    z, y = make_logits(n=400, k=3, scale=2.0, seed=9)
    probs = F.softmax(z, dim=1)
    probs[0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    bins = reliability_bins(probs, y, n_bins=10)
    conf = probs.max(1).values.tolist()
    correct = (probs.argmax(1) == y).double().tolist()
    for b in range(10):
        members = [i for i, c in enumerate(conf) if min(int(c * 10), 9) == b]
        assert bins["count"][b].item() == len(members)
        if members:
            mc = sum(conf[i] for i in members) / len(members)
            ma = sum(correct[i] for i in members) / len(members)
            assert bins["confidence"][b].item() == pytest.approx(mc)
            assert bins["accuracy"][b].item() == pytest.approx(ma)
        else:
            assert bins["confidence"][b].item() == bins["accuracy"][b].item() == 0.0
    assert bins["count"].sum().item() == 400
    assert bins["edges"].shape == (11,)
    ece = sum(
        bins["count"][b].item() / 400 * abs(bins["accuracy"][b] - bins["confidence"][b]).item()
        for b in range(10)
    )
    assert bins["ece"].item() == pytest.approx(ece)


def test_report_ignore_index_dense_equals_slicing():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 3, 6, 5, generator=g) * 3
    y = torch.randint(0, 3, (4, 6, 5), generator=g)
    y[:, 0] = 255
    d = _report_of(z, y, chunks=2, ignore_index=255)
    keep = y != 255
    ref = _report_of(z.movedim(1, -1)[keep], y[keep], chunks=1)
    for key in ("ece", "mce", "rms", "adaptive_ece", "nll", "brier", "count"):
        torch.testing.assert_close(d[key], ref[key])


def test_report_probabilities_equal_logits():
    z, y = make_logits(n=200, k=4, seed=6)
    a = _report_of(z, y)
    b = _report_of(F.softmax(z, dim=1), y, from_logits=False)
    for key in ("ece", "adaptive_ece", "nll", "brier"):
        torch.testing.assert_close(a[key], b[key])


def test_report_merged_shards_equal_single_process():
    z, y = make_logits(n=300, k=5, seed=12)
    whole = _report_of(z, y, chunks=1)
    shard_a = CalibrationReport(num_classes=5)
    shard_b = CalibrationReport(num_classes=5)
    shard_a.update(z[:130], y[:130])
    shard_b.update(z[130:], y[130:])
    shard_a.merge_state(shard_b)
    merged = shard_a.compute()
    for key in ("ece", "mce", "rms", "adaptive_ece", "nll", "brier", "count"):
        torch.testing.assert_close(merged[key], whole[key])


def test_report_reset():
    z, y = make_logits(n=50, k=3)
    report = CalibrationReport(num_classes=3)
    report.update(z, y)
    report.reset()
    with pytest.raises(ValueError, match="no samples"):
        report.compute()


def test_report_errors_name_the_argument():
    with pytest.raises(ValueError, match="`n_bins`"):
        CalibrationReport(num_classes=3, n_bins=0)
    with pytest.raises(ValueError, match="`num_classes`"):
        CalibrationReport(num_classes=1)
    report = CalibrationReport(num_classes=3)
    with pytest.raises(ValueError, match="`preds`"):
        report.update(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`preds`.*num_classes=3"):
        report.update(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels`"):
        report.update(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` holds labels outside"):
        report.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="`labels`"):
        report.update(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="`preds` must be finite"):
        report.update(torch.full((2, 3), float("nan")), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="`probs` must be probabilities"):
        reliability_bins(torch.randn(4, 3) * 5, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`n_bins`"):
        reliability_bins(torch.full((4, 3), 1 / 3), torch.zeros(4, dtype=torch.long), n_bins=0)
    with pytest.raises(ValueError, match="`n_bins`"):
        adaptive_calibration_error(torch.rand(4), torch.ones(4), n_bins=0)


# ---------------------------------------------------------------------------------------------
# plot


def test_plot_writes_png_of_expected_size(tmp_path):
    z, y = make_logits(n=500, k=5, seed=3)
    d = _report_of(z, y)
    path = tmp_path / "reliability.png"
    fig = plot_reliability_diagram(d["reliability"], path=path, title="test")
    assert path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (500, 600)
    assert "ECE = " in fig.axes[0].get_title()
    assert f"{d['reliability']['ece'].item():.4f}" in fig.axes[0].get_title()


def test_plot_accepts_lists_and_custom_size(tmp_path):
    bins = {"confidence": [0.2, 0.0, 0.9], "accuracy": [0.1, 0.0, 0.95], "count": [3, 0, 5]}
    path = tmp_path / "r.png"
    plot_reliability_diagram(bins, path=str(path), figsize=(4.0, 3.0), dpi=50)
    with Image.open(path) as img:
        assert img.size == (200, 150)
    assert plot_reliability_diagram(bins).axes[0].get_title().endswith(")")


def test_plot_errors():
    with pytest.raises(ValueError, match="`bins`"):
        plot_reliability_diagram({"confidence": [0.5], "accuracy": [0.5]})
    with pytest.raises(ValueError, match="`bins`"):
        plot_reliability_diagram({"confidence": [0.5], "accuracy": [0.5, 0.1], "count": [1]})
    with pytest.raises(TypeError, match="`bins`"):
        plot_reliability_diagram([0.5, 0.5])
