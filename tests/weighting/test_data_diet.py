"""EL2N / GraNd scores against naive float64 loops; averaging, pruning, dataset scoring, errors."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from lightning_losses import build_loss
from lightning_losses.weighting.data_diet import (
    average_scores,
    el2n_scores,
    grand_scores,
    num_pruned,
    prune_by_score,
    score_dataset,
)

DOC = Path(__file__).parents[2] / "docs" / "weighting" / "data_diet.md"


# -- naive references (float64, one sample at a time, from the formulas) ------------------------


def naive_el2n(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    out = []
    for i in range(logits.shape[0]):
        z = [float(v) for v in logits[i].double()]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        p = [v / sum(e) for v in e]
        if target.is_floating_point():
            y = [float(v) for v in target[i].double()]
        else:
            y = [1.0 if k == int(target[i]) else 0.0 for k in range(len(z))]
        out.append(math.sqrt(sum((pk - yk) ** 2 for pk, yk in zip(p, y, strict=True))))
    return out


def naive_grand(model, loss_fn, x, y, names=None) -> torch.Tensor:
    model.eval()
    named = dict(model.named_parameters())
    params = [named[n] for n in (names or named)]
    norms = []
    for i in range(x.shape[0]):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norms.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))
    return torch.tensor(norms, dtype=torch.float64)


class SmallNet(nn.Module):
    """Conv + batch norm + dropout + linear head: every mode-dependent layer GraNd must handle."""

    def __init__(self, bn_stats: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, track_running_stats=bn_stats)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


def _small_net(seed: int = 0, **kwargs) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet(**kwargs).double()
    if kwargs.get("bn_stats", True):  # non-trivial running statistics
        net.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    return net


def _images(n: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (n,), generator=g),
    )


# -- EL2N ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_el2n_matches_naive_loop_index_targets(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 3).to(dtype)
    target = torch.randint(0, 6, (40,), generator=g)
    got = el2n_scores(logits, target)
    assert got.dtype == torch.float32 and got.shape == (40,)
    ref = torch.tensor(naive_el2n(logits, target), dtype=torch.float32)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)


def test_el2n_matches_naive_loop_soft_targets():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(25, 4, generator=g) * 2
    target = torch.softmax(torch.randn(25, 4, generator=g), dim=1)
    ref = torch.tensor(naive_el2n(logits, target), dtype=torch.float32)
    torch.testing.assert_close(el2n_scores(logits, target), ref, rtol=1e-5, atol=1e-7)
    # a one-hot probability target is the same as the index target
    idx = torch.randint(0, 4, (25,), generator=g)
    torch.testing.assert_close(
        el2n_scores(logits, F.one_hot(idx, 4).float()), el2n_scores(logits, idx), atol=1e-6, rtol=0
    )


def test_el2n_confident_samples_keep_exact_distinct_scores():
    # Two classes, margin m: p_other = 1 / (1 + e^m) and the score is sqrt(2) * p_other exactly.
    margins = [10.0, 20.0, 30.0, 40.0, 60.0]
    logits = torch.tensor([[m, 0.0] for m in margins])
    got = el2n_scores(logits, torch.zeros(len(margins), dtype=torch.long))
    ref = torch.tensor([math.sqrt(2) / (1 + math.exp(m)) for m in margins], dtype=torch.float32)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert bool((got[:-1] > got[1:]).all()), "more confident samples must score strictly lower"
    # the naive float32 form p - onehot loses the true class's error once p_y rounds to 1
    onehot = F.one_hot(torch.zeros(5, dtype=torch.long), 2)
    naive32 = (torch.softmax(logits, 1) - onehot).norm(dim=1)
    torch.testing.assert_close(naive32[1:4] * math.sqrt(2), ref[1:4], rtol=1e-5, atol=0)


def test_grand_norm_neither_underflows_nor_overflows():
    # loss = c * w (one weight, w = 1): the gradient is c, whose square leaves float32's range
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w

    x = torch.tensor([1e-25, 3e-30, 1e25, 2.0])
    got = grand_scores(Scaled(), lambda out, t: out.sum(), x, torch.zeros(4))
    torch.testing.assert_close(got, x, rtol=1e-6, atol=0)


def test_el2n_range_and_extremes():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(100, 5, generator=g) * 20
    s = el2n_scores(logits, torch.randint(0, 5, (100,), generator=g))
    assert bool((s >= 0).all()) and bool((s <= math.sqrt(2) + 1e-6).all())
    wrong = el2n_scores(torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([2]))
    torch.testing.assert_close(wrong, torch.tensor([math.sqrt(2)]))


@pytest.mark.parametrize(
    ("logits", "target", "err", "match"),
    [
        (
            torch.zeros(3, 2, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
            TypeError,
            "logits",
        ),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), ValueError, r"shape \(N, K\)"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), ValueError, r"shape \(3,\)"),
        (torch.zeros(3, 2), torch.tensor([0, 2, 1]), ValueError, r"\[0, 1\].*from 0 to 2"),
        (torch.zeros(3, 2), torch.tensor([0, -1, 1]), ValueError, "from -1 to 1"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), TypeError, "integer class"),
        (torch.zeros(3, 2), torch.zeros(3, 3), ValueError, "probabilities"),
        ([[0.0, 1.0]], torch.zeros(1, dtype=torch.long), TypeError, "logits"),
    ],
)
def test_el2n_errors(logits, target, err, match):
    with pytest.raises(err, match=match):
        el2n_scores(logits, target)


# -- GraNd --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 32])
def test_grand_matches_naive_autograd_loop(chunk_size):
    net = _small_net()
    x, y = _images()
    ref = naive_grand(_small_net(), F.cross_entropy, x, y)
    got = grand_scores(net, F.cross_entropy, x, y, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and got.shape == (7,)
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=0)


def test_grand_on_named_parameters_only():
    net = _small_net()
    x, y = _images()
    names = ["head.weight", "head.bias"]
    ref = naive_grand(_small_net(), F.cross_entropy, x, y, names)
    torch.testing.assert_close(
        grand_scores(net, F.cross_entropy, x, y, params=names), ref.float(), rtol=1e-6, atol=0
    )
    # fewer parameters, never a larger norm
    assert bool((ref <= naive_grand(_small_net(), F.cross_entropy, x, y) + 1e-12).all())


def test_grand_runs_in_eval_mode_and_restores_the_modes():
    net = _small_net()
    net.train()
    net.drop.eval()  # a mixed state must come back exactly
    stats = net.bn.running_mean.clone(), net.bn.running_var.clone()
    x, y = _images()
    a = grand_scores(net, F.cross_entropy, x, y)
    b = grand_scores(net, F.cross_entropy, x, y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropout was off
    assert net.training and net.bn.training and net.conv.training and not net.drop.training
    torch.testing.assert_close(net.bn.running_mean, stats[0], rtol=0, atol=0)
    torch.testing.assert_close(net.bn.running_var, stats[1], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())


def test_grand_does_not_depend_on_the_rest_of_the_batch():
    net = _small_net()
    x, y = _images(7)
    full = grand_scores(net, F.cross_entropy, x, y)
    part = grand_scores(net, F.cross_entropy, x[2:5], y[2:5])
    torch.testing.assert_close(full[2:5], part, rtol=1e-6, atol=0)


def test_grand_falls_back_to_a_loop_for_a_loss_that_checks_its_labels():
    net = _small_net()
    x, y = _images()

    def checked(logits, target):  # validates labels by reading them: not vmap-able
        if int(target.max()) >= logits.shape[1]:
            raise ValueError("label out of range")
        return F.cross_entropy(logits, target)

    with pytest.warns(UserWarning, match="one sample at a time"):
        got = grand_scores(net, checked, x, y)
    ref = naive_grand(_small_net(), F.cross_entropy, x, y)
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=0)
    assert all(p.requires_grad for p in net.parameters())


def test_grand_vectorises_a_registered_loss():
    """The library's losses read no values on the host, so vmap takes them as they are."""
    x, y = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = grand_scores(_small_net(), build_loss("cross_entropy"), x, y)
    ref = naive_grand(_small_net(), F.cross_entropy, x, y)
    torch.testing.assert_close(got, ref.float(), rtol=1e-6, atol=0)


def test_grand_rejects_batch_norm_without_running_statistics():
    x, y = _images()
    with pytest.raises(ValueError, match=r"'bn'.*track_running_stats=False"):
        grand_scores(_small_net(bn_stats=False), F.cross_entropy, x, y)


def test_grand_errors():
    net, (x, y) = _small_net(), _images()
    with pytest.raises(TypeError, match="`model`"):
        grand_scores(lambda t: t, F.cross_entropy, x, y)
    with pytest.raises(TypeError, match="`loss_fn`"):
        grand_scores(net, "ce", x, y)
    with pytest.raises(ValueError, match="same number of samples"):
        grand_scores(net, F.cross_entropy, x, y[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        grand_scores(net, F.cross_entropy, x, y, chunk_size=0)
    with pytest.raises(ValueError, match=r"unknown: \['nope'\]"):
        grand_scores(net, F.cross_entropy, x, y, params=["head.weight", "nope"])
    with pytest.raises(TypeError, match="sequence of parameter names"):
        grand_scores(net, F.cross_entropy, x, y, params="head.weight")
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        grand_scores(frozen, F.cross_entropy, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


# -- score_dataset ------------------------------------------------------------------------------


class Triples(Dataset):
    """(x, y, group) samples, as the spurious datasets yield them."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i % 3


def test_score_dataset_el2n_in_order_in_eval_mode():
    net = _small_net()
    net.train()
    x, y = _images(11)
    got = score_dataset(net, Triples(x, y), batch_size=4)  # 4 + 4 + 3
    assert net.training and got.device.type == "cpu" and got.shape == (11,)
    ref = torch.tensor(naive_el2n(_small_net().eval()(x).detach(), y), dtype=torch.float32)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    # a permuted dataset gives the permuted scores: score i belongs to dataset[i]
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(score_dataset(net, Subset(Triples(x, y), perm.tolist())), got[perm])


def smoothed(out, target):
    return F.cross_entropy(out, target, label_smoothing=0.1)


def test_score_dataset_grand_matches_naive_loop():
    net = _small_net()
    x, y = _images(9)
    got = score_dataset(net, TensorDataset(x, y), "grand", batch_size=4, chunk_size=2)
    torch.testing.assert_close(
        got, naive_grand(_small_net(), F.cross_entropy, x, y).float(), rtol=1e-6, atol=0
    )
    other = score_dataset(net, TensorDataset(x, y), "grand", loss_fn=smoothed, batch_size=9)
    torch.testing.assert_close(
        other, naive_grand(_small_net(), smoothed, x, y).float(), rtol=1e-6, atol=0
    )


def test_score_dataset_errors():
    net, (x, y) = _small_net(), _images()
    data = TensorDataset(x, y)
    with pytest.raises(ValueError, match="'el2n', 'grand'"):
        score_dataset(net, data, "el2m")
    with pytest.raises(ValueError, match="batch_size"):
        score_dataset(net, data, batch_size=0)
    with pytest.raises(ValueError, match="score='grand' only"):
        score_dataset(net, data, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match=r"\(x, y, \*rest\)"):
        score_dataset(net, TensorDataset(x))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        score_dataset(lambda t: t, data)


# -- averaging ----------------------------------------------------------------------------------


def test_average_scores_is_the_mean_over_runs():
    g = torch.Generator().manual_seed(3)
    runs = [torch.rand(13, generator=g) for _ in range(10)]
    ref = [sum(float(r[i]) for r in runs) / 10 for i in range(13)]
    got = average_scores(runs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float32), rtol=1e-6, atol=0)
    torch.testing.assert_close(average_scores(runs[:1]), runs[0], rtol=0, atol=0)
    assert average_scores([runs[0].double(), runs[1]]).dtype == torch.float64


@pytest.mark.parametrize(
    ("scores", "err", "match"),
    [
        ([], ValueError, "non-empty"),
        (torch.zeros(2, 3), ValueError, "sequence"),
        ([torch.zeros(3), torch.zeros(4)], ValueError, "same samples"),
        ([torch.zeros(3), torch.tensor([0.0, float("nan"), 1.0])], ValueError, r"scores\[1\]"),
        ([torch.zeros(3, dtype=torch.long)], ValueError, "floating-point"),
        ([[0.0, 1.0]], TypeError, r"scores\[0\]"),
    ],
)
def test_average_scores_errors(scores, err, match):
    with pytest.raises(err, match=match):
        average_scores(scores)


# -- pruning ------------------------------------------------------------------------------------


def naive_prune(scores: list[float], fraction: float, keep: str) -> list[int]:
    """Sort by (score, index) (by (-score, index) for keep='easiest'); drop the first floor(fN)."""
    n = len(scores)
    m = math.floor(round(fraction * n, 9))
    sign = 1.0 if keep == "hardest" else -1.0
    order = sorted(range(n), key=lambda i: (sign * scores[i], i))
    return sorted(order[m:])


@pytest.mark.parametrize("keep", ["hardest", "easiest"])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.77, 0.99])
def test_prune_by_score_matches_naive_rule(keep, fraction):
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 6, (57,), generator=g).float() / 5  # many ties
    kept = prune_by_score(scores, fraction, keep)
    assert kept.dtype == torch.int64
    assert kept.tolist() == naive_prune(scores.tolist(), fraction, keep)
    assert len(kept) == 57 - num_pruned(57, fraction)


def test_prune_by_score_semantics():
    s = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.1, 0.7])
    # the two lowest of the three tied 0.1 go first, lower index first
    assert prune_by_score(s, 2 / 6).tolist() == [0, 3, 4, 5]
    assert prune_by_score(s, 0.5).tolist() == [0, 3, 5]
    assert prune_by_score(s, 0.5, keep="easiest").tolist() == [1, 2, 4]
    assert prune_by_score(s, 0.0).tolist() == list(range(6))
    # every kept score >= every pruned score
    kept = prune_by_score(s, 0.5)
    pruned = sorted(set(range(6)) - set(kept.tolist()))
    assert float(s[kept].min()) >= float(s[pruned].max())
    assert num_pruned(100, 0.29) == 29 and num_pruned(10, 0.3) == 3 and num_pruned(7, 0.5) == 3


@pytest.mark.parametrize(
    ("scores", "fraction", "keep", "err", "match"),
    [
        (torch.zeros(4), 1.0, "hardest", ValueError, r"\[0, 1\)"),
        (torch.zeros(4), -0.1, "hardest", ValueError, r"\[0, 1\)"),
        (torch.zeros(4), float("nan"), "hardest", ValueError, "finite"),
        (torch.zeros(4), "0.5", "hardest", TypeError, "fraction"),
        (torch.zeros(4), 0.5, "hard", ValueError, "'hardest', 'easiest'"),
        (torch.zeros(2, 2), 0.5, "hardest", ValueError, "1-D"),
        (torch.tensor([0.0, float("inf")]), 0.5, "hardest", ValueError, "finite"),
    ],
)
def test_prune_by_score_errors(scores, fraction, keep, err, match):
    with pytest.raises(err, match=match):
        prune_by_score(scores, fraction, keep)


# -- the method card's example ------------------------------------------------------------------


def test_doc_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(block, namespace)
    assert capsys.readouterr().out.split("\n")[:2] == ["140", "torch.Size([200])"]
    subset, el2n, kept = namespace["pruned_set"], namespace["el2n"], namespace["kept"]
    assert isinstance(subset, Subset) and len(subset) == 140
    dropped = sorted(set(range(200)) - set(kept.tolist()))
    assert float(el2n[kept].min()) >= float(el2n[dropped].max())
