"""Mid-epoch resume: a run killed by an exception in the middle of an epoch, resumed from its
last step checkpoint, continues like the run that was never interrupted.

Every run saves a checkpoint every ``EVERY`` optimiser steps (``ModelCheckpoint(
every_n_train_steps=EVERY, save_last=True)``). The killed run raises from a callback at step
``KILL`` (epoch 1, batch index 5); its last checkpoint is the one of step ``CKPT`` (epoch 1,
after its first two batches), from which ``fit(..., ckpt_path="last")`` resumes.

Lightning restores the weights, the optimiser, the loop counters (epoch, global step, batch
index) and every callback's ``state_dict``, but not the position of a plain ``DataLoader`` in
its epoch: a resumed epoch starts the loader again from its first batch, and ends after the
number of batches the epoch had left. So the exact comparison gives the loader its position back
the way a user can (a sampler that starts where ``trainer.global_step`` says the epoch stopped),
and a second test shows, with the plain loader, what Lightning alone does and does not restore.
The epoch means that Lightning logs (``self.log(..., on_epoch=True)``) are not checkpointed
either: the resumed epoch's means cover the steps after the resume only (last test).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_losses import LossMixin, build_loss
from lightning_losses.callbacks import ASAM, AWP, PLD, SAM, Distillation, DROWeighting, GroupDRO

# Lightning warns on every mid-epoch resume of a loader without state_dict (ours restores its
# position through the global step, which Lightning does not know); each resumed run works in a
# copy of the killed run's folder and writes its checkpoints there.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed from"),
]

N, D, K, B = 32, 4, 3, 4  # 8 batches per epoch
PER_EPOCH = N // B
EPOCHS, EVERY, KILL = 3, 5, 13
CKPT = KILL - KILL % EVERY  # the last checkpoint before the kill: step 10, inside epoch 1
assert CKPT % PER_EPOCH and KILL // PER_EPOCH == CKPT // PER_EPOCH  # both inside one epoch


class Rows(Dataset):
    """Fixed rows with a label, a group (``i % 2``), a pool (``i // 2``) and their index."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, D, generator=g)
        self.y = torch.randint(0, K, (N,), generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[i],
            "y": self.y[i],
            "group": torch.tensor(i % 2),
            "pool": torch.tensor(i // 2),
            "index": torch.tensor(i),
        }


class StartAt(Sampler[int]):
    """Sequential order whose first pass starts ``skip`` samples in (the resumed epoch)."""

    def __init__(self, skip: int) -> None:
        self.skip = skip

    def __len__(self) -> int:
        return N  # the epoch's full length: Lightning counts the restored batches in it

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(range(start, N))


class Data(L.LightningDataModule):
    """Batches of B rows in order; ``resumable`` starts a resumed epoch where it stopped."""

    def __init__(self, resumable: bool) -> None:
        super().__init__()
        self.resumable = resumable

    def train_dataloader(self) -> DataLoader:
        # Called after the checkpoint is restored: the global step says how many batches of
        # the current epoch were trained (one optimiser step per batch here).
        trainer = self.trainer
        done = trainer.global_step - trainer.current_epoch * PER_EPOCH if self.resumable else 0
        return DataLoader(Rows(), batch_size=B, sampler=StartAt(done * B))


class Student(LossMixin, L.LightningModule):
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
        # momentum and weight decay: the optimiser's state must resume as well
        return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)


def teacher(seed: int = 1) -> nn.Module:
    """Layer ``"1"`` gives 16 features; the student's ``net.1`` 8, so an adapter is built."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K))


def distillation() -> list[L.Callback]:
    return [
        Distillation(teacher(), input_key="x", cache=True),
        Distillation(
            teacher(),
            loss="fitnet",
            student_layers="net.1",
            teacher_layers="1",
            input_key="x",
            cache=True,
            name="feature",
        ),
    ]


#: name -> the callbacks of one run (new objects each time, as in a new process).
METHODS: dict[str, Callable[[], list[L.Callback]]] = {
    "group_dro": lambda: [GroupDRO(num_groups=2, step_size=0.5)],
    "pld": lambda: [PLD(temperature=0.5, warmup_epochs=1, seed=3)],
    # interval 3: perturbed steps 9 and 12 straddle the resume at step 10
    "sam": lambda: [SAM(rho=0.2, interval=3)],
    "asam": lambda: [ASAM(rho=0.5)],
    "awp": lambda: [AWP(gamma=0.05)],
    "distillation": distillation,
    "dro_weighting": lambda: [DROWeighting("cvar", alpha=0.5)],
}


class Record(L.Callback):
    """Per training step: the global step, batch index, sample indices and sample weights."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, list[int], torch.Tensor]] = []
        self._batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_idx = batch_idx

    def observe_losses(self, pl_module, batch, losses, sample_weight):
        weight = None if sample_weight is None else sample_weight.detach().clone()
        self.steps.append((pl_module.global_step, self._batch_idx, batch["index"].tolist(), weight))


class Kill(L.Callback):
    """Raises at the start of global step ``at``: the run dies in the middle of an epoch."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError(f"killed at step {self.at}")


class Run:
    """One ``fit``: its callbacks, the student and the per-step record."""

    def __init__(
        self,
        make: Callable[[], list[L.Callback]],
        root: Path,
        *,
        resumable: bool = True,
        kill: int | None = None,
        resume: bool = False,
        logger: bool = False,
    ) -> None:
        self.callbacks = make()
        self.record = Record()
        self.model = Student()
        extra = [Kill(kill)] if kill is not None else []
        self.trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=EPOCHS,
            callbacks=[
                *self.callbacks,
                self.record,
                *extra,
                ModelCheckpoint(
                    dirpath=root, every_n_train_steps=EVERY, save_top_k=-1, save_last=True
                ),
            ],
            logger=CSVLogger(root, name="logs") if logger else False,
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        self.trainer.fit(
            self.model, datamodule=Data(resumable), ckpt_path="last" if resume else None
        )

    def state(self) -> dict[str, object]:
        """The weights (adapters included) and every callback's state, as Lightning saves them."""
        out: dict[str, object] = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        for cb in self.callbacks:
            out.update({f"{cb.state_key}/{k}": v for k, v in cb.state_dict().items()})
        return out


def _killed(make: Callable[[], list[L.Callback]], root: Path) -> None:
    with pytest.raises(RuntimeError, match=f"killed at step {KILL}"):
        Run(make, root, kill=KILL)
    last = torch.load(root / "last.ckpt", weights_only=False)
    assert last["global_step"] == CKPT and last["epoch"] == CKPT // PER_EPOCH


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """``method -> (the uninterrupted run, a copy of the killed run's folder)``, run once."""
    runs: dict[str, tuple[Run, Path]] = {}

    def get(method: str) -> tuple[Run, Path]:
        if method not in runs:
            root = tmp_path_factory.mktemp(method)
            full = Run(METHODS[method], root / "full")
            _killed(METHODS[method], root / "killed")
            runs[method] = (full, root / "killed")
        full, killed = runs[method]
        copy = tmp_path_factory.mktemp(f"{method}_resumed")
        shutil.copytree(killed, copy, dirs_exist_ok=True)
        return full, copy

    return get


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)
        else:
            assert b[key] == value, key


def _same_steps(a: list, b: list) -> bool:
    """Same (global step, batch index, rows) and the same sample weights, bit for bit."""

    def same(u: torch.Tensor | None, v: torch.Tensor | None) -> bool:
        return u is v is None or (u is not None and v is not None and torch.equal(u, v))

    return len(a) == len(b) and all(
        x[:3] == y[:3] and same(x[3], y[3]) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(method, baseline):
    full, root = baseline(method)
    resumed = Run(METHODS[method], root, resume=True)

    assert resumed.trainer.global_step == full.trainer.global_step == EPOCHS * PER_EPOCH
    # the resumed run trains exactly the steps after the checkpoint, on the same rows, with the
    # same sample weights (GroupDRO's q, PLD's draws, the DRO oracle) ...
    assert _same_steps(resumed.record.steps, full.record.steps[CKPT:])
    # ... and ends with the same weights (adapters included) and callback states, bit for bit
    full_state, resumed_state = full.state(), resumed.state()
    if method == "distillation":
        # The teacher-output cache is not checkpointed: after the resume the teacher runs once
        # more on every batch (the rest of epoch 1, the start of epoch 2), which refills the
        # cache with the same values. Only the count of teacher forwards shows it.
        assert any(k.startswith("model/distill_adapters.feature.") for k in full_state)
        for cb in full.callbacks:
            key = f"{cb.state_key}/teacher_forwards"
            assert full_state.pop(key) == PER_EPOCH  # the first epoch only
            assert resumed_state.pop(key) == 2 * PER_EPOCH
    _assert_same(full_state, resumed_state)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["group_dro", "pld", "sam", "distillation"])
def test_a_plain_dataloader_restarts_the_resumed_epoch_from_its_first_batch(method, baseline):
    full, root = baseline(method)
    plain = Run(METHODS[method], root, resumable=False, resume=True)

    first_epoch_rows = [list(range(i * B, (i + 1) * B)) for i in range(PER_EPOCH)]
    left = PER_EPOCH - CKPT % PER_EPOCH  # batches the resumed epoch had left: 6
    resumed_epoch = plain.record.steps[:left]
    # Restored: the global step and the batch index continue where the checkpoint stopped, and
    # the epoch ends after the batches it had left ...
    assert [s[0] for s in plain.record.steps] == [s[0] for s in full.record.steps[CKPT:]]
    assert [s[1] for s in plain.record.steps] == [s[1] for s in full.record.steps[CKPT:]]
    assert plain.trainer.global_step == full.trainer.global_step
    # ... not restored: the loader's position. The resumed epoch trains the epoch's first six
    # batches again instead of its last six; the following epochs are whole again.
    assert [s[2] for s in resumed_epoch] == first_epoch_rows[:left]
    assert [s[2] for s in full.record.steps[CKPT : CKPT + left]] == first_epoch_rows[-left:]
    assert [s[2] for s in plain.record.steps[left:]] == first_epoch_rows * (EPOCHS - 2)
    # so the weights differ from the uninterrupted run's
    full_state, plain_state = full.state(), plain.state()
    assert not torch.equal(plain_state["model/net.0.weight"], full_state["model/net.0.weight"])


@pytest.mark.slow
def test_epoch_means_of_the_resumed_epoch_cover_the_steps_after_the_resume(tmp_path):
    class QRecord(L.Callback):
        def __init__(self) -> None:
            self.q0: list[float] = []

        def observe_losses(self, pl_module, batch, losses, sample_weight):
            dro = next(c for c in pl_module.trainer.callbacks if isinstance(c, GroupDRO))
            self.q0.append(float(dro.q[0]))

    def make() -> list[L.Callback]:
        return [GroupDRO(num_groups=2, step_size=0.5), QRecord()]

    full = Run(make, tmp_path / "full", logger=True)
    _killed(make, tmp_path / "run")
    resumed = Run(make, tmp_path / "run", resume=True, logger=True)

    def logged(run: Run, epoch: int) -> float:
        path = Path(run.trainer.logger.log_dir) / "metrics.csv"
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/group_dro/q_0")]
        (row,) = [r for r in rows if int(r["epoch"]) == epoch]
        return float(row["train/group_dro/q_0"])

    q0 = full.callbacks[1].q0  # q_0 after every step of the uninterrupted run
    epoch = CKPT // PER_EPOCH
    whole = q0[epoch * PER_EPOCH : (epoch + 1) * PER_EPOCH]
    after = q0[CKPT : (epoch + 1) * PER_EPOCH]
    # (Lightning keeps logged values in float32)
    assert logged(full, epoch) == pytest.approx(sum(whole) / len(whole), rel=1e-6)
    assert logged(resumed, epoch) == pytest.approx(sum(after) / len(after), rel=1e-6)
    assert logged(resumed, epoch) != pytest.approx(logged(full, epoch), rel=1e-6)
    # the next epoch is whole again, and the same
    assert logged(resumed, epoch + 1) == logged(full, epoch + 1)
