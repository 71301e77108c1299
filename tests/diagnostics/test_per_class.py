"""Per-class loss: equals the loss over the class's samples, its Hessian, dict batches, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import LossFunction, class_batches, class_loss_function, lanczos


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(36, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 6)[torch.randperm(36, generator=g)]
    batches = [(x[:16], y[:16]), (x[16:28], y[16:28]), (x[28:], y[28:])]
    return model, x, y, batches


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def test_class_loss_is_the_mean_over_the_class():
    model, x, y, batches = _setup()
    totals = 0.0
    for c in (0, 1, 2):
        fn = class_loss_function(model, _ce, batches, c)
        manual = F.cross_entropy(model(x[y == c]), y[y == c], reduction="sum").item() / int(
            (y == c).sum()
        )
        assert fn.loss() == pytest.approx(manual, rel=1e-13)
        cut = class_batches(batches, c)
        naive = sum(_ce(model, b).item() for b in cut) / len(cut)
        assert abs(naive - manual) > 1e-5  # class counts differ per batch: weighting matters
        totals += int((y == c).sum()) / 36 * fn.loss()
    assert totals == pytest.approx(LossFunction(model, _ce, batches).loss(), rel=1e-13)


def test_class_hessian_matches_exact():
    model, x, y, batches = _setup()
    fn = class_loss_function(model, _ce, batches, 2, param_filter="2")
    xc, yc = x[y == 2], y[y == 2]
    w, b = model[2].weight, model[2].bias

    def f(v):
        wv, bv = v[: w.numel()].view_as(w), v[w.numel() :]
        return F.cross_entropy(torch.tanh(model[0](xc)) @ wv.T + bv, yc)

    h = torch.autograd.functional.hessian(f, torch.cat([w.detach().reshape(-1), b.detach()]))
    v = torch.randn(fn.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fn.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    top = lanczos(fn, k=1, tol=1e-8).eigenvalues[0]
    assert float(top) == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-7)


def test_dict_batches_and_custom_labels():
    model, x, y, batches = _setup()
    dicts = [{"input": bx, "target": by, "meta": "kept"} for bx, by in batches]
    cut = class_batches(dicts, 1)
    assert all(
        set(b) == {"input", "target", "meta"} and bool((b["target"] == 1).all()) for b in cut
    )
    assert sum(b["input"].shape[0] for b in cut) == 10
    fn = class_loss_function(
        model, lambda m, b: F.cross_entropy(m(b["input"]), b["target"]), dicts, 1
    )
    assert fn.loss() == pytest.approx(_ce(model, (x[y == 1], y[y == 1])).item(), rel=1e-13)
    by_parity = class_batches(batches, 0, labels=lambda b: b[1] % 2)  # classes 0 and 2
    assert sum(b[0].shape[0] for b in by_parity) == 26


def test_absent_class_raises_naming_it():
    model, _, _, batches = _setup()
    with pytest.raises(
        ValueError, match=r"`cls` = 3 has no sample in the probe set; classes present: \[0, 1, 2\]"
    ):
        class_loss_function(model, _ce, batches, 3)
    with pytest.raises(ValueError, match="`cls` must be an integer"):
        class_batches(batches, "0")
    with pytest.raises(ValueError, match="labels of a probe batch must be a 1-D tensor"):
        class_batches(batches, 0, labels=lambda b: b[1][:, None])
    with pytest.raises(ValueError, match="dict probe batch must hold the labels"):
        class_batches([{"x": torch.ones(2)}], 0)
