"""LossLandscape: no effect on training, agreement with the pure diagnostics, files, figures on
every logger, isolation (BN statistics, modes, RNG, inference_mode), the cost printout, errors."""

from __future__ import annotations

import csv
import importlib.util
import random
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_losses.callbacks.loss_landscape import LossLandscape, module_loss
from lightning_losses.diagnostics import LossFunction, class_loss_function, lanczos

D, H, K, N = 6, 12, 3, 64
FAST = dict(num_probe_samples=48, probe_batch_size=16)  # 3 probe batches


class NoisyData(Dataset):
    """Random features and labels; every item adds NumPy, Python and torch noise (global RNGs)."""

    def __init__(self, n: int = N) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, D, generator=g)
        self.y = torch.randint(0, K, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = 0.01 * (np.random.randn() + random.random() + float(torch.rand(())))
        return self.x[i] + noise, self.y[i]


class Net(L.LightningModule):
    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.2), nn.Linear(H, K)
        )
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer, self.lr, self.momentum = optimizer, lr, momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", self.criterion(self(x), y))

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class NoCriterion(Net):
    def __init__(self) -> None:
        super().__init__()
        self.criterion = None


class FigureLogger(Logger):
    """A logger whose experiment takes figures the TensorBoard way (``add_figure``)."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[tuple[str, object, int]] = []
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "figures"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self):
        return self

    def add_figure(self, tag, figure, global_step=None) -> None:
        self.figures.append((tag, figure, global_step))

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def logged(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for step, m in self.metrics if key in m]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


def _fit(
    tmp_path: Path,
    callbacks=(),
    logger=False,
    model: Net | None = None,
    epochs: int = 2,
    devices: int = 1,
):
    _seed()
    model = model if model is not None else Net()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=epochs,
        logger=logger,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    train = DataLoader(NoisyData(), batch_size=16, shuffle=True)
    val = DataLoader(NoisyData(32), batch_size=16)
    trainer.fit(model, train, val)
    return model, trainer


def _set_norm_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.Dropout):
            m.training = False


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- no effect


def test_training_ends_with_exactly_the_same_weights(tmp_path):
    reference, _ = _fit(tmp_path / "plain")
    expected = _state(reference)
    for name, cb in [
        ("end", LossLandscape(**FAST, verbose=False)),
        ("every", LossLandscape(every_n_epochs=1, per_class=True, **FAST, verbose=False)),
    ]:
        model, _ = _fit(tmp_path / name, [cb], logger=CSVLogger(tmp_path / name))
        got = _state(model)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), (name, key)
        assert len(cb.history) == 2 if name == "every" else len(cb.history) == 1


def test_analysis_restores_weights_buffers_modes_and_rng(tmp_path):
    cb = LossLandscape(**FAST, model_mode="train", verbose=False)  # BN on batch stats, dropout on
    model, trainer = _fit(tmp_path, [cb])
    model.train()
    model.net[3].eval()  # a mixed mode must come back as it was
    before = _state(model)
    modes = [m.training for m in model.modules()]
    rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    scalars = cb.analyze(trainer, model)
    assert np.isfinite(scalars["landscape/lambda_max"])
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key  # BN running stats included
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert random.getstate() == rng[2]


def test_runs_inside_inference_mode(tmp_path):
    cb = LossLandscape(**FAST, verbose=False, line_points=None, plane_points=None)
    model, trainer = _fit(tmp_path, [cb])
    expected = cb.history[-1]["lambda_max"]
    with torch.inference_mode():
        scalars = cb.analyze(trainer, model)
    assert scalars["landscape/lambda_max"] == expected


# ----------------------------------------------------------------------------- agreement


def test_logged_top_eigenvalue_equals_lanczos_on_the_probe_loss(tmp_path):
    cb = LossLandscape(**FAST, per_class=True, verbose=False)
    logger = CSVLogger(tmp_path)
    model, _ = _fit(tmp_path, [cb], logger=logger)
    _set_norm_eval(model)
    fn = LossFunction(model, module_loss, cb.probe_batches)
    ref = lanczos(fn, 3, max_iter=100, tol=1e-3, seed=0, return_eigenvectors=False)
    out = Path(logger.log_dir) / "landscape"
    (npz,) = out.glob("*.npz")
    arrays = np.load(npz)
    assert np.array_equal(arrays["eigenvalues"], ref.eigenvalues.numpy())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("landscape/lambda_max")]
    assert len(rows) == 1
    assert float(rows[0]["landscape/lambda_max"]) == pytest.approx(float(ref.eigenvalues[0]))
    assert int(rows[0]["step"]) == 8  # 2 epochs of 4 batches
    # the Lanczos value is the top of the dense Hessian (227 parameters)
    top = float(torch.linalg.eigvalsh(fn.hessian().double()).max())
    assert float(ref.eigenvalues[0]) == pytest.approx(top, rel=1e-3)
    # per class: the class's own loss
    class_ref = lanczos(
        class_loss_function(model, module_loss, cb.probe_batches, 1),
        1,
        max_iter=100,
        tol=1e-3,
        seed=0,
        return_eigenvectors=False,
    )
    assert arrays["class_lambda_max"][1] == float(class_ref.eigenvalues[0])
    assert float(rows[0]["landscape/class_1/lambda_max"]) == pytest.approx(
        float(class_ref.eigenvalues[0])
    )


def test_csv_logger_gets_pngs_and_npz(tmp_path):
    cb = LossLandscape(every_n_epochs=1, per_class=[0, 2], **FAST, verbose=False)
    logger = CSVLogger(tmp_path)
    _fit(tmp_path, [cb], logger=logger)
    out = Path(logger.log_dir) / "landscape"
    names = {p.name for p in out.glob("*.png")}
    for fig in ("density", "line", "plane", "sharpness", "per_class"):
        for stem in ("epoch0_step4", "epoch1_step8"):
            assert f"{fig}_{stem}.png" in names
    assert len(list(out.glob("*.npz"))) == 2  # the end-of-training run is not repeated
    arrays = np.load(out / "landscape_epoch1_step8.npz")
    assert arrays["eigenvalues"].shape == (3,)
    assert arrays["plane_losses"].shape == (11, 11)
    assert arrays["line_losses"].shape == (21,)
    assert arrays["density"].shape == arrays["density_grid"].shape
    assert arrays["density_weights"].sum() == pytest.approx(1.0)
    assert arrays["class_ids"].tolist() == [0, 2]
    assert arrays["history_step"].tolist() == [4.0, 8.0]
    # the centre of both slices is the unperturbed probe loss
    assert arrays["plane_losses"][5, 5] == pytest.approx(float(arrays["scalar_probe_loss"]))
    assert arrays["line_losses"][10] == pytest.approx(float(arrays["scalar_probe_loss"]))


def test_figure_logger_and_pl_module_log(tmp_path):
    logger = FigureLogger()
    cb = LossLandscape(every_n_epochs=1, **FAST, verbose=False)
    _fit(tmp_path, [cb], logger=logger)
    tags = {(tag, step) for tag, _, step in logger.figures}
    for fig in ("density", "line", "plane", "sharpness"):
        assert (f"landscape/{fig}", 4) in tags and (f"landscape/{fig}", 8) in tags
    # periodic runs log through pl_module.log: one value per epoch, in the callback metrics
    assert len(logger.logged("landscape/lambda_max")) == 2
    # no logger-less fallback: the logger took the figures, only the arrays are files
    out = tmp_path / "landscape"
    assert not list(out.glob("*.png")) and len(list(out.glob("*.npz"))) == 2


def test_end_of_training_logs_through_loggers_without_logger_dir(tmp_path):
    logger = FigureLogger()
    _fit(tmp_path, [LossLandscape(**FAST, verbose=False)], logger=logger)
    (entry,) = logger.logged("landscape/lambda_max")
    assert entry[0] == 8
    assert not list(Path(tmp_path).rglob("*.png"))


def test_no_logger_writes_pngs_to_default_root_dir(tmp_path):
    _fit(tmp_path, [LossLandscape(**FAST, verbose=False, density_steps=None)])
    out = tmp_path / "landscape"
    assert {p.name.split("_epoch")[0] for p in out.glob("*.png")} == {"line", "plane", "sharpness"}
    assert len(list(out.glob("*.npz"))) == 1


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard is not installed (the duck-typed add_figure path is tested with "
    "FigureLogger above)",
)
def test_tensorboard_event_file_holds_the_figures(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    _fit(tmp_path, [LossLandscape(**FAST, verbose=False)], logger=logger)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert {"landscape/plane", "landscape/density", "landscape/line"} <= set(acc.Tags()["images"])


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_runs_on_rank_zero_only(tmp_path, capfd):
    # 2 processes (gloo): rank 1 waits at the barrier and logs the broadcast scalars; the
    # periodic runs and the skipped end-of-training run neither hang nor run twice.
    _fit(tmp_path / "cb", [LossLandscape(every_n_epochs=1, **FAST)], devices=2)
    out = capfd.readouterr().out
    assert out.count("LossLandscape (epoch") == 2  # two runs, each on rank zero only
    npz = sorted(p.name for p in (tmp_path / "cb" / "landscape").glob("*.npz"))
    assert npz == ["landscape_epoch0_step2.npz", "landscape_epoch1_step4.npz"]


# ----------------------------------------------------------------------------- edge of stability


def test_stability_threshold_sgd_momentum_and_adam(tmp_path):
    logger = FigureLogger()
    _fit(tmp_path / "sgd", [LossLandscape(**FAST, verbose=False)], logger=logger)
    (metrics,) = [m for _, m in logger.metrics if "landscape/lambda_max" in m]
    assert metrics["landscape/two_over_lr"] == pytest.approx(20.0)
    assert metrics["landscape/stability_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1)
    assert metrics["landscape/sharpness_ratio"] == pytest.approx(
        metrics["landscape/lambda_max"] / 38.0
    )

    logger = FigureLogger()
    with pytest.warns(UserWarning, match="not the right stability threshold"):
        _fit(
            tmp_path / "adam",
            [LossLandscape(**FAST, verbose=False)],
            logger=logger,
            model=Net(optimizer="adam", lr=0.01),
        )
    (metrics,) = [m for _, m in logger.metrics if "landscape/lambda_max" in m]
    assert metrics["landscape/two_over_lr"] == pytest.approx(200.0)
    assert "landscape/stability_threshold" not in metrics


# ----------------------------------------------------------------------------- cost printout


def test_cost_printout_is_exact_for_fixed_budgets_and_an_upper_bound(tmp_path, capsys):
    cb = LossLandscape(
        **FAST,
        top_k=None,
        density_steps=None,
        epsilon=None,
        trace_matvecs=12,
        line_points=5,
        plane_points=3,
    )
    logger = FigureLogger()
    _fit(tmp_path / "fixed", [cb], logger=logger)
    text = capsys.readouterr().out
    match = re.search(r"at most ([\d,]+) HVPs and ([\d,]+) forward passes", text)
    assert match, text
    hvps, forwards = (int(g.replace(",", "")) for g in match.groups())
    assert "48 samples in 3 batches" in text
    assert (hvps, forwards) == (12, (12 + 1 + 5 + 9) * 3)
    (metrics,) = [m for _, m in logger.metrics if "landscape/hvps" in m]
    assert (metrics["landscape/hvps"], metrics["landscape/forward_passes"]) == (hvps, forwards)

    cb = LossLandscape(**FAST, per_class=True)
    logger = FigureLogger()
    _fit(tmp_path / "default", [cb], logger=logger)
    match = re.search(r"at most ([\d,]+) HVPs and ([\d,]+) forward passes", capsys.readouterr().out)
    hvps, forwards = (int(g.replace(",", "")) for g in match.groups())
    (metrics,) = [m for _, m in logger.metrics if "landscape/hvps" in m]
    assert 0 < metrics["landscape/hvps"] <= hvps
    assert 0 < metrics["landscape/forward_passes"] <= forwards


def test_verbose_false_prints_nothing(tmp_path, capsys):
    _fit(tmp_path, [LossLandscape(**FAST, verbose=False)])
    assert "LossLandscape" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- state and errors


def test_state_dict_round_trip(tmp_path):
    cb = LossLandscape(every_n_epochs=1, **FAST, verbose=False)
    _fit(tmp_path, [cb])
    other = LossLandscape(**FAST)
    other.load_state_dict(cb.state_dict())
    assert other.history == cb.history and other.last_step == 8


def test_custom_loss_fn_and_probe_batches(tmp_path):
    g = torch.Generator().manual_seed(1)
    batches = [{"features": torch.randn(8, D, generator=g), "y": torch.arange(8) % K}]

    def loss_fn(module, batch):
        return nn.functional.cross_entropy(module(batch["features"]), batch["y"])

    cb = LossLandscape(probe_data=batches, loss_fn=loss_fn, verbose=False)
    model, _ = _fit(tmp_path, [cb])
    _set_norm_eval(model)
    ref = lanczos(LossFunction(model, loss_fn, batches), 3, seed=0, return_eigenvectors=False)
    assert cb.history[-1]["lambda_max"] == float(ref.eigenvalues[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(plane_points=1), "plane_points"),
        (dict(line_points=1), "line_points"),
        (dict(normalization="unit"), "normalization"),
        (dict(ignore="bias"), "ignore"),
        (dict(every_n_epochs=0), "every_n_epochs"),
        (dict(num_probe_samples=0), "num_probe_samples"),
        (dict(probe_batch_size=-1), "probe_batch_size"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=5, max_iter=3), "max_iter"),
        (dict(trace_matvecs=3), "trace_matvecs"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(model_mode="test"), "model_mode"),
        (dict(per_class=[]), "per_class"),
        (dict(probe_data=[]), "probe_data"),
        (dict(run_at_end=False), "never run"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossLandscape(**kwargs)


def test_absent_class_is_named(tmp_path):
    cb = LossLandscape(per_class=[0, 7], **FAST, verbose=False)
    with pytest.raises(ValueError, match=r"`per_class` asks for class\(es\) \[7\]"):
        _fit(tmp_path, [cb])


def test_missing_criterion_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="loss_fn="):
        _fit(tmp_path, [LossLandscape()], model=NoCriterion())


class NoForward(Net):
    """Calls its layers in training_step and defines no forward of its own."""

    forward = L.LightningModule.forward

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        pass


def test_module_without_forward_gets_a_loss_fn_hint(tmp_path):
    with pytest.raises(TypeError, match=r"NoForward defines no `forward`.*loss_fn="):
        _fit(tmp_path, [LossLandscape()], model=NoForward())
    # with loss_fn= it trains and runs
    _fit(
        tmp_path,
        [LossLandscape(loss_fn=lambda m, b: m.criterion(m.net(b[0]), b[1]), **FAST, verbose=False)],
        model=NoForward(),
        epochs=1,
    )
