"""Test utilities for code that runs inside a training step.

:func:`no_host_sync` fails on the first device-to-host read made inside its block. On a GPU such
a read (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``, indexing with a boolean mask, whose
result size depends on the data) makes the host wait until every queued kernel has run, so the
queue drains once per call. On a CPU the same calls are cheap, which is why they go unnoticed in
CPU-only tests; the detector recognises them by the operation, not by the device, so a CPU test
catches what would stall a GPU.

Example:
    >>> loss = build_loss("cross_entropy")
    >>> with no_host_sync():
    ...     loss(logits, target).backward()  # raises HostSyncError if the loss reads values
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncError", "no_host_sync"]

aten = torch.ops.aten

#: Operators whose result the host must read, or whose output shape depends on tensor values.
_HOST_READS = {
    aten._local_scalar_dense.default: "a tensor value read on the host (.item(), bool, int, float)",
    aten.is_nonzero.default: "bool(tensor)",
    aten.equal.default: "torch.equal (returns a Python bool)",
    aten.nonzero.default: "nonzero (output size depends on the data)",
    aten.masked_select.default: "masked_select (output size depends on the data)",
    aten._unique2.default: "unique (output size depends on the data)",
    aten.unique_dim.default: "unique (output size depends on the data)",
    aten.unique_consecutive.default: "unique_consecutive (output size depends on the data)",
    aten.repeat_interleave.Tensor: "repeat_interleave with tensor repeats (data-dependent size)",
}
#: Indexing operators that read the data when an index is a boolean mask.
_MASK_INDEXING = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
#: Tensor methods that copy to host memory without an operator the dispatch mode sees on CPU.
_HOST_METHODS = ("tolist", "numpy", "cpu", "__array__")


class HostSyncError(RuntimeError):
    """A device-to-host read happened inside :func:`no_host_sync`."""


def _where() -> str:
    """The innermost frames outside torch and this module, for the error message."""
    frames = [
        f
        for f in traceback.extract_stack()[:-3]
        if "/torch/" not in f.filename and not f.filename.endswith("testing.py")
    ]
    return "".join(traceback.format_list(frames[-4:]))


def _has_bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()
    )


class _HostSyncDetector(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _HOST_READS.get(func)
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            what = None
        if what is None and func in _MASK_INDEXING and _has_bool_index(args):
            what = "indexing with a boolean mask (nonzero inside, data-dependent size)"
        if what is None and func is aten._to_copy.default:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cpu":
                what = "a copy to host memory (.to('cpu'))"
        if what is not None:
            raise HostSyncError(f"host read: {func} ({what}) at\n{_where()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise :class:`HostSyncError` at the first device-to-host read inside the block.

    Covers forward and backward when both run inside the block. ``torch._assert_async`` is
    allowed: it checks a value on the device without a host read.
    """
    originals = {name: getattr(torch.Tensor, name) for name in _HOST_METHODS}

    def refuse(name: str):
        def method(self, *args, **kwargs):
            raise HostSyncError(f"host read: Tensor.{name}() at\n{_where()}")

        return method

    try:
        for name in _HOST_METHODS:
            setattr(torch.Tensor, name, refuse(name))
        with _HostSyncDetector():
            yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
