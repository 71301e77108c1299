"""No host synchronisation in the training steps of the pipeline callbacks.

Each test trains a tiny :class:`~lightning_losses.LossMixin` model with ``Trainer.fit`` on the
CPU and runs every training batch after the first inside
:func:`~lightning_losses.testing.no_host_sync`. The window opens in ``on_train_batch_start`` of a
callback placed first and closes in ``on_train_batch_end`` of one placed last, so it holds what
a training step does: every callback's per-batch hooks, ``training_step`` with ``compute_loss``
(task loss, loss terms, sample weights, observers, logging), backward,
``on_before_optimizer_step`` (SAM's second pass), the optimiser step and ``zero_grad``.

Outside the window, on purpose:

* the epoch-boundary hooks (``on_train_epoch_start`` / ``on_train_epoch_end``, where InfoBatch
  plans the epoch from its scores on the host and logs what it pruned) and setup;
* the first training batch of a fit (one-time work);
* Lightning's bookkeeping between two steps: ``_LoggerConnector.on_batch_end`` converts every
  metric logged with ``prog_bar=True`` and ``on_step=True`` to a Python number (``.item()``,
  ``ResultCollection.metrics``) at every step, and ``LossMixin`` logs ``train/loss`` that way; see
  ``test_lightning_reads_the_progress_bar_loss_after_every_step`` (``progress_bar_loss = False`` on
  the module avoids it). With ``logger=False`` nothing
  else is converted per step (a logger would convert its metrics every ``log_every_n_steps``).

Host reads that a method needs by its definition are let through by name with
:func:`~lightning_losses.testing.host_reads_allowed` (only Distillation's cache, which lives in
host memory and is keyed by sample index).
"""

from __future__ import annotations

import contextlib
import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks import PLD, DROWeighting, GroupDRO, InfoBatch
from lightning_losses.callbacks.distillation import Distillation
from lightning_losses.callbacks.sam import ASAM, AWP, SAM
from lightning_losses.testing import HostSyncError, host_reads_allowed, no_host_sync

N, D, K, B = 32, 4, 3, 8


# ----------------------------------------------------------------------------- harness


class SyncFreeWindow:
    """Runs training batches inside ``no_host_sync()``: add :attr:`open` first, :attr:`close` last.

    Batches before ``skip`` (counted over the whole fit) run outside; :attr:`checked` counts
    the batches that ran inside, so a test can tell that the window was used at all.
    """

    def __init__(self, skip: int = 1) -> None:
        self.skip, self.seen, self.checked = skip, 0, 0
        self._stack: contextlib.ExitStack | None = None
        window = self

        class Open(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                window.seen += 1
                if window.seen > window.skip:
                    window._stack = contextlib.ExitStack()
                    window._stack.enter_context(no_host_sync())

            def on_exception(self, trainer, pl_module, exception):
                window.shut()

        class Close(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if window._stack is not None:
                    window.shut()
                    window.checked += 1

        self.open, self.close = Open(), Close()

    def shut(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def callbacks(self, *callbacks: L.Callback) -> list[L.Callback]:
        return [self.open, *callbacks, self.close]


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


class Rows(Dataset):
    """Rows ``{"x", "y", "index", "group", "pool"}``; pools are pairs of neighbouring rows."""

    def __init__(self, n: int = N, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, D, generator=g)
        self.y = torch.randint(0, K, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[i],
            "y": self.y[i],
            "index": torch.tensor(i),
            "group": torch.tensor(i % 3),
            "pool": torch.tensor(i // 2),
        }


def _loader(shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(3)
    return DataLoader(Rows(), batch_size=B, shuffle=shuffle, generator=g)


class Model(LossMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, K))
        self.criterion = build_loss("cross_entropy")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self.compute_loss(self(batch["x"]), batch["y"], batch=batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _fit_sync_free(*callbacks: L.Callback, shuffle: bool = True, **trainer_kwargs) -> int:
    """Train ``Model`` with ``callbacks``; return how many batches ran inside the window."""
    window = SyncFreeWindow()
    trainer = _trainer(callbacks=window.callbacks(*callbacks), **trainer_kwargs)
    try:
        trainer.fit(Model(), _loader(shuffle))
    finally:
        window.shut()
    assert window.checked == window.seen - window.skip > 0  # every batch after the first
    return window.checked


# ----------------------------------------------------------------------------- 1. each callback


def test_infobatch_step_makes_no_host_read():
    cb = InfoBatch(prune_ratio=0.5, seed=0)
    _fit_sync_free(cb, max_epochs=4)
    assert any(h["pruned"] > 0 for h in cb.history)  # the pruned epochs ran inside the window


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"adjustment": 1.0, "group_sizes": [11, 11, 10]}],
    ids=["plain", "adjusted"],
)
def test_group_dro_step_makes_no_host_read(kwargs):
    cb = GroupDRO(num_groups=3, step_size=0.5, **kwargs)
    _fit_sync_free(cb)
    assert not torch.allclose(cb.q.cpu(), torch.full((3,), 1 / 3, dtype=cb.q.dtype))


DRO_ORACLES = [
    ("cvar", {"alpha": 0.3}),
    ("cvar_kl", {"alpha": 0.3, "reg": 0.5}),
    ("chi_square", {"rho": 1.0}),
    ("chi_square_penalized", {"reg": 0.5}),
    ("kl", {"temperature": 1.0}),
    ("superquantile", {"alpha": 0.3}),
    ("superquantile", {"alpha": 0.3, "shift_cost": 0.5}),
    ("superquantile", {"alpha": 0.3, "shift_cost": 0.5, "penalty": "kl"}),
    ("extremile", {"r": 2.0}),
    ("esrm", {"rho": 2.0, "shift_cost": 1.0}),
]


@pytest.mark.parametrize(
    ("oracle", "kwargs"),
    DRO_ORACLES,
    ids=[f"{o}-{'-'.join(map(str, kw.values()))}" for o, kw in DRO_ORACLES],
)
def test_dro_weighting_step_makes_no_host_read(oracle, kwargs):
    _fit_sync_free(DROWeighting(oracle, **kwargs), max_epochs=2)


def test_pld_step_makes_no_host_read():
    # warm-up in epoch 0 (uniform draws), the softmax draw after it; pools are row pairs, so
    # an unshuffled loader with an even batch size keeps them whole.
    _fit_sync_free(PLD(temperature=0.5, warmup_epochs=1), shuffle=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"loss": "dkd", "loss_kwargs": {"temperature": 2.0}},
        {"student_layers": "net.1", "teacher_layers": "1", "loss": "fitnet"},
    ],
    ids=["kd", "dkd", "features"],
)
def test_distillation_step_makes_no_host_read(kwargs):
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    _fit_sync_free(Distillation(teacher, input_key="x", **kwargs))


def test_distillation_cache_reads_only_the_sample_indices(monkeypatch):
    """The cache lives in host memory and is keyed by sample index: the callback reads the
    batch's indices to look it up and, when it misses (the first epoch), copies the teacher's
    outputs to the host. Those two methods are allowed; everything else must stay free."""
    for name in ("_host_indices", "_store_in_cache"):
        original = getattr(Distillation, name)

        @functools.wraps(original)
        def allowed(self, *args, _original=original, _name=name, **kwargs):
            with host_reads_allowed(f"Distillation.{_name}: a host-memory cache by definition"):
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(Distillation, name, allowed)
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    cb = Distillation(teacher, input_key="x", cache=True)
    _fit_sync_free(cb)
    assert cb.teacher_forwards == N // B  # the later epochs read the cache


@pytest.mark.parametrize(
    "make",
    [lambda: SAM(rho=0.1), lambda: ASAM(rho=0.5), lambda: AWP(gamma=0.01)],
    ids=["sam", "asam", "awp"],
)
def test_weight_perturbation_step_makes_no_host_read(make):
    _fit_sync_free(make(), GroupDRO(num_groups=3, step_size=0.5))


def test_sam_with_accumulation_clipping_and_bf16_makes_no_host_read():
    _fit_sync_free(
        SAM(rho=0.1),
        PLD(temperature=0.5, warmup_epochs=1),
        shuffle=False,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        precision="bf16-mixed",
    )


def test_composed_pipeline_step_makes_no_host_read():
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))
    _fit_sync_free(
        InfoBatch(prune_ratio=0.5),
        GroupDRO(num_groups=3),
        DROWeighting("cvar", alpha=0.5),
        Distillation(teacher, input_key="x"),
        SAM(rho=0.05),
        max_epochs=4,
    )


# ----------------------------------------------------------------------------- 2. the detector


class PlantedInHook(GroupDRO):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        float(self.q.sum())  # a host read in a per-step hook


class PlantedInWeights(GroupDRO):
    def sample_weights(self, pl_module, batch, losses):
        weights = super().sample_weights(pl_module, batch, losses)
        if losses.max() > 100:  # a Python branch on a tensor value: bool(tensor)
            raise AssertionError("unreachable")
        return weights


@pytest.mark.parametrize("planted", [PlantedInHook, PlantedInWeights], ids=["hook", "weights"])
def test_a_planted_host_read_fails_the_step(planted):
    with pytest.raises(HostSyncError, match="host read") as info:
        _fit_sync_free(planted(num_groups=3))
    assert "test_host_sync_callbacks.py" in str(info.value)  # the stack points at the read


def test_a_planted_read_in_the_first_batch_only_goes_unchecked():
    class FirstBatchOnly(GroupDRO):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                float(self.q.sum())

    assert _fit_sync_free(FirstBatchOnly(num_groups=3), max_epochs=1) == N // B - 1


def _fit_with_window_over_lightning(model: L.LightningModule) -> None:
    """Train with the window open from one step's start to the next, Lightning's work included."""
    window = SyncFreeWindow()

    class CloseAfterLightning(L.Callback):
        """Keeps the window open over Lightning's work between two steps."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if window._stack is not None:  # a step and Lightning's work after it ran inside
                window.shut()
                window.checked += 1

        def on_train_epoch_end(self, trainer, pl_module):
            window.shut()

    trainer = _trainer(callbacks=[CloseAfterLightning(), window.open], max_epochs=1)
    try:
        trainer.fit(model, _loader())
    finally:
        window.shut()
    assert window.checked == N // B - 2  # batches 2 and 3, each up to the next batch's start


def test_lightning_reads_the_progress_bar_loss_after_every_step():
    """LossMixin shows train/loss in the progress bar (``prog_bar=True, on_step=True``), and
    Lightning's ``_LoggerConnector.on_batch_end`` turns such metrics into Python numbers
    (``.item()``) after every training step, whether or not a progress bar is shown."""
    with pytest.raises(HostSyncError) as err:
        _fit_with_window_over_lightning(Model())
    assert "logger_connector" in str(err.value) and "on_batch_end" in str(err.value)


def test_without_the_progress_bar_loss_the_whole_step_is_sync_free():
    class Quiet(Model):
        progress_bar_loss = False

    _fit_with_window_over_lightning(Quiet())


@pytest.mark.parametrize(
    ("read", "what"),
    [
        (lambda x: x.sum().item(), "_local_scalar_dense"),
        (lambda x: bool(x.sum() > 0), "_local_scalar_dense"),
        (lambda x: x[x > 0], "boolean mask"),
        (lambda x: x.tolist(), "tolist"),
        (lambda x: x.cpu(), "cpu"),
        (lambda x: x.to("cpu"), "to('cpu')"),
        (lambda x: x.to(device="cpu", dtype=torch.float64), "to('cpu')"),
        (lambda x: torch.bincount(x.long().abs(), minlength=5), "bincount"),
        (lambda x: torch.allclose(x, x), "allclose"),
        (lambda x: torch.unique(x), "unique"),
    ],
    ids=[
        "item",
        "bool",
        "mask",
        "tolist",
        "cpu",
        "to-cpu",
        "to-cpu-kwargs",
        "bincount",
        "allclose",
        "unique",
    ],
)
def test_the_detector_names_each_kind_of_read(read, what):
    x = torch.randn(6)
    with pytest.raises(HostSyncError, match="host read") as info, no_host_sync():
        read(x)
    assert what in str(info.value)
    x.tolist(), x.cpu(), x.to("cpu")  # the methods are back after the block


def test_the_detector_lets_device_work_and_named_reads_through():
    x = torch.randn(6)
    with no_host_sync():
        x.to(x.device, torch.float64)  # a cast where the tensor lives: no host copy
        torch.zeros(5).index_add_(0, torch.tensor([0, 3, 3]), torch.ones(3))
        torch._assert_async(torch.tensor(True), "checked on the device")
        with host_reads_allowed("a cache in host memory, keyed by sample index"):
            assert x.tolist() and float(x[0]) == x[0] and x[x > 0].numel() >= 0
        with pytest.raises(HostSyncError):
            x.tolist()  # allowed only inside the inner block
    with pytest.raises(ValueError, match="reason"), host_reads_allowed(""):
        pass
