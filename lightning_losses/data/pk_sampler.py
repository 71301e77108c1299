r"""``PKSampler``: batches of :math:`P` identities with :math:`K` instances each, for re-ID.

Batch-hard triplet, circle and SupCon losses need positives in every batch: an anchor without
another instance of its identity has no positive pair. Drawing :math:`P` identities and
:math:`K` instances of each guarantees :math:`K - 1` positives per anchor (Hermans, Beyer,
Leibe, *In Defense of the Triplet Loss for Person Re-Identification*, 2017: P = 18 and K = 4
there; the bag-of-tricks baseline of fast-reid uses a batch of 64 with K = 4, i.e. P = 16).

**One epoch.** An epoch is ``rounds`` rounds. In each round every identity is visited once: the
identities are shuffled and cut into global steps of :math:`R \cdot P` identities (:math:`R`
ranks); the last :math:`L \bmod RP` identities of the round are left out (different ones every
round, as the order is random). Each visit takes the identity's next :math:`K` instances from
its own shuffled list, which is reshuffled when it runs out, so an identity's instances are
used evenly before any repeats.

**DDP.** At every step, rank :math:`r` takes identities :math:`rP, \dots, rP + P - 1` of the
step's :math:`RP` identities: each rank gets **whole identities** (all :math:`K` instances of
each), so no rank is left with an identity that has no positive on it (the per-rank PK batches
of fast-reid could split an identity across ranks, fast-reid issues #282 and #432), the ranks'
identities are disjoint at every step (embeddings gathered across ranks keep their positive
structure), and every rank runs exactly ``len(sampler)`` steps.

**Too few instances.** With ``replace=True`` (default) an identity with :math:`n < K`
instances fills its :math:`K` slots with all :math:`n` of them plus :math:`K - n` drawn
uniformly with replacement from them (an anchor's positive may then be an identical image;
fast-reid and torchreid pad the same way). With ``replace=False`` such an identity is an error
that names it and its count.

**Order and resume.** The order is a function of ``(seed, epoch)`` only
(:func:`~lightning_losses.weighting.epoch_generator`; the global RNG is never touched), the same
on every rank. :meth:`set_epoch` selects the epoch; :meth:`state_dict` records the seed, the
epoch and how many batches of it were trained, and a sampler that loads it yields exactly the
remaining batches of that epoch (then full epochs again).

**Under Lightning.** Pass it as ``DataLoader(dataset, batch_sampler=sampler)``. Lightning calls
``set_epoch`` on ``batch_sampler.sampler`` before each epoch, so :attr:`sampler` is this
sampler itself. Under DDP build it with ``num_replicas=trainer.world_size`` and
``rank=trainer.global_rank`` and the trainer with ``use_distributed_sampler=False`` (Lightning
would otherwise try to put its own distributed sampler inside and fail). Lightning restarts a
plain ``DataLoader`` at the start of its epoch after a mid-epoch resume; to continue exactly
there, load :meth:`state_dict` with the number of trained batches.

**InfoBatch and the other sampler owners.** They cannot be combined with this sampler: a
:class:`~lightning_losses.callbacks.TrainSamplerOwner` (InfoBatch, ...) replaces the training
loader's sampler with its own per-sample plan, which would throw the :math:`P \times K`
structure away, and pruning single samples would leave identities with fewer than :math:`K`
instances in a batch. The owners raise a ``ValueError`` naming this sampler at the start of
training (they refuse any custom sampler), and
:class:`~lightning_losses.data.ReIDDataModule` refuses them before that, in
``train_dataloader``. Reweight per sample instead (the loss pipeline's ``sample_weight``).

**Cost.** Per epoch, O(N + L log L) on the CPU for N samples and L identities; the batches
are built in ``__iter__`` as plain lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from .._checks import check_int
from ..weighting.infobatch import epoch_generator

__all__ = ["PKSampler"]


def _check_ids(ids: object) -> Tensor:
    try:
        t = ids.detach().cpu() if isinstance(ids, Tensor) else torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            "`ids` must be a 1-D sequence or tensor of integer identity ids, one per dataset "
            f"index; got {type(ids).__name__} ({err})."
        ) from err
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(
            f"`ids` must be a non-empty 1-D sequence, one id per dataset index; got shape "
            f"{tuple(t.shape)}."
        )
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"`ids` must hold integer identity ids; got dtype {t.dtype}.")
    return t.long()


class PKSampler(Sampler[list[int]]):
    r"""Batch sampler of :math:`P` identities :math:`\times` :math:`K` instances (see the module
    docstring for the epoch, DDP, padding, resume and InfoBatch rules).

    Each batch is a list of :math:`PK` dataset indices, identity-major: the :math:`K`
    instances of the first identity, then those of the second, ...

    **Epoch length.** ``len(sampler)`` is exact: :math:`\text{rounds} \cdot \lfloor L / (RP)
    \rfloor` batches on every rank (minus the batches already trained after a mid-epoch
    :meth:`load_state_dict`). The default ``rounds`` makes an epoch hold about as many samples
    as the dataset: :math:`\max(1, \operatorname{round}(N / (L K)))`.

    Args:
        ids: one integer identity id per dataset index, ``(N,)`` (tensor, array or sequence);
            any integers, they need not be contiguous.
        p: identities per batch on each rank, :math:`P \ge 1`. Default 16 (fast-reid's batch of
            64 with K = 4).
        k: instances per identity, :math:`K \ge 1` (a triplet loss needs :math:`K \ge 2`).
            Default 4 (Hermans et al. 2017; fast-reid).
        replace: fill identities with fewer than :math:`K` instances by drawing with
            replacement (True), or raise a ``ValueError`` naming them (False).
        seed: integer seed of the per-epoch generator. Default 0, as the rest of the library.
        num_replicas: number of ranks :math:`R`; default the process group's world size, else 1.
        rank: this rank in ``[0, R)``; default the process group's rank, else 0.
        rounds: visits of every identity per epoch; default as above.

    Attributes:
        batch_size: :math:`PK`. num_identities: :math:`L`. epoch: the current epoch.
        identities: the distinct ids, ascending, int64 ``(L,)``. counts: instances per identity.

    Example:
        >>> ids = [7, 7, 3, 3, 3, 9, 9, 9]
        >>> sampler = PKSampler(ids, p=3, k=2, seed=0)
        >>> len(sampler), sorted(ids[i] for i in next(iter(sampler)))
        (1, [3, 3, 7, 7, 9, 9])
    """

    def __init__(
        self,
        ids: Sequence[int] | Tensor,
        p: int = 16,
        k: int = 4,
        *,
        replace: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        rounds: int | None = None,
    ) -> None:
        self.ids = _check_ids(ids)
        self.p = check_int(p, "p", 1)
        self.k = check_int(k, "k", 1)
        if not isinstance(replace, bool):
            raise TypeError(f"`replace` must be a bool; got {type(replace).__name__}.")
        self.replace = replace
        self.seed = check_int(seed, "seed")
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

        self.identities, inverse, counts = torch.unique(
            self.ids, sorted=True, return_inverse=True, return_counts=True
        )
        self.counts = counts
        self.num_identities = len(self.identities)
        if not replace and int(counts.min()) < self.k:
            short = torch.nonzero(counts < self.k).flatten()
            listed = ", ".join(
                f"id {int(self.identities[i])} ({int(counts[i])})" for i in short[:10]
            )
            raise ValueError(
                f"with `replace=False` every identity needs at least k={self.k} instances; "
                f"{len(short)} have fewer: {listed}. Pass replace=True to fill them with "
                "repeated instances, a smaller k, or drop these identities."
            )
        step = self.num_replicas * self.p
        if self.num_identities < step:
            raise ValueError(
                f"a step needs num_replicas * p = {self.num_replicas} * {self.p} = {step} "
                f"distinct identities, but `ids` holds {self.num_identities}: use a smaller p."
            )
        if rounds is None:
            rounds = max(1, round(len(self.ids) / (self.num_identities * self.k)))
        self.rounds = check_int(rounds, "rounds", 1)
        # Dataset indices grouped by identity (ascending within each) and where each starts.
        self._by_identity = torch.argsort(inverse, stable=True)
        self._starts = torch.cumsum(counts, 0) - counts
        self.batch_size = self.p * self.k
        self.epoch = 0
        self._skip = 0  # batches of the current epoch already trained (from load_state_dict)
        self._handed_out = 0  # batches handed out in the current pass, counting the skipped

    # -- Lightning reads these ------------------------------------------------------------------

    @property
    def sampler(self) -> PKSampler:
        """This sampler: Lightning calls ``batch_sampler.sampler.set_epoch`` each epoch."""
        return self

    # -- the epoch's batches ----------------------------------------------------------------------

    @property
    def steps_per_round(self) -> int:
        return self.num_identities // (self.num_replicas * self.p)

    def _full_length(self) -> int:
        return self.rounds * self.steps_per_round

    def _instance_slots(self, g: torch.Generator) -> list[list[int]]:
        """Per identity, its ``rounds * K`` instance slots for the epoch (dataset indices)."""
        need = self.rounds * self.k
        slots: list[list[int]] = []
        for start, n in zip(self._starts.tolist(), self.counts.tolist(), strict=True):
            own = self._by_identity[start : start + n]
            if n < self.k:  # all of them once per visit, the rest drawn with replacement
                extra = own[torch.randint(n, (self.rounds, self.k - n), generator=g)]
                visits = torch.cat([own.expand(self.rounds, n), extra], dim=1)
                order = torch.argsort(torch.rand(self.rounds, self.k, generator=g), dim=1)
                slots.append(torch.gather(visits, 1, order).flatten().tolist())
                continue
            queue: list[int] = []
            while len(queue) < need:  # a fresh shuffled pass whenever its instances run out
                fresh = own[torch.randperm(n, generator=g)].tolist()
                # the previous pass's leftovers share a visit with the start of this pass:
                # put them last in it, so no visit holds an instance twice
                left = set(queue[len(queue) - len(queue) % self.k :])
                queue += [i for i in fresh if i not in left] + [i for i in fresh if i in left]
            slots.append(queue[:need])
        return slots

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All of this rank's batches of ``epoch`` (default the current one), from the start."""
        epoch = self.epoch if epoch is None else check_int(epoch, "epoch", 0)
        g = epoch_generator(self.seed, epoch)
        slots = self._instance_slots(g)
        step, k = self.num_replicas * self.p, self.k
        mine = slice(self.rank * self.p, (self.rank + 1) * self.p)
        batches: list[list[int]] = []
        for r in range(self.rounds):
            order = torch.randperm(self.num_identities, generator=g).tolist()
            for s in range(self.steps_per_round):
                batch: list[int] = []
                for identity in order[s * step : (s + 1) * step][mine]:
                    batch.extend(slots[identity][r * k : (r + 1) * k])
                batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0  # a resume's skip applies to one pass only
        self._handed_out = skip
        for batch in self.epoch_batches()[skip:]:
            self._handed_out += 1
            yield batch

    def __len__(self) -> int:
        return self._full_length() - self._skip

    # -- epoch and state ------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields (Lightning calls this).

        Selecting another epoch than the one a loaded state stopped in drops its skip.
        """
        epoch = check_int(epoch, "epoch", 0)
        if epoch != self.epoch:
            self._skip = 0
            self._handed_out = 0
        self.epoch = epoch

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """The seed, the epoch and ``batches_done``, the batches of it already trained.

        ``batches_done`` defaults to the batches this sampler has handed out in the current
        pass. A ``DataLoader`` with workers draws batches ahead of training (prefetching), so a
        training loop that checkpoints mid-epoch should pass the number it trained.
        """
        done = self._handed_out if batches_done is None else batches_done
        check_int(done, "batches_done", 0)
        if done > self._full_length():
            raise ValueError(
                f"`batches_done` must lie in [0, {self._full_length()}] (the epoch's length); "
                f"got {done}."
            )
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "batches_done": done,
            "num_samples": len(self.ids),
            "p": self.p,
            "k": self.k,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next pass yields the rest of its epoch."""
        keys = ("seed", "epoch", "batches_done", "num_samples", "p", "k", "num_replicas")
        missing = [key for key in keys if key not in state]
        if missing:
            raise ValueError(f"`state` lacks the key(s) {missing}; got keys {sorted(state)}.")
        mine = {
            "num_samples": len(self.ids),
            "p": self.p,
            "k": self.k,
            "num_replicas": self.num_replicas,
        }
        differ = {key: state[key] for key, value in mine.items() if state[key] != value}
        if differ:
            raise ValueError(
                f"`state` was saved by a sampler with {differ}; this one has "
                f"{ {key: mine[key] for key in differ} }."
            )
        self.seed = check_int(state["seed"], "seed")
        self.epoch = check_int(state["epoch"], "epoch", 0)
        done = check_int(state["batches_done"], "batches_done", 0)
        self._skip = min(done, self._full_length())
        self._handed_out = self._skip
