"""LossFunction keeps each batch's gradient graph between HVPs (``retain_graph``): the products
equal the rebuilt ones, the counters show the reuse, and any change of the model drops the
graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.diagnostics import (
    LossFunction,
    epsilon_sharpness,
    hutchinson,
    lanczos,
    line_slice,
    power_iteration,
    random_direction,
)


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _bn_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model(torch.randn(16, 3, dtype=torch.float64))
    return model.eval()


def _batches(seed: int = 0, sizes=(17, 15, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(sizes),), generator=g)
    return list(zip(x.split(list(sizes)), y.split(list(sizes)), strict=True))


def _vectors(n: int, count: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(count)]


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sizes", [(40,), (17, 15, 8)])
@pytest.mark.parametrize("retain", ["auto", True])
def test_kept_graph_gives_the_rebuilt_product(sizes, retain):
    model = _bn_mlp()
    batches = _batches(sizes=sizes)
    kept = LossFunction(model, _ce, batches, retain_graph=retain)
    rebuilt = LossFunction(model, _ce, batches, retain_graph=False)
    vs = _vectors(kept.numel)
    for v in vs:
        _close(kept.matvec(v), rebuilt.matvec(v))
    b = len(sizes)
    assert kept.retained_graphs == b and kept.graph_bytes > 0
    assert (kept.hvp_count, kept.forward_count) == (len(vs), b)  # one build per batch
    assert (rebuilt.hvp_count, rebuilt.forward_count) == (len(vs), b * len(vs))
    assert rebuilt.retained_graphs == 0 and rebuilt.graph_bytes == 0
    _close(kept.hessian(), rebuilt.hessian())
    assert kept.forward_count == b


def test_algorithms_report_the_forward_passes_really_done():
    model = _bn_mlp()
    batches = _batches()
    fn = LossFunction(model, _ce, batches)
    lz = lanczos(fn, 2, max_iter=20, tol=0.0, seed=0)
    assert (lz.hvp_count, lz.forward_count) == (20, 3)
    pw = power_iteration(fn, 1, max_iter=10, tol=0.0, seed=0)
    tr = hutchinson(fn, 12, seed=0)
    assert (pw.hvp_count, pw.forward_count, tr.hvp_count, tr.forward_count) == (10, 0, 12, 0)
    ref = LossFunction(model, _ce, batches, retain_graph=False)
    lz_ref = lanczos(ref, 2, max_iter=20, tol=0.0, seed=0)
    assert lz_ref.forward_count == 60
    _close(lz.eigenvalues, lz_ref.eigenvalues)
    assert hutchinson(ref, 12, seed=0).estimate == pytest.approx(tr.estimate, rel=1e-12)


@pytest.mark.parametrize(
    "change",
    [
        "selected parameter",
        "other parameter",
        "buffer",
        "load_state_dict",
        "mode",
        "replaced",
        "new storage",
    ],
)
def test_any_change_of_the_model_drops_the_graphs(change):
    model = _bn_mlp()
    batches = _batches()
    fn = LossFunction(model, _ce, batches, param_filter="3")  # the last layer only
    v = _vectors(fn.numel, 1)[0]
    fn.matvec(v)
    assert fn.retained_graphs == 3 and fn.forward_count == 3
    with torch.no_grad():
        if change == "selected parameter":
            model[3].weight.add_(0.1)
        elif change == "other parameter":
            model[0].weight.mul_(1.1)
        elif change == "buffer":
            model[1].running_mean.add_(0.5)
        elif change == "load_state_dict":
            state = {k: t.clone() for k, t in model.state_dict().items()}
            state["0.bias"] += 0.2
            model.load_state_dict(state)
        elif change == "mode":
            model[2].train()  # a change of mode, even of a module without parameters
        elif change == "replaced":
            model[0].bias = nn.Parameter(model[0].bias.detach() + 0.2)
        else:
            model[0].bias.data = model[0].bias.detach() + 0.2  # no version change
    out = fn.matvec(v)
    assert fn.forward_count == 6  # rebuilt
    fresh = LossFunction(model, _ce, batches, param_filter="3", retain_graph=False)
    _close(out, fresh.matvec(v))
    with torch.no_grad():
        model[3].weight.add_(0.0)  # same values, but written: the version moves
    fn.loss()  # any call drops stale graphs, freeing their memory
    assert fn.retained_graphs == 0


def test_unchanged_model_keeps_the_graphs_through_other_calls():
    model = _bn_mlp()
    fn = LossFunction(model, _ce, _batches())
    v = _vectors(fn.numel, 1)[0]
    first = fn.matvec(v)
    fn.loss()
    fn.gradient()
    assert fn.retained_graphs == 3
    _close(fn.matvec(v), first)
    assert fn.forward_count == 3 + 3 + 3  # matvec builds, loss and gradient; no rebuild
    fn.release()
    assert fn.retained_graphs == 0 and fn.graph_bytes == 0
    _close(fn.matvec(v), first)
    assert fn.forward_count == 12 and fn.retained_graphs == 3


def test_train_mode_batchnorm_is_restored_and_never_kept():
    model = _bn_mlp().train()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    batches = _batches()
    fn = LossFunction(model, _ce, batches, retain_graph=True)
    ref = LossFunction(model, _ce, batches, retain_graph=False)
    for v in _vectors(fn.numel, 3):
        _close(fn.matvec(v), ref.matvec(v))
    # each build updates the running statistics, which are written back: a kept graph would
    # hold values autograd refuses to reuse, so every HVP rebuilds
    assert fn.retained_graphs == 0 and fn.forward_count == 9
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert model.training and all(p.grad is None for p in model.parameters())


def test_eval_mode_buffers_are_not_written():
    model = _bn_mlp()
    versions = [b._version for b in model.buffers()]
    fn = LossFunction(model, _ce, _batches())
    fn.matvec(_vectors(fn.numel, 1)[0])
    fn.loss()
    assert [b._version for b in model.buffers()] == versions


def test_budget_bounds_the_kept_graphs():
    model = _bn_mlp()
    batches = _batches()
    v = _vectors(59 + 16, 1)[0]
    probe = LossFunction(model, _ce, batches, retain_graph=True)
    probe.matvec(v)
    sizes = [g.nbytes for _, g in sorted(probe._graphs.items())]
    assert all(s > 0 for s in sizes) and probe.graph_bytes == sum(sizes)

    none = LossFunction(model, _ce, batches, max_graph_bytes=0)
    none.matvec(v)
    none.matvec(v)
    assert none.retained_graphs == 0 and none.forward_count == 6

    two = LossFunction(model, _ce, batches, max_graph_bytes=sizes[0] + sizes[1])
    out = [two.matvec(v) for _ in range(3)]
    assert two.retained_graphs == 2 and two.graph_bytes <= sizes[0] + sizes[1]
    assert two.forward_count == 3 + 2  # the third batch is rebuilt every time
    for o in out:
        _close(o, probe.matvec(v))

    # a single batch keeps its graph whatever the budget (every HVP builds it anyway)
    one = LossFunction(model, _ce, batches[:1], max_graph_bytes=0)
    one.matvec(v)
    one.matvec(v)
    assert one.retained_graphs == 1 and one.forward_count == 1


def test_graph_size_estimate_counts_the_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 256), nn.Tanh(), nn.Linear(256, 2)).double()
    x = torch.randn(1000, 10, dtype=torch.float64)
    y = torch.randint(0, 2, (1000,))
    fn = LossFunction(model, _ce, [(x, y)])
    fn.matvec(torch.ones(fn.numel, dtype=torch.float64))
    hidden = 1000 * 256 * 8  # one (N, 256) float64 activation
    grads = fn.numel * 8
    assert hidden + grads <= fn.graph_bytes <= 20 * hidden + grads


def test_closure_keeps_a_graph_only_when_asked():
    model = _bn_mlp()
    x, y = _batches(sizes=(40,))[0]
    v = _vectors(model[0].weight.numel() + 8 + 16 + 27, 1)[0]
    auto = LossFunction(model, closure=lambda: _ce(model, (x, y)))
    auto.matvec(v)
    auto.matvec(v)
    assert auto.retained_graphs == 0 and auto.forward_count == 2
    kept = LossFunction(model, closure=lambda: _ce(model, (x, y)), retain_graph=True)
    _close(kept.matvec(v), auto.matvec(v))
    kept.matvec(v)
    assert kept.retained_graphs == 1 and kept.forward_count == 1


def test_slices_and_sharpness_between_products_stay_correct():
    """The callback's order of use: HVPs, then evaluations that move the weights (and put them
    back), then HVPs again."""
    model = _bn_mlp()
    batches = _batches()
    fn = LossFunction(model, _ce, batches)
    ref = LossFunction(model, _ce, batches, retain_graph=False)
    v = _vectors(fn.numel, 1)[0]
    first = fn.matvec(v)
    d = random_direction(model, seed=0)
    line = line_slice(fn, d, distance=0.5, num_points=5)
    torch.testing.assert_close(
        line.losses, line_slice(ref, d, distance=0.5, num_points=5).losses, rtol=0, atol=0
    )
    assert fn.retained_graphs == 0  # the slice moved the weights: graphs dropped
    sharp = epsilon_sharpness(fn, 1e-2, steps=3)
    assert sharp.value == epsilon_sharpness(ref, 1e-2, steps=3).value
    _close(fn.matvec(v), first)  # weights restored bit for bit: same product, rebuilt
    _close(fn.matvec(v), ref.matvec(v))


def test_inference_mode_and_argument_errors():
    model = _bn_mlp()
    batches = _batches()
    with pytest.raises(ValueError, match='`retain_graph` must be True, False or "auto"'):
        LossFunction(model, _ce, batches, retain_graph="always")
    with pytest.raises(ValueError, match="`retain_graph`"):
        LossFunction(model, _ce, batches, retain_graph=1)
    with pytest.raises(ValueError, match="`max_graph_bytes`"):
        LossFunction(model, _ce, batches, max_graph_bytes=-1)
    fn = LossFunction(model, _ce, batches)
    v = _vectors(fn.numel, 1)[0]
    fn.matvec(v)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        fn.matvec(v)
