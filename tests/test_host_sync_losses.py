"""No registered loss reads a tensor back to the host in a training call.

A host read stalls a GPU's queue once per call; ``no_host_sync`` recognises the operators that
make one, so these CPU tests catch what would stall a GPU. Each loss runs forward and backward
in the two ways a training step calls it: ``reduction="mean"`` without weights (the fused path)
and the per-sample path with ``sample_weight`` (what ``LossMixin`` uses), under ``validate_args``
off (the default) and on (the on-device value checks).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_losses import build_loss, list_losses
from lightning_losses._reduce import PerSample
from lightning_losses.losses import Loss
from lightning_losses.testing import HostSyncError, no_host_sync

from .conftest import ready_loss
from .test_conformance import loss_context, loss_inputs

NAMES = list_losses()
#: Constructor arguments that keep a loss's step free of host reads, where its default does not.
#: ALDR-KL without ``num_samples`` grows its table to the largest index seen, which the host reads
#: (documented on the class); the fixed-size table needs no read.
SYNC_FREE_KWARGS = {"aldr_kl": {"num_samples": 8}, "isogclr": {"num_samples": 8}}


def _training_call(name: str, *, reduction: str, weighted: bool, validate_args: bool) -> None:
    kwargs = {**SYNC_FREE_KWARGS.get(name, {}), "reduction": reduction}
    loss = ready_loss(name, validate_args=validate_args, **kwargs)
    x, y = loss_inputs(name, n=8, k=5)
    ctx = loss_context(name, n=8, like=x)
    x = x.requires_grad_(True)
    loss(x, y, **ctx)  # a first call may set up state (class counts, tables)
    w = torch.rand(8) if weighted else None
    with no_host_sync():
        value = loss(x, y, sample_weight=w, **ctx)
        value = value.sum() if reduction == "none" else value
        value.backward()


@pytest.mark.parametrize("validate_args", [False, True], ids=["default", "validate_args"])
@pytest.mark.parametrize("name", NAMES)
def test_fused_mean_has_no_host_read(name, validate_args):
    _training_call(name, reduction="mean", weighted=False, validate_args=validate_args)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_path_has_no_host_read(name):
    _training_call(name, reduction="none", weighted=True, validate_args=False)


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "binary_focal"])
def test_ignore_index_and_dense_input_have_no_host_read(name):
    dense = (4, 3)
    x, y = loss_inputs(name, n=4, k=5, dense=dense)
    y[0, 0, 0] = -1
    loss = build_loss(name, ignore_index=-1)
    with no_host_sync():
        loss(x.requires_grad_(True), y).backward()


def test_aldr_kl_growing_table_reads_the_largest_index_as_documented():
    loss = ready_loss("aldr_kl")
    x, y = loss_inputs("aldr_kl", n=8, k=5)
    with pytest.raises(HostSyncError, match=r"_local_scalar_dense[\s\S]*_write"), no_host_sync():
        loss(x.requires_grad_(True), y, index=torch.arange(8))


class _ReadsTheHost(Loss):
    """A loss with a planted host read, as a careless implementation would have."""

    registered_name = "reads_the_host"

    def per_sample(self, input: Tensor, target: Tensor) -> PerSample:
        scale = float(input.abs().max())  # a host read
        return PerSample((input / scale).square().mean(1))


def test_the_detector_fails_on_a_planted_host_read():
    x = torch.randn(4, 3, requires_grad=True)
    with (
        pytest.raises(HostSyncError, match=r"_local_scalar_dense[\s\S]*per_sample"),
        no_host_sync(),
    ):
        _ReadsTheHost()(x, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: t.numpy(),
        lambda t: t[t > 0],
        lambda t: bool(t.any()),
        lambda t: t.nonzero(),
        lambda t: torch.unique(t),
    ],
    ids=["tolist", "cpu", "numpy", "bool-mask", "bool", "nonzero", "unique"],
)
def test_the_detector_sees_every_kind_of_host_read(read):
    t = torch.randn(5)
    with pytest.raises(HostSyncError), no_host_sync():
        read(t)


def test_the_detector_restores_the_tensor_methods():
    t = torch.arange(3)
    with pytest.raises(HostSyncError), no_host_sync():
        t.tolist()
    assert t.tolist() == [0, 1, 2] and t.cpu() is t


def test_every_exception_names_a_registered_loss():
    assert set(SYNC_FREE_KWARGS) <= set(NAMES)
