"""Filter-normalised directions: per-filter norms, zeroed biases and norm layers, seeds, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_losses.diagnostics import normalize_direction, random_direction


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 4)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)


def test_filter_normalisation():
    net = _Net()
    d = random_direction(net, seed=0)
    assert list(d) == [n for n, _ in net.named_parameters()]
    assert not any(t.requires_grad for t in d.values())  # plain tensors, not graph nodes
    torch.testing.assert_close(
        d["conv.weight"].flatten(1).norm(dim=1), net.conv.weight.flatten(1).norm(dim=1)
    )
    torch.testing.assert_close(d["fc.weight"].norm(dim=1), net.fc.weight.norm(dim=1))
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert torch.equal(d[name], torch.zeros_like(d[name])), name
    # a direction, not a copy of the weights: random within each filter
    assert not torch.allclose(d["fc.weight"].abs(), net.fc.weight.abs().detach())


def test_layer_and_none_and_ignore_none():
    net = _Net()
    layer = random_direction(net, normalization="layer", ignore=None, seed=1)
    for name, p in net.named_parameters():
        assert float(layer[name].norm()) == pytest.approx(float(p.detach().norm()), rel=1e-5), name
    # a layer-normalised direction is not filter-normalised
    rows = layer["fc.weight"].norm(dim=1)
    assert not torch.allclose(rows, net.fc.weight.norm(dim=1).detach(), rtol=1e-2)
    raw = random_direction(net, normalization="none", seed=2)
    g = torch.Generator().manual_seed(2)
    expected = torch.randn(net.conv.weight.shape, generator=g, dtype=torch.float64).float()
    assert torch.equal(raw["conv.weight"], expected)
    assert torch.equal(raw["conv.bias"], torch.zeros(3))  # biasbn still applies


def test_seeds_filters_and_zero_filters():
    net = _Net()
    a, b = random_direction(net, seed=5), random_direction(net, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(5)
    first, second = random_direction(net, seed=g), random_direction(net, seed=g)
    assert all(torch.equal(first[k], a[k]) for k in a)
    assert not torch.equal(first["fc.weight"], second["fc.weight"])  # a second, new direction
    only_fc = random_direction(net, param_filter="fc", seed=0)
    assert list(only_fc) == ["fc.weight", "fc.bias"]
    with torch.no_grad():
        net.fc.weight[1].zero_()
    d = random_direction(net, seed=0)
    assert torch.equal(d["fc.weight"][1], torch.zeros(12))
    assert bool((d["fc.weight"][0] != 0).all())


def test_normalize_an_eigenvector_direction():
    net = _Net()
    v = {"fc.weight": torch.ones(4, 12), "fc.bias": torch.ones(4)}
    d = normalize_direction(v, net)
    torch.testing.assert_close(
        d["fc.weight"], net.fc.weight.norm(dim=1, keepdim=True).detach().expand(4, 12) / 12**0.5
    )
    assert torch.equal(d["fc.bias"], torch.zeros(4))
    assert torch.equal(v["fc.weight"], torch.ones(4, 12))  # input untouched


def test_errors_name_the_argument():
    net = _Net()
    with pytest.raises(
        ValueError, match="`normalization` must be one of 'filter', 'layer', 'none'; got 'filters'"
    ):
        random_direction(net, normalization="filters")
    with pytest.raises(ValueError, match="`ignore` must be one of"):
        random_direction(net, ignore="bias")
    with pytest.raises(ValueError, match=r"`direction` has key 'head\.weight'"):
        normalize_direction({"head.weight": torch.ones(2)}, net)
    with pytest.raises(
        ValueError, match=r"`direction\['fc.bias'\]` must have the parameter's shape \(4,\)"
    ):
        normalize_direction({"fc.bias": torch.ones(5)}, net)
