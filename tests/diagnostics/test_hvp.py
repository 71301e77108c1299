"""LossFunction: HVP = H·v against the exact Hessian, batch-size weighting, views, counters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_losses.diagnostics as diagnostics
from lightning_losses.diagnostics import LossFunction, MatrixOperator, as_operator


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()  # 59 parameters


def _data(seed: int = 0, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _batches(x, y, sizes=(17, 15, 8)):
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _exact_hessian(model, x, y, names=None):
    params = dict(model.named_parameters())
    names = names or list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(v):
        parts = torch.split(v, [s.numel() for s in shapes])
        new = dict(params) | {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, new, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def test_hvp_equals_exact_hessian_times_v():
    model = _mlp()
    x, y = _data()
    fn = LossFunction(model, _ce, _batches(x, y))
    h = _exact_hessian(model, x, y)
    assert fn.numel == 59 and h.shape == (59, 59)
    assert h.abs().max() > 1e-2  # a non-trivial Hessian
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(59, generator=g, dtype=torch.float64)
        torch.testing.assert_close(fn.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fn.hessian(), h, rtol=1e-10, atol=1e-12)
    # per-parameter form agrees with the flat form
    v = torch.randn(59, generator=g, dtype=torch.float64)
    hv = fn.hvp(fn.unflatten(v))
    assert [t.shape for t in hv] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(fn.flatten(hv), h @ v, rtol=1e-10, atol=1e-12)


def test_batches_are_weighted_by_size():
    model = _mlp()
    x, y = _data()
    batches = _batches(x, y)
    fn = LossFunction(model, _ce, batches)
    full = _ce(model, (x, y)).item()
    naive = sum(_ce(model, b).item() for b in batches) / len(batches)
    assert abs(naive - full) > 1e-4  # the unweighted mean of batch means would be wrong
    assert fn.loss() == pytest.approx(full, rel=1e-13)
    value, grad = fn.value_and_gradient()
    assert value == pytest.approx(full, rel=1e-13)
    full_grad = torch.autograd.grad(_ce(model, (x, y)), list(model.parameters()))
    torch.testing.assert_close(grad, fn.flatten(full_grad), rtol=1e-11, atol=1e-13)


def test_param_filter_gives_the_hessian_block():
    model = _mlp()
    x, y = _data()
    batches = _batches(x, y)
    by_prefix = LossFunction(model, _ce, batches, param_filter="2")
    by_names = LossFunction(model, _ce, batches, param_filter=["2.weight", "2.bias"])
    by_callable = LossFunction(model, _ce, batches, param_filter=lambda n: n.startswith("2."))
    assert by_prefix.names == by_names.names == by_callable.names == ["2.weight", "2.bias"]
    assert by_prefix.numel == 27
    block = _exact_hessian(model, x, y, names=["2.weight", "2.bias"])
    full = _exact_hessian(model, x, y)
    torch.testing.assert_close(block, full[32:, 32:])
    v = torch.randn(27, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for fn in (by_prefix, by_names, by_callable):
        torch.testing.assert_close(fn.matvec(v), block @ v, rtol=1e-10, atol=1e-12)


def test_param_filter_errors_name_the_argument():
    model = _mlp()
    x, y = _data()
    with pytest.raises(ValueError, match=r"`param_filter`.*\['3'\].*available"):
        LossFunction(model, _ce, [(x, y)], param_filter=["2", "3"])
    with pytest.raises(ValueError, match="`param_filter` selects no trainable parameter"):
        LossFunction(model, _ce, [(x, y)], param_filter=lambda n: False)
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"`param_filter`.*0\.weight"):
        LossFunction(model, _ce, [(x, y)], param_filter="0.weight")
    assert LossFunction(model, _ce, [(x, y)]).numel == 59 - 24  # frozen weights left out


def test_counters_and_closure():
    model = _mlp()
    x, y = _data()
    fn = LossFunction(model, _ce, _batches(x, y), retain_graph=False)  # reuse: test_graph_reuse
    v = torch.ones(59, dtype=torch.float64)
    fn.matvec(v)
    fn.matvec(v)
    fn.loss()
    fn.gradient()
    assert (fn.hvp_count, fn.loss_count, fn.gradient_count) == (2, 1, 1)
    assert fn.forward_count == 3 * 4  # three batches per evaluation
    by_closure = LossFunction(model, closure=lambda: _ce(model, (x, y)))
    torch.testing.assert_close(by_closure.matvec(v), fn.matvec(v), rtol=1e-10, atol=1e-12)
    assert by_closure.forward_count == 1 and by_closure.hvp_count == 1


def test_model_state_mode_and_grads_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = _data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn = LossFunction(model, _ce, _batches(x, y))
    fn.matvec(torch.ones(fn.numel, dtype=torch.float64))
    fn.loss()
    fn.gradient()
    assert model.training and model[1].training  # mode left as the caller set it
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running stats restored, weights untouched
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    fn.matvec(torch.ones(fn.numel, dtype=torch.float64))
    assert not model.training


def test_linear_loss_has_zero_hessian():
    model = nn.Linear(4, 1, bias=False).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    fn = LossFunction(model, lambda m, b: m(b).mean(), [x])
    assert torch.equal(fn.matvec(torch.ones(4, dtype=torch.float64)), torch.zeros(4).double())


def test_errors_name_the_argument():
    model = _mlp()
    x, y = _data()
    fn = LossFunction(model, _ce, [(x, y)])
    with pytest.raises(ValueError, match=r"`vector` must have shape \(59,\)"):
        fn.matvec(torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="`batches` must hold at least one"):
        LossFunction(model, _ce, [])
    with pytest.raises(TypeError, match="`loss_fn`"):
        LossFunction(model, None, [(x, y)])
    with pytest.raises(ValueError, match="either `closure`"):
        LossFunction(model, _ce, [(x, y)], closure=lambda: _ce(model, (x, y)))
    bad = LossFunction(model, lambda m, b: m(b[0]).sum(1), [(x, y)])
    with pytest.raises(ValueError, match="scalar"):
        bad.loss()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fn.matvec(torch.ones(59, dtype=torch.float64))
    with pytest.raises(ValueError, match="`matrix` must be a non-empty square"):
        MatrixOperator(torch.ones(2, 3))
    with pytest.raises(TypeError, match="`op` must be"):
        as_operator("H")


def test_pure_core_imports_no_lightning():
    files = sorted(Path(diagnostics.__file__).parent.glob("*.py"))
    assert len(files) >= 9
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"lightning", "pytorch_lightning"} & set(roots), (file.name, roots)
