"""Test utilities for code that runs inside a training step.

:func:`no_host_sync` fails on the first device-to-host read made inside its block. On a GPU such
a read (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``, indexing with a boolean mask, whose
result size depends on the data) makes the host wait until every queued kernel has run, so the
queue drains once per call. On a CPU the same calls are cheap, which is why they go unnoticed in
CPU-only tests; the detector recognises them by the operation, not by the device, so a CPU test
catches what would stall a GPU.

What a CPU run cannot see: a blocking copy from host memory to a GPU (``torch.tensor(v,
device="cuda")``, ``cpu_tensor.to("cuda")``), which also waits for the GPU's queue. On a machine
whose CUDA is in use when the block starts, the block therefore also switches on torch's own
CUDA sync check (``torch.cuda.set_sync_debug_mode("error")``), which raises a ``RuntimeError``
at any synchronising CUDA call. Reads that a method needs by its definition can be let through,
by name, with :func:`host_reads_allowed`.

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

__all__ = ["HostSyncError", "host_reads_allowed", "no_host_sync"]

aten = torch.ops.aten

#: Operators whose result the host must read, or whose output shape depends on tensor values.
_HOST_READS = {
    aten._local_scalar_dense.default: "a tensor value read on the host (.item(), bool, int, float)",
    aten.is_nonzero.default: "bool(tensor)",
    aten.equal.default: "torch.equal (returns a Python bool)",
    aten.allclose.default: "torch.allclose (returns a Python bool)",
    aten._linalg_check_errors.default: "a linalg error check (reads the info tensor)",
    aten.nonzero.default: "nonzero (output size depends on the data)",
    aten.masked_select.default: "masked_select (output size depends on the data)",
    aten._unique2.default: "unique (output size depends on the data)",
    aten.unique_dim.default: "unique (output size depends on the data)",
    aten.unique_consecutive.default: "unique_consecutive (output size depends on the data)",
    aten.repeat_interleave.Tensor: "repeat_interleave with tensor repeats (data-dependent size)",
    aten._unique.default: "unique (output size depends on the data)",
    # the output length is max(minlength, max(input) + 1): a GPU reads the maximum on the host
    aten.bincount.default: "bincount (output size depends on the data)",
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

#: Set while :func:`host_reads_allowed` lets reads through.
_allowed: list[str] = []


class HostSyncError(Exception):
    """A device-to-host read happened inside :func:`no_host_sync`.

    Not a ``RuntimeError``, so that code translating kernel errors does not catch it."""


def _where() -> str:
    """The innermost frames outside torch and this module, for the error message."""
    frames = [
        f
        for f in traceback.extract_stack()
        if "/torch/" not in f.filename and f.filename != __file__
    ]
    return "".join(traceback.format_list(frames[-6:]))


def _names_host(arg: Any) -> bool:
    """Whether a ``.to()`` argument names the host by string (``"cpu"``, ``"cpu:0"``)."""
    return isinstance(arg, str) and torch.device(arg).type == "cpu"


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
            source = args[0].device if args and isinstance(args[0], torch.Tensor) else None
            if (
                device is not None
                and torch.device(device).type == "cpu"
                and source is not None
                and source.type != "cpu"
            ):
                what = "a copy to host memory (.to('cpu'))"
        if what is not None and not _allowed:
            raise HostSyncError(f"host read: {func} ({what}) at\n{_where()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Raise :class:`HostSyncError` at the first device-to-host read inside the block.

    Covers forward and backward when both run inside the block. ``torch._assert_async`` is
    allowed: it checks a value on the device without a host read. A ``.to()`` whose target is
    the string ``"cpu"`` counts as a host copy even when the tensor is already on the CPU (on a
    GPU it would be one); a target given as a ``torch.device`` counts only when the tensor is on
    another device, since ``x.to(losses.device)`` names the CPU in a CPU run and the GPU in a
    GPU run. When CUDA is in use, torch's CUDA sync check is on as well (module docstring).
    """
    patched = (*_HOST_METHODS, "to")
    originals = {name: getattr(torch.Tensor, name) for name in patched}
    own = {name: torch.Tensor.__dict__[name] for name in patched if name in torch.Tensor.__dict__}

    def refuse(name: str):
        original = originals[name]

        def method(self, *args, **kwargs):
            if not _allowed:
                raise HostSyncError(f"host read: Tensor.{name}() at\n{_where()}")
            return original(self, *args, **kwargs)

        return method

    def to(self, *args, **kwargs):
        if not _allowed and any(_names_host(a) for a in (*args, kwargs.get("device"))):
            raise HostSyncError(f"host read: Tensor.to('cpu') at\n{_where()}")
        return originals["to"](self, *args, **kwargs)

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_mode = torch.cuda.get_sync_debug_mode() if cuda else 0
    try:
        for name in _HOST_METHODS:
            setattr(torch.Tensor, name, refuse(name))
        torch.Tensor.to = to
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        with _HostSyncDetector():
            yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(cuda_mode)
        for name in patched:  # back to exactly what torch.Tensor had (some are inherited)
            if name in own:
                setattr(torch.Tensor, name, own[name])
            else:
                delattr(torch.Tensor, name)


@contextlib.contextmanager
def host_reads_allowed(reason: str) -> Iterator[None]:
    """Let host reads through inside the block, within an enclosing :func:`no_host_sync`.

    For the few methods that read values by their definition (a cache in host memory keyed
    by sample index, say): a test wraps exactly that method, so every other read still fails.
    ``reason`` says why, for whoever reads the test. torch's CUDA sync check (module docstring)
    stays on; a test that needs a read on a GPU as well runs that method outside the block.
    """
    if not reason:
        raise ValueError("`reason` must say why the host reads are allowed; got an empty string.")
    _allowed.append(reason)
    try:
        yield
    finally:
        _allowed.pop()
