r"""The person re-ID task: a timm backbone with the re-ID bag of tricks, any registered losses.

``ReIDModule`` is a plain ``LightningModule`` with :class:`~lightning_losses.LossMixin`;
``cli_main`` runs it through ``LightningCLI`` (the recipe ``recipes/reid.py``) with
:class:`~lightning_losses.data.ReIDDataModule` by default: the embedded synthetic identities,
or a Market-1501 tree with ``--data.data_dir``.

**The bag of tricks** (Luo et al., *Bag of Tricks and A Strong Baseline for Deep Person
Re-identification*, CVPRW 2019; fast-reid's ``Base-bagtricks``), each an option here:

* **last stride 1**: the stride-2 convolutions (and average-pool shortcuts) of the backbone's
  last stage run at stride 1, which doubles the final feature map's height and width;
  backbones whose last stage does not downsample are left as they are;
* **BNNeck**: the pooled feature :math:`f` (``"features"``) goes through a ``BatchNorm1d``
  with a frozen zero bias to give :math:`f_{bn}` (``"bnneck"``); the identity classifier is a
  bias-free linear layer on :math:`f_{bn}`; retrieval uses :math:`f_{bn}` with the cosine
  distance;
* **losses**: cross-entropy with label smoothing 0.1 on the classifier's logits plus the
  batch-hard triplet loss (margin 0.3) on :math:`f`, summed per sample
  (:class:`~lightning_losses.losses.compound.CompoundLoss`) and run through the loss
  pipeline;
* **warm-up**: the learning rate rises linearly from ``warmup_factor * lr`` over
  ``warmup_epochs``, then follows a cosine to zero (the paper steps it down at fixed epochs;
  a cosine needs no epoch numbers for runs of any length).

**Which output each loss reads.** A loss on logits (``cross_entropy``, ``focal``, ...) reads
the classifier's logits; a margin-softmax head that owns its class weights (``arcface``,
``cosface``) reads :math:`f_{bn}`, as fast-reid's heads do; every other embedding loss
(``triplet``, ``circle``, ``supcon``, ``center``, ...) reads :math:`f`. ``loss_inputs``
overrides this per loss. ``num_classes`` and ``embedding_dim`` of losses that take them
(ArcFace, CosFace, center) are filled in from the model; their parameters (class weights,
centres) form an optimiser parameter group of their own (``loss_lr``,
``loss_weight_decay``).

**Report.** At the end of ``test`` it ranks the gallery for every query under the Market-1501
protocol (:func:`~lightning_losses.metrics.reid_metrics`) and reports R1, R5, R10, mAP and mINP
without and with k-reciprocal re-ranking, printed as one table and written to
``test_metrics.json`` in the run's log directory, with ``test_retrieval.png``: the ranked
gallery of a few queries, correct matches framed green and wrong ones red.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_range
from .._reduce import PerSample
from ..losses._base import Loss
from ..losses.compound import CompoundLoss
from ..losses.metric import MarginSoftmaxLoss, PairLoss
from ..metrics.retrieval import ReIDMetrics, pairwise_distance, reid_metrics
from ..mixins import LossMixin
from ..registry import build_loss, loss_info
from .backbones import check_timm_backbone
from .recipe_cli import RecipeCLI, RecipeConfigError, run_recipe_cli
from .report import print_report

#: The model outputs a loss can read (``loss_inputs``).
OUTPUTS = ("logits", "features", "bnneck")
#: Metrics of the report, in table order: (key, label).
REPORT_ROWS = (
    ("rank1", "R1"),
    ("rank5", "R5"),
    ("rank10", "R10"),
    ("map", "mAP"),
    ("minp", "mINP"),
)


@dataclass
class ReIDOutputs:
    """What :class:`ReIDModule` computes for a batch of images."""

    features: Tensor  # (N, D) pooled backbone features, before the BNNeck
    bnneck: Tensor  # (N, D) after the BNNeck's batch norm
    logits: Tensor | None  # (N, num_classes) identity logits, when a loss reads them

    def packed(self) -> Tensor:
        """``[features | bnneck | logits]`` as one ``(N, 2D [+ num_classes])`` tensor: the
        input of the loss sum, whose terms read their columns (:class:`LossOnOutput`)."""
        parts = [self.features, self.bnneck]
        return torch.cat(parts if self.logits is None else [*parts, self.logits], dim=1)


class LossOnOutput(Loss):
    """A registered loss applied to one output of the model (``"logits"``, ``"features"`` or
    ``"bnneck"``), read as its columns of :meth:`ReIDOutputs.packed`.

    :class:`~lightning_losses.losses.compound.CompoundLoss` sums its terms per sample on one
    input tensor; packing the outputs side by side lets terms that read different outputs be
    summed there (the column slices are views: no copy, gradients reach each output).
    """

    def __init__(self, loss: Loss, output: str, embedding_dim: int) -> None:
        super().__init__(reduction=loss.reduction)
        self.loss = loss
        self.output = check_choice(output, OUTPUTS, "output")
        block = {"features": 0, "bnneck": 1, "logits": 2}[output]  # the order of packed()
        stop = None if output == "logits" else (block + 1) * embedding_dim
        self.columns = (block * embedding_dim, stop)
        self.context = loss.context  # the term's context, for CompoundLoss
        self.target_kind = loss.target_kind

    def _check_context(self, context: dict[str, Any]) -> None:
        self.loss._check_context(context)

    def per_sample(self, input: Tensor, target: Tensor, **context: Any) -> PerSample:
        start, stop = self.columns
        return self.loss.sample_losses(input[:, start:stop], target, **context)

    def explain_error(self, input: Any, target: Tensor) -> None:
        """The wrapped loss explains its own errors (in ``sample_losses``)."""

    def extra_repr(self) -> str:
        return f"output={self.output!r}"


def default_output(loss: Loss) -> str:
    """The output a loss reads unless ``loss_inputs`` says otherwise (module docstring)."""
    if loss.input_kind == "logits":
        return "logits"
    return "bnneck" if isinstance(loss, MarginSoftmaxLoss) else "features"


def set_last_stride_one(net: nn.Module) -> bool:
    """Run the backbone's last stage at stride 1 (the bag of tricks' "last stride").

    The last stage is timm's ``feature_info[-1]["module"]``. Its stride-2 convolutions get
    stride 1, and its stride-2 average pools (the ``avg_down`` shortcuts of ResNet-D variants)
    become identities, so the residual branches keep matching shapes. Returns False, changing
    nothing, when the backbone has no such stage or the stage does not downsample.
    """
    info = getattr(net, "feature_info", None)
    try:
        stage = net.get_submodule(info[-1]["module"])  # type: ignore[index]
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
    changed = False
    for name, module in list(stage.named_modules()):
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
            changed = True
        elif isinstance(module, nn.AvgPool2d) and module.stride in (2, (2, 2)):
            parent_name, _, child = name.rpartition(".")
            setattr(
                stage.get_submodule(parent_name) if parent_name else stage, child, nn.Identity()
            )
            changed = True
    return changed


class BNNeck(nn.Module):
    """Batch norm between the pooled feature and the classifier, its shift frozen at zero
    (Luo et al. 2019): the triplet loss shapes the features before it, the identity loss the
    normalised features after it."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


def _takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def build_reid_criterion(
    loss: str | Sequence[str],
    weights: Sequence[float] | None,
    kwargs: Mapping[str, Mapping[str, Any]] | None,
    inputs: Mapping[str, str] | None,
    *,
    num_classes: int,
    embedding_dim: int,
) -> CompoundLoss:
    """The weighted per-sample sum of the named losses, each on its output of the model."""
    names = [loss] if isinstance(loss, str) else list(loss)
    if not names:
        raise ValueError("`loss` must name at least one registered loss; got an empty list.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`loss` names each loss once (give it a weight); got {duplicates} twice.")
    classes = {name: loss_info(name).cls for name in names}  # unknown names first
    for arg, given in (("loss_kwargs", kwargs), ("loss_inputs", inputs)):
        stray = [k for k in (given or {}) if k not in names]
        if stray:
            raise ValueError(
                f"`{arg}` is keyed by the names in `loss` {names}; got unknown key(s) {stray}."
            )
    inputs = dict(inputs or {})
    for name, output in inputs.items():
        if output not in OUTPUTS:
            raise ValueError(
                f"`loss_inputs` maps {name!r} to {output!r}; each loss reads one of {OUTPUTS}."
            )
    terms: dict[str, Loss] = {}
    for name in names:
        options = dict((kwargs or {}).get(name, {}))
        cls = classes[name]
        if _takes(cls, "num_classes"):
            options.setdefault("num_classes", num_classes)
        if _takes(cls, "embedding_dim"):
            options.setdefault("embedding_dim", embedding_dim)
        term = build_loss(name, **options)
        output = inputs.get(name, default_output(term))
        if (output == "logits") != (term.input_kind == "logits"):
            raise ValueError(
                f"`loss_inputs` gives {name!r} the {output!r} output, but it takes "
                f"{term.input_kind!r}: logits losses read 'logits', embedding losses "
                "'features' or 'bnneck'."
            )
        terms[name] = LossOnOutput(term, output, embedding_dim)
    return CompoundLoss(terms, [1.0] * len(names) if weights is None else list(weights))


class ReIDModule(LossMixin, L.LightningModule):
    """Person re-ID: ``timm.create_model(backbone)`` with the bag of tricks, trained with
    registered losses (module docstring).

    Batches are mappings ``{"image": (N, 3, H, W), "id": (N,), "camera": (N,), ...}``, as
    :class:`~lightning_losses.data.ReIDDataModule` gives them (training ids are class indices
    ``0 .. num_classes - 1``); evaluation batches also carry ``"is_query"`` and ``"index"``.

    Args:
        backbone: any ``timm.list_models()`` name; ``backbone_kwargs`` further arguments of
            its constructor (``{"channels": [32, 64, 128, 256]}`` narrows a timm ResNet).
        num_classes: training identities; filled from the datamodule by the recipe's CLI.
        in_chans: image channels (3).
        pretrained: load timm weights (needs them in the local cache; False by default: no
            weights can be downloaded at run time). ``checkpoint_path`` loads a local file.
        last_stride: 1 (the bag of tricks, where the backbone allows it) or 2 (unchanged).
        loss: registered loss names (``lightning-losses list``), summed per sample; each term
            is logged as ``train/loss/{name}``. Default cross-entropy + triplet.
        loss_weights: one weight per term (default all 1).
        loss_kwargs: options per term, keyed by name. The recipe's config sets
            ``cross_entropy: {label_smoothing: 0.1}`` and ``triplet: {margin: 0.3}``.
        loss_inputs: the output each term reads (``"logits"``, ``"features"``, ``"bnneck"``),
            keyed by name; defaults in the module docstring.
        lr, weight_decay: Adam, 3.5e-4 and 5e-4 (the bag of tricks).
        warmup_epochs, warmup_factor: linear warm-up from ``warmup_factor * lr`` (0.1, the bag
            of tricks' 3.5e-5 to 3.5e-4) over this many epochs, then a cosine to zero.
        loss_lr, loss_weight_decay: the parameter group of the losses' own parameters
            (ArcFace/CosFace class weights, centres): learning rate (None: ``lr``) and weight
            decay (0: a decay would pull the centres toward the origin).
        eval_features: ``"bnneck"`` (default, the bag of tricks) or ``"features"``.
        metric: ``"cosine"`` or ``"euclidean"`` distance for retrieval.
        rerank: also report k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3); it holds dense
            ``(Q + G)^2`` matrices, so turn it off for large galleries.
        panel_queries, panel_ranks: queries (rows) and ranked gallery entries per row of
            ``test_retrieval.png``.
    """

    #: The per-step loss is not read back for the progress bar (a host read per step).
    progress_bar_loss = False

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int = 2,
        in_chans: int = 3,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        last_stride: int = 1,
        loss: list[str] | str = ("cross_entropy", "triplet"),  # type: ignore[assignment]
        loss_weights: list[float] | None = None,
        loss_kwargs: dict[str, dict[str, Any]] | None = None,
        loss_inputs: dict[str, str] | None = None,
        lr: float = 3.5e-4,
        weight_decay: float = 5e-4,
        warmup_epochs: float = 2.0,
        warmup_factor: float = 0.1,
        loss_lr: float | None = None,
        loss_weight_decay: float = 0.0,
        eval_features: str = "bnneck",
        metric: str = "cosine",
        rerank: bool = True,
        panel_queries: int = 4,
        panel_ranks: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        check_int(num_classes, "num_classes", 1)
        if last_stride not in (1, 2):
            raise ValueError(f"`last_stride` must be 1 or 2; got {last_stride!r}.")
        check_range(warmup_epochs, "warmup_epochs", 0.0, math.inf)
        check_range(warmup_factor, "warmup_factor", 0.0, 1.0)
        check_choice(eval_features, ("bnneck", "features"), "eval_features")
        check_choice(metric, ("cosine", "euclidean"), "metric")
        check_int(panel_queries, "panel_queries", 0)
        check_int(panel_ranks, "panel_ranks", 1)
        self.net = timm.create_model(
            check_timm_backbone(backbone),
            pretrained=pretrained or checkpoint_path is not None,
            pretrained_cfg_overlay={"file": checkpoint_path} if checkpoint_path else None,
            num_classes=0,
            in_chans=in_chans,
            **(backbone_kwargs or {}),
        )
        self.last_stride_one = last_stride == 1 and set_last_stride_one(self.net)
        dim = int(self.net.num_features)
        self.neck = BNNeck(dim)
        self.criterion = build_reid_criterion(
            loss,
            loss_weights,
            loss_kwargs,
            loss_inputs,
            num_classes=num_classes,
            embedding_dim=dim,
        )
        reads_logits = any(t.output == "logits" for t in self.criterion.terms.values())
        self.classifier = nn.Linear(dim, num_classes, bias=False) if reads_logits else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)  # as the bag of tricks
        self.val_metrics = ReIDMetrics(metric=metric)
        self.reports: dict[str, dict[str, float]] = {}
        self._test_parts: list[dict[str, Tensor]] = []

    # -- model ------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> ReIDOutputs:
        features = self.net(x)
        bnneck = self.neck(features)
        logits = self.classifier(bnneck) if self.classifier is not None else None
        return ReIDOutputs(features, bnneck, logits)

    def embed(self, x: Tensor) -> Tensor:
        """The retrieval features of images (``eval_features``)."""
        out = self(x)
        return out.bnneck if self.hparams.eval_features == "bnneck" else out.features

    @property
    def pair_terms(self) -> dict[str, PairLoss]:
        """The terms that need several instances per identity in a batch."""
        return {n: t.loss for n, t in self.criterion.terms.items() if isinstance(t.loss, PairLoss)}

    # -- training ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_instances_per_identity(self, getattr(self.trainer, "datamodule", None))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        outputs = self(batch["image"])
        loss = self.compute_loss(outputs.packed(), batch["id"], batch=batch)
        n = batch["id"].shape[0]
        for name, value in self.criterion.last_terms.items():
            self.log(f"train/loss/{name}", value, on_step=False, on_epoch=True, batch_size=n)
        for name, term in self.pair_terms.items():
            # logged, never read back in the step: anchors without a positive or negative
            self.log(
                f"train/invalid_anchors/{name}",
                term.last_invalid_anchors.float(),
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                batch_size=n,
            )
        return loss

    def on_train_epoch_end(self) -> None:
        for term in self.pair_terms.values():
            term.warn_invalid_anchors()  # one host read per epoch; warns once

    def configure_optimizers(self) -> Any:
        own = [p for p in self.criterion.parameters() if p.requires_grad]
        own_ids = {id(p) for p in own}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in own_ids]
        groups: list[dict[str, Any]] = [{"params": rest, "name": "model"}]
        if own:
            groups.append(
                {
                    "params": own,
                    "name": "loss",
                    "lr": self.hparams.lr if self.hparams.loss_lr is None else self.hparams.loss_lr,
                    "weight_decay": self.hparams.loss_weight_decay,
                }
            )
        opt = torch.optim.Adam(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if (self.trainer.max_epochs or -1) > 0 else 1
        warmup = min(total, round(self.hparams.warmup_epochs * total / epochs))
        schedule = warmup_cosine(total, warmup, self.hparams.warmup_factor)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation -------------------------------------------------------------------------

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(
            self.embed(batch["image"]),
            batch["id"],
            batch["camera"],
            batch["is_query"],
            indices=batch.get("index"),
        )

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        report = {key: float(values[key]) for key, _ in REPORT_ROWS}
        for key, value in report.items():
            self.log(f"val/{key}", value, prog_bar=key in ("rank1", "map"))
        self.reports["val"] = report

    def on_test_start(self) -> None:
        self._test_parts = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        n = batch["id"].shape[0]
        index = batch.get("index")
        self._test_parts.append(
            {
                "features": self.embed(batch["image"]).float(),
                "id": batch["id"].long(),
                "camera": batch["camera"].long(),
                # an integer flag: bool tensors do not all-gather on every backend
                "is_query": torch.as_tensor(batch["is_query"], device=self.device).long().expand(n),
                "index": torch.full((n,), -1, device=self.device) if index is None else index,
            }
        )

    def _gathered_test_set(self) -> dict[str, Tensor]:
        """Every rank's test features, each sample once, in dataset order when indexed."""
        local = {k: torch.cat([p[k] for p in self._test_parts]) for k in self._test_parts[0]}
        self._test_parts = []
        if self.trainer.world_size > 1:  # equal shares: the evaluation sampler pads
            local = {k: self.all_gather(v).flatten(0, 1) for k, v in local.items()}
        index = local.pop("index")
        if bool((index < 0).any()):  # no dataset index: no padding to remove
            return local
        n = int(index.max()) + 1
        unique = {}
        for key, value in local.items():
            slot = torch.zeros((n, *value.shape[1:]), dtype=value.dtype, device=value.device)
            slot[index] = value  # a padded repeat writes the same value again
            unique[key] = slot
        return unique

    def on_test_epoch_end(self) -> None:
        data = self._gathered_test_set()
        q, g = data["is_query"].bool(), ~data["is_query"].bool()
        args = (
            data["features"][q],
            data["id"][q],
            data["camera"][q],
            data["features"][g],
            data["id"][g],
            data["camera"][g],
        )
        # k1 below the number of items: a tiny test set gets the largest neighbourhood it has
        k1 = min(20, max(1, len(q) - 1))
        variants = {"plain": {}, "reranked": {"rerank": True, "k1": k1, "k2": min(6, k1)}}
        if not self.hparams.rerank:
            variants.pop("reranked")
        results = {}
        for variant, options in variants.items():
            values = reid_metrics(*args, metric=self.hparams.metric, **options)
            results[variant] = {key: float(values[key]) for key, _ in REPORT_ROWS}
            results[variant]["num_queries"] = int(values["num_queries"])
            for key, _ in REPORT_ROWS:
                name = f"test/{key}" + ("" if variant == "plain" else "_reranked")
                self.log(name, results[variant][key])
        self.reports["test"] = results["plain"]
        if self.trainer.is_global_zero:
            self._publish(results, data, q)

    def _publish(self, results: dict[str, dict[str, float]], data: dict[str, Tensor], q: Tensor):
        out = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        title = (
            f"test report ({self.hparams.backbone}, loss="
            + "+".join(self.criterion.terms)
            + f", {self.hparams.metric} on {self.hparams.eval_features})"
        )
        print_report("", format_reid_table(title, results))
        payload = {
            "stage": "test",
            "metrics": results,
            "last_stride_one": self.last_stride_one,
            "hparams": dict(self.hparams),
            "epoch": self.current_epoch,
        }
        json_path = out / "test_metrics.json"
        json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        written = [json_path]
        dataset = _test_dataset(self.trainer)
        if self.hparams.panel_queries and dataset is not None and bool(q.any()):
            written.append(
                plot_retrieval(
                    dataset,
                    data,
                    out / "test_retrieval.png",
                    queries=self.hparams.panel_queries,
                    ranks=self.hparams.panel_ranks,
                    metric=self.hparams.metric,
                )
            )
        print_report(f"test report written to {', '.join(str(p) for p in written)}")


def warmup_cosine(total: int, warmup: int, factor: float):
    """The learning-rate multiplier of step ``s``: linear from ``factor`` to 1 over ``warmup``
    steps, then a half cosine from 1 to 0 over the remaining ones."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return factor + (1 - factor) * step / warmup
        rest = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / rest)))

    return multiplier


def check_instances_per_identity(module: ReIDModule, datamodule: Any) -> None:
    """A pair loss needs a positive for every anchor: at least 2 instances per identity."""
    k = getattr(datamodule, "k", None)
    pairs = list(module.pair_terms)
    if pairs and isinstance(k, int) and k < 2:
        raise ValueError(
            f"the loss term(s) {pairs} compare each anchor with another instance of its "
            f"identity: the P x K sampler needs `k` >= 2 instances per identity; got k={k}."
        )


def _test_dataset(trainer: L.Trainer) -> Any:
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, Sequence) else loaders
    return getattr(loader, "dataset", None)


def format_reid_table(title: str, results: Mapping[str, Mapping[str, float]]) -> str:
    """Metrics as rows, ``plain`` / ``reranked`` as columns."""
    names = list(results)
    labels = {"plain": "plain", "reranked": "re-ranked"}
    header = f"{'':<6}" + "".join(f"  {labels.get(n, n):>10}" for n in names)
    rule = "-" * max(len(header), len(title))
    lines = [rule, title, rule, header]
    for key, label in REPORT_ROWS:
        lines.append(f"{label:<6}" + "".join(f"  {results[n][key]:>10.4f}" for n in names))
    queries = results[names[0]].get("num_queries")
    if queries is not None:
        lines.append(f"({queries} queries)")
    return "\n".join([*lines, rule])


def _display(image: Tensor) -> Any:
    """An image tensor (C, H, W), normalised any way, as an (H, W, 3) array in [0, 1]."""
    x = image.detach().float().cpu()
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x.permute(1, 2, 0).numpy()


def plot_retrieval(
    dataset: Any,
    data: Mapping[str, Tensor],
    path: str | Path,
    *,
    queries: int = 4,
    ranks: int = 8,
    metric: str = "cosine",
    junk_id: int = -1,
) -> Path:
    """One row per query: the query, then its ``ranks`` nearest gallery images, each framed
    green (same identity: a correct match) or red (wrong).

    The ranking leaves out what the Market-1501 protocol leaves out: the query identity's
    images from the query's own camera and the junk id. Queries are spread evenly over the
    query split. ``dataset[i]["image"]`` is the image of sample ``i`` of ``data`` (the
    evaluation dataset, queries and gallery in one index).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_query = data["is_query"].bool().cpu()
    ids, cams = data["id"].cpu(), data["camera"].cpu()
    feats = data["features"].float().cpu()
    q_rows = torch.arange(len(ids))[is_query]
    g_rows = torch.arange(len(ids))[~is_query]
    picks = q_rows[torch.linspace(0, len(q_rows) - 1, min(queries, len(q_rows))).round().long()]
    dist = pairwise_distance(feats[picks], feats[g_rows], metric)
    fig, axes = plt.subplots(
        len(picks), ranks + 1, figsize=(1.1 * (ranks + 1), 2.0 * len(picks) + 0.5), squeeze=False
    )
    for row, (qi, d) in enumerate(zip(picks.tolist(), dist, strict=True)):
        g_ids, g_cams = ids[g_rows], cams[g_rows]
        junk = ((g_ids == ids[qi]) & (g_cams == cams[qi])) | (g_ids == junk_id)
        order = torch.argsort(torch.where(junk, math.inf, d.double()), stable=True)
        shown = order[: min(ranks, int((~junk).sum()))]
        axes[row, 0].imshow(_display(dataset[qi]["image"]))
        axes[row, 0].set_title(f"query {int(ids[qi])}", fontsize=7)
        for col in range(ranks):
            ax = axes[row, col + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(shown):
                ax.axis("off")
                continue
            gi = int(g_rows[shown[col]])
            ax.imshow(_display(dataset[gi]["image"]))
            right = int(ids[gi]) == int(ids[qi])
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9c2f" if right else "#d62728")
                spine.set_linewidth(3)
            ax.set_title(f"{col + 1}: id {int(ids[gi])}", fontsize=7)
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
    fig.suptitle("ranked gallery per query: green = same identity, red = another", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class ReIDCLI(RecipeCLI):
    """LightningCLI that fills the number of identities from the data and tests after ``fit``.

    A config whose ``data`` section has no ``class_path`` gets
    :class:`~lightning_losses.data.ReIDDataModule`; any other datamodule needs a
    ``num_classes`` attribute and mapping batches as the module describes.
    """

    default_data = "lightning_losses.data.ReIDDataModule"

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        try:
            check_instances_per_identity(self.model, self.datamodule)
        except ValueError as err:
            raise RecipeConfigError(str(err)) from None


def cli_main(args: list[str] | None = None, **kwargs: Any) -> ReIDCLI:
    return run_recipe_cli(
        ReIDCLI,
        ReIDModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        **kwargs,
    )
