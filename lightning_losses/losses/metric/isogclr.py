r"""iSogCLR: two-view contrastive learning with a learned temperature per sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._checks import check_int, check_positive, check_range
from ..._reduce import PerSample
from ...registry import register_loss
from .._base import Loss
from .._sample_tables import all_gather_rows, check_sample_index, last_write
from ._pairs import _autocast_off, _common, distributed_world, masked_logsumexp
from .barlow_twins import check_views, gather_views

#: The per-sample state: log of the moving average u, momentum of the temperature's gradient,
#: temperature.
STATE = ("log_u", "tau_grad", "tau")


@register_loss(
    "isogclr",
    family="metric",
    paper="Qiu et al., Not All Semantics are Created Equal: Contrastive Self-supervised Learning "
    "with Automatic Temperature Individualization (iSogCLR), ICML 2023; reference code: "
    "LibAUC GCLoss_v1 (Optimization-AI/LibAUC)",
)
class ISogCLRLoss(Loss):
    r"""iSogCLR: a robust global contrastive loss with an individual temperature per sample.

    Two views :math:`a_i, b_i` of each image :math:`i` (L2-normalised), cosine similarities
    :math:`s`. For the anchor :math:`a_i` the positive is :math:`b_i` and the negatives
    :math:`S_i^-` are the :math:`2(M-1)` other embeddings of the batch (both views of the
    other :math:`M - 1` images). The objective of dataset sample :math:`i`, with its own
    temperature :math:`\tau_i \in [\tau_{\min}, \tau_{\max}]`, is

    .. math::
        F_i(\mathbf{w}, \tau_i) = \tau_i \log \frac{1}{|S_i^-|} \sum_{z \in S_i^-}
            \exp\Bigl(\frac{s(a_i, z) - s(a_i, b_i)}{\tau_i}\Bigr) + \tau_i \rho

    (a KL-regularised DRO over the negatives; :math:`\rho` sets the robustness). Its inner
    mean is tracked across epochs by a per-sample moving average
    :math:`u_i \leftarrow (1 - \gamma) u_i + \gamma \frac{1}{|S_i^-|}\sum_z e^{s(a_i,z)/\tau_i}`
    (the batch estimate alone at a sample's first visit), the embeddings get the gradient
    :math:`\sum_z \frac{e^{s(a_i,z)/\tau_i}}{|S_i^-|\, u_i} \nabla s(a_i, z) - \nabla s(a_i,
    b_i)`, and each temperature takes a momentum step on :math:`\partial F_i/\partial\tau_i`:

    .. math::
        g_i = \log u_i + \rho - \frac{1}{|S_i^-|}\sum_z \frac{e^{s(a_i,z)/\tau_i}}{u_i}
              \frac{s(a_i, z)}{\tau_i},\qquad
        v_i \leftarrow (1 - \beta) v_i + \beta g_i,\qquad
        \tau_i \leftarrow \operatorname{clip}(\tau_i - \eta v_i, \tau_{\min}, \tau_{\max})

    The same holds with the views swapped; sample :math:`i`'s value is the sum of its two
    anchors' :math:`\hat F_i = \tau_i \log u_i - s(a_i, b_i) + \tau_i\rho` (the objective at the
    tracked :math:`u_i`, with the gradient above), its stored :math:`u_i` the mean of the two
    views' estimates and its :math:`g_i` the mean of their temperature gradients, as in the
    reference code.

    **State.** Three persistent float64 tables of ``num_samples`` entries, indexed by the
    dataset index: ``log_u`` (:math:`\log u_i`, kept in log space so that
    :math:`e^{s/\tau}` cannot overflow at small temperatures; :math:`-\infty` = not seen
    yet), ``tau_grad`` (:math:`v`) and ``tau`` (starting at ``temperature``). They move with
    ``.to()``, are saved in checkpoints and restored exactly. They change only on a forward
    that trains (module in training mode, grad enabled, ``input`` requiring grad); other
    training-mode calls read them. In eval mode the indices belong to another set: every
    sample is at its first visit, with :math:`\tau_0`. A sample twice in one write keeps its
    last occurrence.

    **DDP.** Every write is all-gathered (the indices and new state of every rank) and applied
    on every rank in rank order, so all ranks hold the same tables (DDP's buffer broadcast from
    rank 0 would otherwise discard the other ranks' writes); ranks may hold different batch
    sizes (their sizes are exchanged: one host read per training step, under DDP only). With
    ``gather_across_ranks=True`` the negatives are both views of every rank's batch, as the
    reference code's ``distributed=True``, with gradients reaching each rank's own embeddings
    (then every rank must pass the same batch size).

    Shapes: ``input`` the first view ``(N, D)``, ``target`` the second view ``(N, D)``, row
    :math:`i` of both from dataset sample ``index[i]``; ``reduction="none"`` gives ``(N,)``.
    A batch of one image (no negative) gives zero and changes no state.

    Context: ``index``, the dataset indices ``(N,)`` (LossMixin passes ``batch["index"]`` or
    the index channel of a sampler-owning callback).

    Args:
        num_samples: size of the training set, the length of the tables; an index outside
            ``[0, num_samples)`` is an error. None (default): the tables grow to the largest
            index written and take the saved size when a checkpoint is loaded; growing reads
            the largest index on the host at every training step, which a fixed
            ``num_samples`` avoids.
        temperature: :math:`\tau_0`, 0.1 (LibAUC ``GCLoss_v1``).
        rho: :math:`\rho`, 0.3 (LibAUC ``GCLoss_v1``; 0.1 to 0.5 recommended for unimodal
            data, the official CIFAR-100 example uses 0.4; CLIP-style bimodal training uses
            6.0 with :math:`\tau \in [0.005, 0.05]`).
        gamma: :math:`\gamma`, 0.9, the weight of the new batch estimate in :math:`u`
            (LibAUC).
        eta: :math:`\eta`, 0.01, the temperatures' step size (LibAUC).
        beta: :math:`\beta`, 0.9, the weight of the new gradient in :math:`v` (LibAUC).
        tau_min, tau_max: the temperatures' bounds, 0.05 and 0.7 (LibAUC).
        gather_across_ranks: negatives from every rank's batch (False).

    Differences from LibAUC's ``GCLoss_v1(enable_isogclr=True)`` (its gradient and state
    updates are reproduced, tested on a float64 loop): LibAUC returns a surrogate whose
    gradient is the one above but whose value is not :math:`F_i`; it starts :math:`u` from
    the batch estimate only when the whole batch is unseen (one host read), this loss per
    sample; its distributed mode updates each rank's temperatures from that rank's batch only,
    so the ranks' tables drift apart.

    Example:
        >>> loss = ISogCLRLoss(num_samples=len(train_set))
        >>> value = loss(f(aug1(x)), f(aug2(x)), index=batch_index)
    """

    input_kind = "embeddings"
    #: the second view's embeddings, a real-valued tensor of the input's shape
    target_kind = "regression"
    context = ("index",)
    batch_statistic = True

    def __init__(
        self,
        num_samples: int | None = None,
        temperature: float = 0.1,
        rho: float = 0.3,
        *,
        gamma: float = 0.9,
        eta: float = 0.01,
        beta: float = 0.9,
        tau_min: float = 0.05,
        tau_max: float = 0.7,
        gather_across_ranks: bool = False,
        reduction: str = "mean",
        validate_args: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, validate_args=validate_args)
        if num_samples is not None:
            check_int(num_samples, "num_samples", minimum=1)
        self.num_samples = num_samples
        self.temperature = check_positive(temperature, "temperature")
        self.rho = check_positive(rho, "rho", allow_zero=True)
        self.gamma = check_range(gamma, "gamma", 0.0, 1.0, closed="right")
        self.eta = check_positive(eta, "eta", allow_zero=True)
        self.beta = check_range(beta, "beta", 0.0, 1.0)
        self.tau_min = check_positive(tau_min, "tau_min")
        self.tau_max = check_positive(tau_max, "tau_max")
        if not self.tau_min <= self.temperature <= self.tau_max:
            raise ValueError(
                f"`temperature` must lie in [`tau_min`, `tau_max`] = [{self.tau_min}, "
                f"{self.tau_max}]; got {self.temperature!r}."
            )
        self.gather_across_ranks = bool(gather_across_ranks)
        size = num_samples or 0
        self.register_buffer("log_u", torch.full((size,), -math.inf, dtype=torch.float64))
        self.register_buffer("tau_grad", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("tau", torch.full((size,), self.temperature, dtype=torch.float64))

    # -- the loss --------------------------------------------------------------------------------

    def per_sample(self, input: Tensor, target: Tensor, index: Tensor) -> PerSample:
        check_views(input, target, validate_args=self.validate_args)
        n = input.shape[0]
        index = check_sample_index(
            index, n, device=self.tau.device, num_samples=self.num_samples,
            training=self.training, per="pair of views",
        )  # fmt: skip
        world = distributed_world()[1] if self.gather_across_ranks else 1
        m = n * world  # images whose views are the references
        if m < 2:  # no negative: the objective is undefined; zero, connected to the graph
            a, b = _common(input, target)
            return PerSample((a.sum() + b.sum()) * 0 + a.new_zeros(n))
        with _autocast_off(input):
            a, b = _common(input, target)
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
            refs_a, refs_b = gather_views(a, b) if world > 1 else (a, b)
            offset = distributed_world()[0] * n if world > 1 else 0
            cols = torch.arange(m, device=a.device)[None, :]
            rows = torch.arange(n, device=a.device)[:, None] + offset
            negative = (cols != rows).repeat(1, 2)  # (n, 2m): both views of the other images
            positive = (a * b).sum(1)
            if self.training:
                state = [self._read(name, index).to(a.dtype) for name in STATE]
            else:
                state = [
                    a.new_full((n,), -math.inf),
                    a.new_zeros(n),
                    a.new_full((n,), self.temperature),
                ]
            log_u_old, v_old, tau = state
            value_a, log_u_a, g_a = self._anchor(
                a, torch.cat([refs_b, refs_a]), negative, tau, log_u_old
            )
            value_b, log_u_b, g_b = self._anchor(
                b, torch.cat([refs_a, refs_b]), negative, tau, log_u_old
            )
            values = value_a + value_b - 2.0 * positive
        if self.training and torch.is_grad_enabled() and input.requires_grad:
            with torch.no_grad():
                v = (1.0 - self.beta) * v_old + self.beta * (g_a + g_b) / 2.0
                new_tau = (tau - self.eta * v).clamp(self.tau_min, self.tau_max)
                # the stored u is the mean of the two views' u (log-sum-exp of the two logs)
                log_u = torch.logaddexp(log_u_a, log_u_b) - math.log(2.0)
                self._write(index, torch.stack([log_u, v, new_tau], 1))
        return PerSample(values)

    def _anchor(
        self, x: Tensor, refs: Tensor, negative: Tensor, tau: Tensor, log_u_old: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One view's anchors: :math:`\\tau\\log u + \\tau\\rho` plus a zero-valued term
        with the embeddings' gradient, the new :math:`\\log u` and the temperature gradient."""
        logits = x @ refs.T  # (n, 2m)
        count = float(negative.shape[1] - 2)  # 2(m - 1) negatives per anchor
        with torch.no_grad():
            scaled = logits / tau[:, None]
            log_estimate = masked_logsumexp(scaled, negative) - math.log(count)
            # u <- (1 - gamma) u + gamma * estimate, in log space; the estimate at a first visit
            keep = math.log1p(-self.gamma) if self.gamma < 1.0 else -math.inf
            moved = torch.logaddexp(keep + log_u_old, math.log(self.gamma) + log_estimate)
            log_u = torch.where(torch.isfinite(log_u_old), moved, log_estimate)
            weights = torch.where(negative, (scaled - log_u[:, None]).exp(), 0.0)
            grad_tau = log_u + self.rho - (weights * scaled).sum(1) / count
        surrogate = (weights * logits).sum(1) / count
        value = tau * log_u + tau * self.rho + (surrogate - surrogate.detach())
        return value, log_u, grad_tau

    # -- the tables ------------------------------------------------------------------------------

    def _default(self, name: str) -> float:
        return {"log_u": -math.inf, "tau_grad": 0.0, "tau": self.temperature}[name]

    def _read(self, name: str, index: Tensor) -> Tensor:
        """Stored values of ``index``; the initial value for samples beyond a grown table."""
        table = getattr(self, name)
        if table.numel() == 0:
            return torch.full(index.shape, self._default(name), dtype=table.dtype,
                              device=table.device)  # fmt: skip
        inside = index < table.shape[0]
        stored = table[torch.where(inside, index, 0)]
        return torch.where(inside, stored, torch.full_like(stored, self._default(name)))

    @torch.no_grad()
    def _write(self, index: Tensor, rows: Tensor) -> None:
        """Store ``rows`` ``(n, 3)`` (u, tau_grad, tau) at ``index``, every rank's writes on
        every rank; of repeated indices the last row wins."""
        rows = rows.to(device=self.tau.device, dtype=self.tau.dtype)
        if distributed_world()[1] > 1:
            index, rows = all_gather_rows(index, rows)
        if self.num_samples is None:
            size = int(index.max()) + 1  # a growing table: its size is data, read on the host
            if size > self.tau.shape[0]:
                for name in STATE:
                    old = getattr(self, name)
                    grown = torch.full((size,), self._default(name), dtype=old.dtype,
                                       device=old.device)  # fmt: skip
                    grown[: old.shape[0]] = old
                    setattr(self, name, grown)
        # The last row with the same index, found in O(n^2) on the batch (no table-sized
        # scratch), so that colliding writes all write the same value.
        final = rows[last_write(index)]
        for column, name in enumerate(STATE):
            getattr(self, name)[index] = final[:, column]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Without `num_samples` the tables take their size from the data: adopt the saved size.
        for name in STATE:
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if self.num_samples is None and saved is not None and saved.shape != current.shape:
                setattr(
                    self, name, torch.empty(saved.shape, dtype=current.dtype, device=current.device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, temperature={self.temperature}, rho={self.rho}, "
            f"gamma={self.gamma}, eta={self.eta}, beta={self.beta}, tau_min={self.tau_min}, "
            f"tau_max={self.tau_max}, gather_across_ranks={self.gather_across_ranks}, "
            f"{super().extra_repr()}"
        )
