r"""``GroupBalancedSampler``: every group equally often, by subsampling or by reweighted draws.

The worst-group baseline next to group DRO (:class:`~lightning_losses.callbacks.GroupDRO`):
instead of changing the loss, change which samples an epoch sees so that each group
:math:`g` of size :math:`n_g` contributes equally, then train with plain ERM.

* ``mode="subsample"``: each epoch, a fresh uniformly random subset of
  :math:`m = \min_g n_g` samples from **every** group, shuffled together: :math:`G \cdot m`
  samples, none repeated. With ``resample=False`` the subset is drawn once (from ``seed``) and
  only its order changes between epochs: the setting of Chaudhuri, Ahuja, Arjovsky, Lopez-Paz
  (*Why does Throwing Away Data Improve Worst-Group Error?*, ICML 2023), who throw examples
  away until the groups are balanced and then run ERM on the reduced set.
* ``mode="reweight"``: :math:`N` draws with replacement, sample :math:`i` with probability
  :math:`p_i \propto 1/n_{g(i)}`, i.e. :math:`1/(G\, n_{g(i)})`: each group has probability
  :math:`1/G` per draw. This is ``--reweight_groups`` of kohpangwei/group_DRO
  (``DRODataset.get_loader``: ``WeightedRandomSampler(len(self)/group_counts[group],
  len(self), replacement=True)``), with the same number of draws, :math:`N` = the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from .._checks import check_choice, check_int
from ..weighting.infobatch import epoch_generator

__all__ = ["GroupBalancedSampler"]

MODES = ("subsample", "reweight")


def _check_groups(groups: object, num_groups: int | None) -> tuple[Tensor, int]:
    if isinstance(groups, Tensor):
        t = groups.detach().cpu()
    else:
        try:
            t = torch.as_tensor(groups)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                "`groups` must be a 1-D sequence or tensor of integer group ids, one per dataset "
                f"index; got {type(groups).__name__} ({err})."
            ) from err
    if t.numel() == 0:
        raise ValueError("`groups` is empty: the dataset has no sample to draw.")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"`groups` must hold integer group ids, one per dataset index; got dtype {t.dtype}."
        )
    if t.ndim != 1:
        raise ValueError(
            "`groups` must be 1-D, one integer group id per dataset index; got shape "
            f"{tuple(t.shape)}."
        )
    t = t.long()
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(f"`groups` must hold group ids >= 0; got the id {lo}.")
    if num_groups is None:
        num_groups = hi + 1
    else:
        check_int(num_groups, "num_groups", 1)
        if hi >= num_groups:
            raise ValueError(
                f"`groups` holds the id {hi}, outside [0, {num_groups - 1}] (num_groups="
                f"{num_groups})."
            )
    counts = torch.bincount(t, minlength=num_groups)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"`groups` has empty groups {empty[:10]} (of {num_groups}): every group needs at "
            "least one sample, or a balanced epoch would hold none. Renumber the groups "
            "present, or pass the right `num_groups`."
        )
    return t, num_groups


class GroupBalancedSampler(Sampler[int]):
    r"""Dataset indices that visit every group equally often (see the module docstring).

    Each epoch's order is a function of ``(seed, epoch)`` only: drawn from
    :func:`~lightning_losses.weighting.epoch_generator` (the global RNG is never touched), so it
    is the same on every rank and after every resume, and differs between epochs.

    **Epoch length.** ``subsample``: :math:`G \cdot \min_g n_g`. ``reweight``: :math:`N`. Per
    rank: that divided by ``num_replicas``, rounded down (:meth:`__len__` is exact).

    **DDP.** Every rank builds the same epoch sequence; rank :math:`r` of :math:`R` takes
    positions :math:`r, r + R, r + 2R, \dots` of its first :math:`R \lfloor T/R \rfloor`
    entries. The shares are disjoint and equally long; the **tail** of at most :math:`R - 1`
    entries is dropped rather than padded by repetition, so no sample is seen twice in a
    ``subsample`` epoch and no rank waits for another. The dropped entries are the last ones of
    a shuffled sequence, so a different, random few each epoch, and a group's count in one
    epoch is at most :math:`R - 1` below :math:`m` (none below when :math:`R` divides
    :math:`G m`). Under Lightning's DDP, pass ``num_replicas=trainer.world_size`` and
    ``rank=trainer.global_rank`` and build the trainer with ``use_distributed_sampler=False``
    (Lightning would otherwise wrap this sampler in its own distributed sampler).

    **State.** :meth:`set_epoch` selects the epoch (Lightning calls it before every training
    epoch, also after a resume). :meth:`state_dict` holds the seed and the epoch; a sampler
    that loads it continues with the same order. An epoch interrupted midway restarts from
    its first index.

    **Cost.** Per epoch, O(N log N) on the CPU in ``__iter__`` (one permutation and a sort for
    ``subsample``; two draws of N numbers for ``reweight``), no Python loop over samples or
    groups. Memory: the group ids and one epoch's indices as int64.

    **Why these defaults.** ``mode="subsample"``: throwing data away until the groups are
    balanced is what practitioners do "to achieve best results" on imbalanced groups
    (Chaudhuri et al., 2023), and it repeats no sample within an epoch, whereas reweighted
    draws show each minority sample many times per epoch. ``resample=True``: over the epochs, every
    sample of the large groups is used, not one fixed subset; pass ``False`` for the papers'
    static subset. Subsampling makes epochs much shorter when a group is small, so count
    training in steps, not epochs. ``seed=0`` as the rest of the library.

    Args:
        groups: one integer group id per dataset index, ``(N,)``: a tensor, NumPy array or
            sequence, ids in ``[0, G)``, every group non-empty.
        mode: ``"subsample"`` or ``"reweight"``.
        seed: integer seed of the per-epoch generator.
        num_replicas: number of ranks :math:`R`; default the initialised default process
            group's world size, else 1.
        rank: this rank, in ``[0, R)``; default the process group's rank, else 0.
        num_groups: :math:`G`; default ``max(groups) + 1``. Pass it so that a group missing
            from ``groups`` is reported instead of silently ignored.
        resample: ``subsample`` mode only: draw a new subset every epoch (True) or one subset
            for the whole run (False; the order is still reshuffled each epoch).

    Attributes:
        group_counts: int64 (G,), :math:`n_g`. per_group: :math:`\min_g n_g`.
        epoch_size: :math:`T`, the whole epoch's length before the split across ranks.
        epoch: the current epoch (:meth:`set_epoch`).

    Example:
        >>> groups = [0, 0, 0, 1, 2, 2]
        >>> sampler = GroupBalancedSampler(groups, mode="subsample", seed=0)
        >>> len(sampler), sorted(groups[i] for i in sampler)
        (3, [0, 1, 2])
    """

    def __init__(
        self,
        groups: Sequence[int] | Tensor,
        mode: str = "subsample",
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_groups: int | None = None,
        resample: bool = True,
    ) -> None:
        self.groups, self.num_groups = _check_groups(groups, num_groups)
        self.mode = check_choice(mode, MODES, "mode")
        self.seed = check_int(seed, "seed")
        if not isinstance(resample, bool):
            raise TypeError(f"`resample` must be a bool; got {type(resample).__name__}.")
        if not resample and self.mode != "subsample":
            raise ValueError(
                "`resample=False` (one fixed subset) applies to mode='subsample' only; got "
                f"mode={self.mode!r}."
            )
        self.resample = resample
        self.epoch = 0
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        self.num_replicas = check_int(num_replicas, "num_replicas", 1)
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        check_int(rank, "rank")
        if not 0 <= rank < self.num_replicas:
            raise ValueError(
                f"`rank` must lie in [0, {self.num_replicas - 1}] (num_replicas="
                f"{self.num_replicas}); got {rank}."
            )
        self.rank = rank

        self.group_counts: Tensor = torch.bincount(self.groups, minlength=self.num_groups)
        # Dataset indices grouped by id (ascending within a group) and where each group starts.
        self._by_group = torch.argsort(self.groups, stable=True)
        self._starts = torch.cumsum(self.group_counts, 0) - self.group_counts
        self.per_group = int(self.group_counts.min())
        total = self.num_groups * self.per_group if self.mode == "subsample" else len(self.groups)
        self.epoch_size = total
        if total // self.num_replicas == 0:
            raise ValueError(
                f"an epoch holds {total} samples (mode={self.mode!r}), fewer than num_replicas="
                f"{self.num_replicas}: some rank would get none."
            )

    # -- the epoch's sequence ------------------------------------------------------------------

    def _subsample(self, g: torch.Generator) -> Tensor:
        n = len(self.groups)
        # A fixed subset comes from its own generator, the same whatever the epoch.
        pick = g if self.resample else epoch_generator(self.seed, 0)
        perm = torch.randperm(n, generator=pick)
        # group-major order, random within each group
        ordered = perm[torch.argsort(self.groups[perm], stable=True)]
        rank_in_group = torch.arange(n) - self._starts[self.groups[ordered]]
        chosen = torch.sort(ordered[rank_in_group < self.per_group]).values
        return chosen[torch.randperm(chosen.numel(), generator=g)]

    def _reweight(self, g: torch.Generator) -> Tensor:
        n = len(self.groups)
        group = torch.randint(self.num_groups, (n,), generator=g)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        size = self.group_counts[group]
        within = (u * size).long().clamp_max(size - 1)
        return self._by_group[self._starts[group] + within]

    def epoch_indices(self, epoch: int | None = None) -> Tensor:
        """The whole epoch's sequence, before it is split across ranks: int64 (T,).

        ``epoch`` defaults to the current one (:meth:`set_epoch`).
        """
        epoch = self.epoch if epoch is None else check_int(epoch, "epoch", 0)
        g = epoch_generator(self.seed, epoch)
        return self._subsample(g) if self.mode == "subsample" else self._reweight(g)

    def __iter__(self) -> Iterator[int]:
        seq = self.epoch_indices()
        share = seq[self.rank : len(self) * self.num_replicas : self.num_replicas]
        return iter(share.tolist())

    def __len__(self) -> int:
        return self.epoch_size // self.num_replicas

    # -- epoch and state -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields (Lightning calls this)."""
        self.epoch = check_int(epoch, "epoch", 0)

    def state_dict(self) -> dict[str, Any]:
        """``seed`` and ``epoch`` (the order depends on nothing else), plus ``mode`` and
        ``num_samples`` to catch a resume with different data."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "mode": self.mode,
            "num_samples": len(self.groups),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`): same seed, same epoch."""
        missing = [k for k in ("seed", "epoch", "mode", "num_samples") if k not in state]
        if missing:
            raise ValueError(f"`state` lacks the key(s) {missing}; got keys {sorted(state)}.")
        if state["mode"] != self.mode or state["num_samples"] != len(self.groups):
            raise ValueError(
                f"`state` was saved by a sampler with mode={state['mode']!r} over "
                f"{state['num_samples']} samples; this one has mode={self.mode!r} over "
                f"{len(self.groups)}."
            )
        self.seed = check_int(state["seed"], "seed")
        self.set_epoch(state["epoch"])
