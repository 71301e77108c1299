r"""EL2N and GraNd data-diet scores, and static pruning by score (no Lightning).

Paul, Ganguli, Dziugaite, *Deep Learning on a Data Diet: Finding Important Examples Early in
Training*, NeurIPS 2021 (arXiv 2107.07075). A sample's importance is read off a network early in
training and averaged over independent initialisations :math:`w_0^{(r)}`, :math:`r = 1..R`:

.. math::
    \mathrm{EL2N}(x, y) = \mathbb{E}_{w_0}\,\big\lVert \operatorname{softmax}(f_{w_t}(x))
        - \operatorname{onehot}(y) \big\rVert_2, \qquad
    \mathrm{GraNd}(x, y) = \mathbb{E}_{w_0}\,\big\lVert \nabla_{w}\, \ell(f_{w_t}(x), y)
        \big\rVert_2

where :math:`w_t` are the weights after :math:`t` epochs of ordinary training from
:math:`w_0`. The training set is then pruned **once**, before the real run: the samples with the
lowest scores (the easiest ones) are dropped and a fresh network is trained on the rest.

Pieces of this module:

* :func:`el2n_scores` and :func:`grand_scores`: one run's scores for one batch;
* :func:`score_dataset`: one run's scores for a whole dataset, in dataset order;
* :func:`average_scores`: the expectation over runs (initialisations);
* :func:`prune_by_score`: the indices to keep, for ``torch.utils.data.Subset``.

**Defaults and their source.** The paper scores ResNet-18 on CIFAR-10 (200 training epochs)
with GraNd **at initialisation** (:math:`t = 0`) and EL2N **at epoch 20**, each averaged over
**10** independent initialisations, and prunes the lowest scores; with EL2N at epoch 20, half of
CIFAR-10 can be pruned with slightly higher test accuracy. Kirsch's reproduction (*Does "Deep
Learning on a Data Diet" reproduce? Overall yes, but GraNd at Initialization does not*, 2023)
confirms EL2N at epoch 20 but not GraNd at initialisation, which there does no better than
random pruning; if you use GraNd, score it a few epochs in as well. Nothing here trains: the
caller trains each run for its :math:`t` epochs and scores it.

**Cost.** EL2N: one forward pass per sample per run and no backward pass, about a third of a
training epoch per run, on top of the :math:`t` early epochs of each run (10 runs × 20 epochs
on CIFAR-10: the price of a full 200-epoch training). GraNd: one per-sample gradient
per sample per run, i.e. a backward pass whose memory holds ``chunk_size`` copies of the
gradient (see :func:`grand_scores`); typically several times the cost of a training epoch.

This module is pure PyTorch; it imports nothing from Lightning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset

from .._checks import check_choice, check_finite, check_float, check_int, check_number, check_tensor

__all__ = [
    "DEFAULT_NUM_RUNS",
    "DEFAULT_SCORE_EPOCH",
    "average_scores",
    "el2n_scores",
    "grand_scores",
    "num_pruned",
    "prune_by_score",
    "score_dataset",
]

DEFAULT_NUM_RUNS = 10
"""Independent initialisations the paper averages every score over (Paul et al., 2021)."""
DEFAULT_SCORE_EPOCH = 20
"""Epoch at which the paper computes EL2N on CIFAR-10, out of 200 (Paul et al., 2021); the
paper computes GraNd at initialisation (epoch 0)."""

LossFn = Callable[[Tensor, Tensor], Tensor]


# -- EL2N --------------------------------------------------------------------------------------


def _check_logits_target(logits: object, target: object) -> tuple[Tensor, Tensor]:
    check_tensor(logits, "logits")
    check_tensor(target, "target")
    check_float(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(
            f"`logits` must have shape (N, K), one row of class scores per sample; got shape "
            f"{tuple(logits.shape)}."
        )
    n, k = logits.shape
    if target.is_floating_point():
        if target.shape != (n, k):
            raise ValueError(
                f"`target` of class probabilities must have the logits' shape ({n}, {k}); got "
                f"{tuple(target.shape)}."
            )
        return logits, target
    if target.dtype == torch.bool or target.dtype.is_complex:
        raise TypeError(f"`target` must hold integer class indices; got dtype {target.dtype}.")
    if target.shape != (n,):
        raise ValueError(
            f"`target` of class indices must have shape ({n},) for logits of shape ({n}, {k}); "
            f"got {tuple(target.shape)}."
        )
    if n > 0 and not torch.compiler.is_compiling():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= k:
            raise ValueError(
                f"`target` must hold class indices in [0, {k - 1}] (logits have {k} classes); "
                f"got values from {lo} to {hi}."
            )
    return logits, target


def _scaled_norm(x: Tensor, dim: int) -> Tensor:
    """``‖x‖₂`` along ``dim`` as ``s · ‖x / s‖₂`` with ``s = max |x|``: squares of entries below
    about 1e-19 (float32) neither underflow to 0 nor, above 1e19, overflow to infinity."""
    scale = x.abs().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return scale.squeeze(dim) * torch.linalg.vector_norm(x / scale, dim=dim)


def el2n_scores(logits: Tensor, target: Tensor) -> Tensor:
    r"""Per-sample error L2 norm :math:`\lVert \operatorname{softmax}(z) - y \rVert_2`, shape (N,).

    One run's EL2N score (average runs with :func:`average_scores`). It lies in
    :math:`[0, \sqrt 2]`: 0 for a confident correct prediction, :math:`\sqrt 2` for a confident
    wrong one.

    Args:
        logits: (N, K) floating-point logits :math:`z`.
        target: (N,) integer class indices in ``[0, K)``, or (N, K) class probabilities
            :math:`y` (soft labels, e.g. label smoothing), with the logits' shape.

    Returns:
        float32 (N,), on the logits' device. Computed in float32 (float64 for float64 logits);
        differentiable, though scores are normally taken under ``torch.no_grad()``.

    **Stability.** With a class index :math:`y`, the error of the true class is
    :math:`p_y - 1 = -\sum_{k \ne y} p_k`; it is computed as that sum of the other
    probabilities, which softmax gives to full relative precision, instead of as
    :math:`p_y - 1`, which rounds to 0 in float32 once :math:`1 - p_y < 6\cdot 10^{-8}` and
    drops the true class's share of the error (for two classes the score would come out
    :math:`\sqrt 2` times too small, so confident samples would be mis-ranked against less
    confident ones). The norm is scaled by the row's largest error, so errors down to the
    smallest float32 (about :math:`10^{-38}`) keep their value instead of underflowing when
    squared: a two-class logit margin of 60 scores :math:`\sqrt 2\, e^{-60} \approx 1.2\cdot
    10^{-26}`, not 0. This matters because the easiest samples are the ones ranked for pruning.
    Soft targets use :math:`p - y` directly.

    Example:
        >>> z = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
        >>> el2n_scores(z, torch.tensor([0, 0]))
        tensor([0.0254, 1.3888])
    """
    logits, target = _check_logits_target(logits, target)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    p = torch.softmax(logits.to(dtype), dim=1)
    if target.is_floating_point():
        err = p - target.to(dtype)
    else:
        true = F.one_hot(target.long(), logits.shape[1]).bool()
        others = p.masked_fill(true, 0.0)
        err = others - true * others.sum(dim=1, keepdim=True)
    return _scaled_norm(err, dim=1).float()


# -- GraNd -------------------------------------------------------------------------------------


def _check_chunk_size(chunk_size: int | None) -> int | None:
    return None if chunk_size is None else check_int(chunk_size, "chunk_size", 1)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside the block; each module's own flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _check_batch_norm(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise ValueError(
                f"`model` has batch norm {name or type(m).__name__!r} without running statistics "
                "(track_running_stats=False): it normalises with the statistics of the batch "
                "even in eval mode, so a sample's gradient depends on the rest of the batch and "
                "per-sample gradients are not defined. Use batch norm with running statistics "
                "(the default), or a per-sample normalisation (GroupNorm, LayerNorm)."
            )


def _selected_parameters(model: nn.Module, params: Sequence[str] | None) -> list[str]:
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
        if not names:
            raise ValueError("`model` has no parameter that requires grad; nothing to score.")
        return names
    if isinstance(params, str) or not isinstance(params, Sequence):
        raise TypeError(
            f"`params` must be a sequence of parameter names (see model.named_parameters()); "
            f"got {type(params).__name__}."
        )
    unknown = [n for n in params if n not in named]
    if unknown or not params:
        raise ValueError(
            f"`params` must name at least one parameter of `model`; unknown: {unknown}; "
            f"known: {list(named)}."
        )
    return list(dict.fromkeys(params))


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of the concatenation of ``tensors``, in float32 or wider, scaled."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return _scaled_norm(torch.cat([t.to(dtype).reshape(-1) for t in tensors]), dim=0)


def _grand_vmap(
    model: nn.Module,
    loss_fn: LossFn,
    names: list[str],
    inputs: Tensor,
    target: Tensor,
    chunk_size: int | None,
) -> Tensor:
    selected = set(names)
    diff = {n: p.detach() for n, p in model.named_parameters() if n in selected}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
    buffers = dict(model.named_buffers())

    def sample_loss(d: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        out = functional_call(model, (d, fixed, buffers), (x.unsqueeze(0),))
        return loss_fn(out, t.unsqueeze(0)).sum()

    def sample_norm(d: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        g = grad(sample_loss)(d, x, t)
        return _norm([g[n] for n in names])

    return vmap(sample_norm, in_dims=(None, 0, 0), chunk_size=chunk_size)(diff, inputs, target)


def _grand_loop(
    model: nn.Module, loss_fn: LossFn, names: list[str], inputs: Tensor, target: Tensor
) -> Tensor:
    named = dict(model.named_parameters())
    wrt = [named[n] for n in names]
    flags = [p.requires_grad for p in wrt]
    try:
        for p in wrt:
            p.requires_grad_(True)
        norms = []
        for i in range(inputs.shape[0]):
            loss = loss_fn(model(inputs[i : i + 1]), target[i : i + 1]).sum()
            norms.append(_norm(torch.autograd.grad(loss, wrt, materialize_grads=True)))
    finally:
        for p, flag in zip(wrt, flags, strict=True):
            p.requires_grad_(flag)
    return torch.stack(norms)


def grand_scores(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    target: Tensor,
    params: Sequence[str] | None = None,
    chunk_size: int | None = 32,
) -> Tensor:
    r"""Per-sample gradient norms :math:`\lVert \nabla_w \ell(f_w(x_i), y_i) \rVert_2`, shape (N,).

    One run's GraNd score (average runs with :func:`average_scores`). The norm is taken over
    the concatenation of the gradients of all parameters named in ``params``.

    Args:
        model: the network; ``model(x)`` maps a batch ``(B, ...)`` to outputs ``(B, ...)``.
        loss_fn: ``loss_fn(output, target) -> Tensor`` called on a batch of **one** sample
            (``output`` of shape ``(1, ...)``, ``target`` of shape ``(1, ...)``); a non-scalar
            result is summed. ``torch.nn.functional.cross_entropy`` is the paper's loss.
        inputs: (N, ...) the samples.
        target: (N, ...) their targets, batch-first.
        params: names of the parameters to differentiate (as in ``model.named_parameters()``);
            the others are held fixed. Default: every parameter with ``requires_grad``. Naming
            only the last layer gives a cheap proxy.
        chunk_size: samples whose gradients are held in memory at once, >= 1, or ``None`` for
            all N. Default 32: peak memory is about ``chunk_size`` × (number of parameters)
            floats on top of the activations.

    Returns:
        float32 (N,), on the parameters' device (computed in float32, or float64 for a float64
        model).

    **Eval mode, and batch norm.** The model runs in eval mode during the call (every
    submodule's own ``training`` flag is restored afterwards): dropout is off and batch norm
    normalises with its running statistics, so each sample's output, and hence its gradient,
    depends on that sample alone. In train mode, batch norm would mix the samples of a batch
    (and per-sample gradients would not be defined); ``torch.func.vmap`` also cannot update the
    running statistics in place. A batch norm without running statistics
    (``track_running_stats=False``) uses batch statistics even in eval mode and is rejected with
    a ``ValueError``. At initialisation the running statistics are still (0, 1); to score a
    fresh batch-norm network with calibrated statistics, run a few batches through it in train
    mode under ``torch.no_grad()`` first.

    **How.** ``torch.func``: ``vmap`` over ``grad`` of the loss of a single sample, evaluated
    with ``functional_call``, ``chunk_size`` samples at a time; each sample's gradient is
    reduced to its norm inside the map. A ``loss_fn`` that reads tensor values in Python (a
    label-range check, ``.item()``; the losses of this library check their labels) cannot run
    under ``vmap``; then the scores are computed with one ``torch.autograd.grad`` call per
    sample instead, with a ``UserWarning``. Same result, slower.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> grand_scores(net, F.cross_entropy, x, y).shape
        torch.Size([4])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable; got {type(loss_fn).__name__}.")
    check_tensor(inputs, "inputs")
    check_tensor(target, "target")
    if inputs.ndim < 1 or target.ndim < 1 or inputs.shape[0] != target.shape[0]:
        raise ValueError(
            "`inputs` and `target` must be batch-first with the same number of samples; got "
            f"shapes {tuple(inputs.shape)} and {tuple(target.shape)}."
        )
    chunk_size = _check_chunk_size(chunk_size)
    names = _selected_parameters(model, params)
    _check_batch_norm(model)
    if inputs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float32, device=next(model.parameters()).device)
    with _eval_mode(model), torch.enable_grad():
        try:
            norms = _grand_vmap(model, loss_fn, names, inputs, target, chunk_size)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            warnings.warn(
                "grand_scores: `loss_fn` (or the model) cannot run under torch.func.vmap "
                f"({str(err).splitlines()[0][:120]}...); computing the per-sample gradients one "
                "sample at a time instead (same result, slower).",
                stacklevel=2,
            )
            norms = _grand_loop(model, loss_fn, names, inputs, target)
    return norms.detach().float()


# -- datasets ----------------------------------------------------------------------------------


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise ValueError(
            "`dataset` must yield `(x, y, *rest)` samples, so that batches are sequences whose "
            f"first two entries are the inputs and the targets; got a batch of type "
            f"{type(batch).__name__}."
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(
            "the first two entries of each batch must be tensors (inputs, targets); got "
            f"{type(x).__name__} and {type(y).__name__}."
        )
    return x, y


def score_dataset(
    model: nn.Module,
    dataset: Dataset[Any],
    score: str = "el2n",
    *,
    batch_size: int = 256,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
    chunk_size: int | None = 32,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> Tensor:
    r"""One run's scores for every sample of ``dataset``, in dataset order: float32 (len,).

    ``scores[i]`` belongs to ``dataset[i]``: the dataset is read in order (no shuffling, no
    sampler), ``batch_size`` samples at a time, so the result can be averaged with other runs
    by :func:`average_scores` and turned into ``Subset`` indices by :func:`prune_by_score`.

    Args:
        model: network returning (B, K) logits. It runs in eval mode (each submodule's
            ``training`` flag is restored afterwards) on ``device``.
        dataset: a map-style dataset of ``(x, y, *rest)`` samples; ``rest`` (group ids,
            indices, ...) is ignored. Give the scoring pass the training set **without random
            augmentation**.
        score: ``"el2n"`` (:func:`el2n_scores`, under ``torch.no_grad()``) or ``"grand"``
            (:func:`grand_scores`).
        batch_size: samples per forward pass, >= 1.
        loss_fn: the loss for ``"grand"``; default ``torch.nn.functional.cross_entropy`` (the
            paper's loss). Not used by ``"el2n"``.
        device: where to run; default the device of the model's first parameter. Batches are
            moved there.
        chunk_size: passed to :func:`grand_scores`.
        collate_fn: passed to the ``DataLoader`` (default collation otherwise).

    Returns:
        float32 (len(dataset),) on the CPU.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
        >>> score_dataset(nn.Linear(3, 2), data, batch_size=4).shape
        torch.Size([10])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    score = check_choice(score, ("el2n", "grand"), "score")
    batch_size = check_int(batch_size, "batch_size", 1)
    chunk_size = _check_chunk_size(chunk_size)
    if loss_fn is not None and score != "grand":
        raise ValueError(f"`loss_fn` is used by score='grand' only; got score={score!r}.")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    out: list[Tensor] = []
    with _eval_mode(model):
        for batch in loader:
            x, y = _split_batch(batch)
            x, y = x.to(device), y.to(device)
            if score == "el2n":
                with torch.no_grad():
                    out.append(el2n_scores(model(x), y).cpu())
            else:
                out.append(grand_scores(model, loss_fn, x, y, chunk_size=chunk_size).cpu())
    if not out:
        return torch.zeros(0, dtype=torch.float32)
    return torch.cat(out)


# -- averaging and pruning ---------------------------------------------------------------------


def _check_scores(scores: object, arg: str) -> Tensor:
    check_tensor(scores, arg)
    if scores.ndim != 1 or not scores.is_floating_point():
        raise ValueError(
            f"`{arg}` must be a 1-D floating-point tensor (N,), one score per sample; got "
            f"shape {tuple(scores.shape)} and dtype {scores.dtype}."
        )
    check_finite(scores, arg)
    return scores.detach()


def average_scores(scores: Sequence[Tensor]) -> Tensor:
    r"""Mean over runs, :math:`\bar s_i = \frac{1}{R} \sum_r s_i^{(r)}`: the expectation over
    initialisations in EL2N and GraNd.

    Args:
        scores: R >= 1 score vectors of the same shape (N,), one per run, all finite.

    Returns:
        (N,) in the runs' common dtype, on the first run's device; summed in float64.

    Example:
        >>> average_scores([torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])])
        tensor([0.5000, 1.5000])
    """
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise ValueError(
            "`scores` must be a non-empty sequence (list or tuple) of per-run score tensors; "
            f"got {type(scores).__name__}"
            + (" of length 0." if isinstance(scores, Sequence) and not scores else ".")
        )
    runs = [_check_scores(s, f"scores[{r}]") for r, s in enumerate(scores)]
    shapes = {tuple(s.shape) for s in runs}
    if len(shapes) != 1:
        raise ValueError(
            f"every run in `scores` must score the same samples (one shape); got shapes "
            f"{[tuple(s.shape) for s in runs]}."
        )
    device = runs[0].device
    dtype = runs[0].dtype
    for s in runs[1:]:
        dtype = torch.promote_types(dtype, s.dtype)
    total = torch.stack([s.to(device=device, dtype=torch.float64) for s in runs])
    return total.mean(dim=0).to(dtype)


def num_pruned(num_samples: int, fraction: float) -> int:
    """Samples :func:`prune_by_score` drops: ``floor(fraction · N)``, with ``fraction · N``
    rounded to 9 decimals first (so 0.29 × 100 prunes 29, not 28)."""
    n = check_int(num_samples, "num_samples", 0)
    f = check_number(fraction, "fraction")
    if not 0.0 <= f < 1.0:
        raise ValueError(
            f"`fraction` (the share of samples to prune) must lie in [0, 1); got {fraction!r}."
        )
    return math.floor(round(f * n, 9))


def prune_by_score(scores: Tensor, fraction: float, keep: str = "hardest") -> Tensor:
    r"""Indices of the samples kept after pruning a ``fraction`` of them by score: int64,
    ascending.

    ``keep="hardest"`` (the paper's rule) drops the :math:`\lfloor f N \rfloor` **lowest**
    scores, the easiest samples. ``keep="easiest"`` drops the highest ones instead: Sorscher et
    al. (*Beyond neural scaling laws*, NeurIPS 2022) find that keeping easy samples is better
    when little data remains (for EL2N, the highest scores also hold most of the label noise).

    Ties are broken by index, deterministically: among equal scores, the sample with the
    **lower** index is pruned first (a stable sort of the scores), for either ``keep``.

    Args:
        scores: (N,) finite per-sample scores (an :func:`average_scores` result).
        fraction: share of samples to prune, in [0, 1); 0 keeps everything.
        keep: ``"hardest"`` or ``"easiest"``.

    Returns:
        int64 (N - floor(fraction·N),), ascending, on ``scores``' device: pass it to
        ``torch.utils.data.Subset(dataset, kept.tolist())``.

    Example:
        >>> prune_by_score(torch.tensor([0.3, 0.1, 0.9, 0.1, 0.5]), 0.4)
        tensor([0, 2, 4])
    """
    scores = _check_scores(scores, "scores")
    keep = check_choice(keep, ("hardest", "easiest"), "keep")
    m = num_pruned(scores.shape[0], fraction)
    order = torch.sort(scores.double(), descending=keep == "easiest", stable=True).indices
    return torch.sort(order[m:]).values
