"""Small helpers shared by the diagnostics: seeded random vectors and cost accounting.

Random vectors are always drawn on the CPU from a seeded ``torch.Generator`` (in float64) and
then moved to the operator's device and dtype, so a diagnostic gives the same numbers on every
device and every run with the same seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice, check_int
from .hvp import LinearOperator

Seed = int | torch.Generator
"""An integer seed (a fresh CPU generator is made from it) or a CPU ``torch.Generator``."""

VECTOR_KINDS = ("rademacher", "gaussian")


def make_generator(seed: Seed, arg: str = "seed") -> torch.Generator:
    """A CPU generator: ``seed`` itself when it is one, else ``Generator().manual_seed(seed)``."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"`{arg}` must be a CPU torch.Generator; got one on {seed.device}.")
        return seed
    return torch.Generator().manual_seed(check_int(seed, arg, minimum=0))


def random_vector(op: LinearOperator, generator: torch.Generator, kind: str) -> Tensor:
    """One random vector (n,) for ``op``: entries ±1 (``"rademacher"``) or N(0, 1)."""
    check_choice(kind, VECTOR_KINDS, "distribution")
    if kind == "rademacher":
        v = torch.randint(0, 2, (op.numel,), generator=generator, dtype=torch.float64) * 2 - 1
    else:
        v = torch.randn(op.numel, generator=generator, dtype=torch.float64)
    return v.to(device=op.device, dtype=op.dtype)


class CostMeter:
    """Snapshot of an operator's counters; :meth:`spent` gives ``(hvps, forwards)`` since then."""

    def __init__(self, op: object) -> None:
        self.op = op
        self.hvps0 = getattr(op, "hvp_count", 0)
        self.forwards0 = getattr(op, "forward_count", 0)

    def spent(self) -> tuple[int, int]:
        return (
            getattr(self.op, "hvp_count", 0) - self.hvps0,
            getattr(self.op, "forward_count", 0) - self.forwards0,
        )


def check_k(k: object, n: int) -> int:
    """``k`` eigenpairs of an operator of size ``n``: an integer in [1, n]."""
    k = check_int(k, "k", minimum=1)
    if k > n:
        raise ValueError(
            f"`k` must be <= the number of selected parameters (n = {n}); got k = {k}."
        )
    return k
