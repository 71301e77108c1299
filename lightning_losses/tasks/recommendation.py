r"""Implicit-feedback recommendation: matrix factorisation with BPR on synthetic noisy data.

The task behind ``benchmarks/pld_recommendation.py`` and the example of the
:class:`~lightning_losses.callbacks.pld.PLD` callback:

* :class:`MatrixFactorization`: user and item embeddings, score :math:`s_{ui} = e_u \cdot e_i`,
  trained with a per-sample BPR loss through :class:`~lightning_losses.LossMixin`, evaluated by
  Recall@k and NDCG@k (torchmetrics' retrieval metrics) with the training positives excluded
  from the ranking.
* :class:`SyntheticImplicitFeedback`: users × items with latent-factor preferences, a training
  split with a known fraction of injected noisy interactions, clean validation and test
  interactions, and training batches of whole candidate pools (one pool per user row).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.retrieval import RetrievalNormalizedDCG, RetrievalRecall

from .._checks import check_int, check_number, check_positive
from .._reduce import PerSample
from ..losses._base import Loss
from ..mixins import LossMixin
from ..weighting.infobatch import epoch_generator
from ..weighting.pld import DEFAULT_NUM_CANDIDATES

__all__ = [
    "BPRLoss",
    "MatrixFactorization",
    "SyntheticImplicitFeedback",
    "ranking_inputs",
]


class BPRLoss(Loss):
    r"""Bayesian personalised ranking loss, one value per (user, positive, negative) triple.

    .. math::
        \ell = \operatorname{softplus}(s_{\text{neg}} - s_{\text{pos}})
             = -\log \sigma(s_{\text{pos}} - s_{\text{neg}})

    (Rendle, Freudenthaler, Gantner, Schmidt-Thieme, *BPR: Bayesian Personalized Ranking from
    Implicit Feedback*, UAI 2009; the form of PLD's ``_rec_loss``). ``input`` is ``(N, 2)``:
    column 0 the positive's score, column 1 the negative's; ``target`` is unused (pass
    ``None``). Not in the loss registry: it belongs to this task.
    """

    input_kind: ClassVar[str] = "scores"

    def per_sample(self, input: Tensor, target: Any = None, **context: Any) -> PerSample:
        if input.ndim != 2 or input.shape[1] != 2:
            raise ValueError(
                "`input` must have shape (N, 2): the positive's and the negative's score per "
                f"triple; got {tuple(input.shape)}."
            )
        return PerSample(F.softplus(input[:, 1] - input[:, 0]))


def ranking_inputs(
    scores: Tensor, target: Tensor, exclude: Tensor, users: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten a block of users' scores for torchmetrics' retrieval metrics.

    Args:
        scores: (B, I) scores of every item for B users.
        target: (B, I) bool, the held-out relevant items.
        exclude: (B, I) bool, items left out of the ranking (the training positives).
        users: (B,) user ids, the retrieval query of each row.

    Returns:
        ``(preds, target, indexes)``, 1-D over the kept (user, item) pairs.
    """
    keep = ~exclude
    indexes = users.to(torch.long)[:, None].expand_as(scores)
    return scores[keep], target[keep], indexes[keep]


class MatrixFactorization(LossMixin, L.LightningModule):
    r"""Matrix factorisation trained with BPR (one triple per training row).

    :math:`s_{ui} = e_u \cdot e_i`; a training batch is a mapping with ``"user"``, ``"pos"``,
    ``"neg"`` (each ``(N,)``) and, for candidate-selection callbacks such as
    :class:`~lightning_losses.callbacks.pld.PLD`, ``"pool"``. The loss is :class:`BPRLoss`
    through :meth:`~lightning_losses.LossMixin.compute_loss`, so callbacks can weight its
    per-triple values. Validation and test batches carry ``"user"`` ``(B,)``, ``"target"`` and
    ``"exclude"`` ``(B, I)`` bool; every item not excluded is ranked, and
    ``{stage}/recall@{k}`` and ``{stage}/ndcg@{k}`` are logged (torchmetrics'
    ``RetrievalRecall`` and ``RetrievalNormalizedDCG``, users without a relevant item skipped).

    Args:
        num_users, num_items: table sizes.
        dim: embedding size. Default 64 (PLD's ``--out_dim``).
        lr, weight_decay: AdamW. Defaults 1e-2 and 0.0 (for this module's small synthetic data;
            PLD's reference trains MF with AdamW at 1e-3 for 100 epochs on MIND).
        init_std: embeddings start from N(0, init_std²). Default 0.1 (PLD's MF).
        top_k: the k of Recall@k and NDCG@k. Default 10.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        init_std: float = 0.1,
        top_k: int = 10,
    ) -> None:
        super().__init__()
        check_int(num_users, "num_users", 1)
        check_int(num_items, "num_items", 1)
        check_int(dim, "dim", 1)
        check_int(top_k, "top_k", 1)
        check_positive(lr, "lr")
        check_positive(weight_decay, "weight_decay", allow_zero=True)
        check_positive(init_std, "init_std")
        self.save_hyperparameters()
        self.user_emb = nn.Embedding(num_users, dim)
        self.item_emb = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.normal_(self.item_emb.weight, std=init_std)
        self.criterion = BPRLoss()
        metrics = MetricCollection(
            {
                f"recall@{top_k}": RetrievalRecall(top_k=top_k, empty_target_action="skip"),
                f"ndcg@{top_k}": RetrievalNormalizedDCG(top_k=top_k, empty_target_action="skip"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """:math:`s_{ui}` for paired ``users`` and ``items`` (same shape)."""
        return (self.user_emb(users) * self.item_emb(items)).sum(-1)

    def forward(self, users: Tensor) -> Tensor:
        """Scores of every item for ``users``: ``(B, num_items)``."""
        return self.user_emb(users) @ self.item_emb.weight.t()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        user = batch["user"]
        scores = torch.stack([self.score(user, batch["pos"]), self.score(user, batch["neg"])], 1)
        return self.compute_loss(scores, None, batch=batch)

    def _rank(self, batch: dict[str, Tensor], metrics: MetricCollection) -> None:
        users = batch["user"]
        preds, target, indexes = ranking_inputs(
            self(users), batch["target"], batch["exclude"], users
        )
        metrics.update(preds, target, indexes=indexes)
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._rank(batch, self.test_metrics)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


class _Examples(Dataset):
    """Training items are example ids; the pools are drawn per batch (see ``build_pools``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _RankingUsers(Dataset):
    def __init__(self, target: Tensor, exclude: Tensor) -> None:
        self.target, self.exclude = target, exclude

    def __len__(self) -> int:
        return self.target.shape[0]

    def __getitem__(self, u: int) -> dict[str, Any]:
        return {"user": u, "target": self.target[u], "exclude": self.exclude[u]}


class SyntheticImplicitFeedback(L.LightningDataModule):
    r"""Synthetic implicit feedback with a known fraction of noisy training interactions.

    **Generation** (one ``torch.Generator`` seeded with ``seed``):

    .. code-block:: text

        a_ui   = p_u·q_i / sqrt(d) + b_i          p_u, q_i ~ N(0, I_d), b_i ~ N(0, popularity²)
        liked  = m items per user, drawn without replacement with P ∝ exp(sharpness · a_ui)
        split  = each user's liked items shuffled: test (test_fraction·m), validation
                 (val_fraction·m), training (the rest, n_clean)
        noise  = n_noisy = round(noise·n_clean / (1 − noise)) items per user, uniform among
                 the items the user does not like, added to the training split

    so a fraction ``noise`` of every user's training interactions is noise (exactly, when
    ``noise·n_clean/(1 − noise)`` is whole: the defaults give 28 clean + 7 noisy). PLD's
    reference instead adds ``noise·n_train`` items, a fraction ``noise/(1 + noise)``.
    Validation and test hold clean interactions only.

    **Training batches.** One training example is one user row (each user appears
    ``examples_per_user`` times per epoch, shuffled). For a batch of B examples,
    :meth:`build_pools` draws, per example, ``num_candidates`` = k distinct training positives of
    the user and one negative per positive (uniform among the items not in the user's training
    split, the noisy ones included, as in the reference), and flattens them into B·k rows::

        {"user": (B·k,), "pos": (B·k,), "neg": (B·k,), "pool": (B·k,), "noisy": (B·k,) bool}

    ``pool`` is the example id, shared by the k rows of one example: one pool per user row, never
    split across batches or ranks. ``noisy`` is the ground truth (diagnostics only). The
    draws happen in :meth:`on_before_batch_transfer` with a generator keyed on the epoch and the
    batch's first example id, so they are reproducible and differ every epoch; the global RNG
    is never used. The reference shares one negative among a user's k positives
    (``shared_negative=True``); by default each positive has its own, so every row is an
    ordinary BPR triple.

    **Evaluation batches**: ``{"user": (B,), "target": (B, I) bool, "exclude": (B, I) bool}``;
    validation ranks everything but the training split, test everything but training and
    validation (as the reference).

    Args:
        num_users, num_items: matrix size. Defaults 1000 × 1000.
        latent_dim: d of the true preferences. Default 16.
        interactions_per_user: m liked items per user. Default 40.
        noise: fraction of noisy training interactions, in [0, 1). Default 0.2.
        num_candidates: k candidates per pool. Default 5 (PLD's ``--item_num``).
        examples_per_user: user rows per epoch per user. Default ``None``: one per training
            interaction of the user (``num_clean + num_noisy``), so that an epoch trains as many
            rows as there are interactions, as the reference's epochs do (PLD's warm-up is
            counted in these epochs).
        shared_negative: one negative for all k candidates of a pool, as the reference
            (``get_train_batch(..., multi_sample=True)``); then the losses of a pool differ
            only through the positives' scores. Default False: one negative per candidate.
        batch_size: examples (pools) per training batch; a batch has ``batch_size·k`` rows.
        eval_batch_size: users per evaluation batch.
        sharpness: how strongly the liked items follow the true preference. Default 4 (ranking
            by the true affinity then reaches NDCG@10 ≈ 0.47 on validation; 2 gives ≈ 0.27).
        popularity: standard deviation of the item popularity term. Default 0.5.
        val_fraction, test_fraction: shares of each user's liked items. Defaults 0.1, 0.2
            (the reference's 70/10/20 split).
        seed: seeds the data and every draw.
    """

    def __init__(
        self,
        num_users: int = 1000,
        num_items: int = 1000,
        latent_dim: int = 16,
        interactions_per_user: int = 40,
        noise: float = 0.2,
        num_candidates: int = DEFAULT_NUM_CANDIDATES,
        examples_per_user: int | None = None,
        shared_negative: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 500,
        sharpness: float = 4.0,
        popularity: float = 0.5,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_users = check_int(num_users, "num_users", 1)
        self.num_items = check_int(num_items, "num_items", 2)
        self.latent_dim = check_int(latent_dim, "latent_dim", 1)
        m = check_int(interactions_per_user, "interactions_per_user", 1)
        self.noise = check_number(noise, "noise")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"`noise` must lie in [0, 1); got {noise!r}.")
        self.num_candidates = check_int(num_candidates, "num_candidates", 1)
        self._examples_per_user = (
            None
            if examples_per_user is None
            else check_int(examples_per_user, "examples_per_user", 1)
        )
        if not isinstance(shared_negative, bool):
            raise TypeError(
                f"`shared_negative` must be a bool; got {type(shared_negative).__name__}."
            )
        self.shared_negative = shared_negative
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.eval_batch_size = check_int(eval_batch_size, "eval_batch_size", 1)
        self.sharpness = check_positive(sharpness, "sharpness", allow_zero=True)
        self.popularity = check_positive(popularity, "popularity", allow_zero=True)
        val_fraction = check_number(val_fraction, "val_fraction")
        test_fraction = check_number(test_fraction, "test_fraction")
        self.seed = check_int(seed, "seed")

        self.num_test = round(test_fraction * m)
        self.num_val = round(val_fraction * m)
        self.num_clean = m - self.num_test - self.num_val
        self.num_noisy = round(self.noise * self.num_clean / (1.0 - self.noise))
        if min(self.num_test, self.num_val) < 1 or self.num_clean < self.num_candidates:
            raise ValueError(
                "each user needs >= 1 test and >= 1 validation item and >= `num_candidates`="
                f"{self.num_candidates} clean training items; interactions_per_user={m}, "
                f"val_fraction={val_fraction}, test_fraction={test_fraction} give "
                f"{self.num_test} test, {self.num_val} validation, {self.num_clean} training."
            )
        if m + self.num_noisy > self.num_items:
            raise ValueError(
                f"`num_items`={num_items} is too small for {m} liked + {self.num_noisy} noisy "
                "items per user."
            )
        self.interactions_per_user = m
        self._generate()

    @property
    def noise_fraction(self) -> float:
        """The realised fraction of noisy training interactions (every user has the same)."""
        return self.num_noisy / (self.num_clean + self.num_noisy)

    def _generate(self) -> None:
        u, i, d = self.num_users, self.num_items, self.latent_dim
        g = torch.Generator().manual_seed(self.seed)
        user_f = torch.randn(u, d, generator=g)
        item_f = torch.randn(i, d, generator=g)
        bias = torch.randn(i, generator=g) * self.popularity
        self.affinity = user_f @ item_f.t() / math.sqrt(d) + bias

        # m liked items ~ successive sampling with P ∝ exp(sharpness·a): Gumbel-top-m.
        gumbel = -torch.empty(u, i).exponential_(generator=g).log()
        liked = torch.topk(self.sharpness * self.affinity + gumbel, self.interactions_per_user)[1]
        liked = torch.gather(liked, 1, torch.rand(liked.shape, generator=g).argsort(1))
        test, val, clean = liked.split([self.num_test, self.num_val, self.num_clean], dim=1)

        liked_matrix = torch.zeros(u, i, dtype=torch.bool).scatter_(1, liked, True)
        keys = torch.rand(u, i, generator=g).masked_fill(liked_matrix, -1.0)
        noisy = torch.topk(keys, self.num_noisy)[1]

        #: (U, T) training items per user (clean first, then noisy), T = num_clean + num_noisy
        self.train_items = torch.cat([clean, noisy], 1)
        self.train_noisy = torch.zeros(self.train_items.shape, dtype=torch.bool)
        self.train_noisy[:, self.num_clean :] = True
        self.train_matrix = self._matrix(self.train_items)
        self.val_matrix = self._matrix(val)
        self.test_matrix = self._matrix(test)

    def _matrix(self, items: Tensor) -> Tensor:
        out = torch.zeros(self.num_users, self.num_items, dtype=torch.bool)
        return out.scatter_(1, items, True)

    # -- training batches ---------------------------------------------------------------------

    @property
    def examples_per_user(self) -> int:
        """User rows per epoch per user (see the argument)."""
        if self._examples_per_user is None:
            return self.num_clean + self.num_noisy
        return self._examples_per_user

    @property
    def num_examples(self) -> int:
        """Training examples (user rows) per epoch."""
        return self.num_users * self.examples_per_user

    def batch_generator(self, epoch: int, first_example: int) -> torch.Generator:
        """The generator of the batch whose first example id is ``first_example``."""
        return epoch_generator(self.seed, epoch * self.num_examples + first_example)

    def build_pools(self, examples: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Draw the candidate pools of a batch of example ids ``(B,)``; rows ``B·k`` (see class)."""
        examples = torch.as_tensor(examples, dtype=torch.long).flatten()
        b, k = examples.numel(), self.num_candidates
        users = examples % self.num_users
        slots = torch.rand(b, self.train_items.shape[1], generator=generator).argsort(1)[:, :k]
        rows = users[:, None]
        pos = self.train_items[rows, slots]
        width = 1 if self.shared_negative else k
        neg = torch.randint(0, self.num_items, (b, width), generator=generator)
        bad = self.train_matrix[rows.expand(b, width), neg]
        while bool(bad.any()):
            neg[bad] = torch.randint(0, self.num_items, (int(bad.sum()),), generator=generator)
            bad = self.train_matrix[rows.expand(b, width), neg]
        neg = neg.expand(b, k)
        return {
            "user": users.repeat_interleave(k),
            "pos": pos.flatten(),
            "neg": neg.flatten(),
            "pool": examples.repeat_interleave(k),
            "noisy": self.train_noisy[rows, slots].flatten(),
        }

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, Tensor):  # evaluation batches are mappings already
            return batch
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.build_pools(batch, self.batch_generator(epoch, int(batch[0])))

    # -- loaders ------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _Examples(self.num_examples),
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        data = _RankingUsers(self.val_matrix, self.train_matrix)
        return DataLoader(data, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        data = _RankingUsers(self.test_matrix, self.train_matrix | self.val_matrix)
        return DataLoader(data, batch_size=self.eval_batch_size)
