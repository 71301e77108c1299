"""The flatness recipe overlays (``sam.yaml``, ``landscape.yaml``) through the classification CLI.

Short runs: one epoch of 3 training batches on the embedded digits, with timm's ``test_resnet``
(0.37 M parameters, batch norm included) in place of ``resnet18`` to keep them fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_losses.callbacks import SAM, LossLandscape
from lightning_losses.tasks.classification import cli_main

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
TRAIN_BATCHES = 3


@pytest.fixture(autouse=True)
def _one_thread():
    # conftest asks for 2 threads; on a busy 2-core machine the HVPs of the landscape run are
    # several times slower with 2 than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _args(tmp_path: Path, *configs: str) -> list[str]:
    args = ["fit"]
    for name in configs:
        args += ["--config", str(CONFIGS / name)]
    return [
        *args,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        str(TRAIN_BATCHES),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.backbone",
        "test_resnet",
    ]


def _train(tmp_path: Path, *configs: str):
    """Parse and instantiate through the CLI, then fit; return the CLI, the initial and the
    final weights and the number of ``training_step`` calls."""
    args = _args(tmp_path, *configs)[1:]  # no subcommand with run=False
    cli = cli_main([*args, "--trainer.enable_checkpointing", "false"], run=False)
    model = cli.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calls = []
    step = model.training_step

    def counted(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    model.training_step = counted
    cli.trainer.fit(model, datamodule=cli.datamodule)
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cli, initial, final, len(calls)


def _params(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: state[name] for name, _ in model.named_parameters()}


def test_sam_config_trains_and_differs_from_plain(tmp_path):
    cli, initial, final, calls = _train(tmp_path / "sam", "classification.yaml", "sam.yaml")
    sams = [c for c in cli.trainer.callbacks if isinstance(c, SAM)]
    assert len(sams) == 1 and type(sams[0]) is SAM
    assert sams[0].rho == 0.05 and not sams[0].adaptive and sams[0].interval == 1
    assert calls == 2 * TRAIN_BATCHES  # every step takes the second (perturbed) pass
    assert cli.trainer.global_step == TRAIN_BATCHES
    sam_params = _params(cli.model, final)
    assert all(torch.isfinite(p).all() for p in sam_params.values())
    init_params = _params(cli.model, initial)
    assert any(not torch.equal(sam_params[k], init_params[k]) for k in sam_params)  # it trained

    plain, plain_initial, plain_final, plain_calls = _train(
        tmp_path / "plain", "classification.yaml"
    )
    assert not any(isinstance(c, SAM) for c in plain.trainer.callbacks)
    assert plain_calls == TRAIN_BATCHES
    # same seed, same initial weights: the difference comes from SAM's updates alone
    assert all(torch.equal(plain_initial[k], initial[k]) for k in initial)
    plain_params = _params(plain.model, plain_final)
    changed = [k for k in sam_params if not torch.allclose(sam_params[k], plain_params[k])]
    assert len(changed) > len(sam_params) // 2


def test_landscape_config_writes_figures_and_arrays(tmp_path):
    args = _args(tmp_path, "classification.yaml", "landscape.yaml")
    cli = cli_main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, LossLandscape)]
    assert len(callbacks) == 1
    landscape = callbacks[0]
    assert landscape.run_at_end and landscape.every_n_epochs is None
    assert landscape.last_step == TRAIN_BATCHES  # it ran once, at the end of fit

    run_dir = Path(cli.trainer.log_dir)
    assert run_dir.is_relative_to(tmp_path)
    out = run_dir / "landscape"
    stem = f"epoch1_step{TRAIN_BATCHES}"
    pngs = sorted(p.name for p in out.glob("*.png"))
    for name in ("density", "line", "plane"):
        assert f"{name}_{stem}.png" in pngs
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arrays = np.load(out / f"landscape_{stem}.npz")
    assert arrays["plane_losses"].shape == (11, 11)
    assert arrays["line_losses"].shape == (21,)
    assert np.isfinite(arrays["plane_losses"]).all() and np.isfinite(arrays["line_losses"]).all()
    assert arrays["eigenvalues"].shape == (1,)
    assert float(arrays["scalar_lambda_max"]) == float(arrays["eigenvalues"][0])
    assert np.isfinite(float(arrays["scalar_trace"]))
    assert float(arrays["scalar_hvps"]) <= 20 + 12 + 20  # the config's budget
    # the centre of the plane is the trained weights: the probe loss itself
    assert arrays["plane_losses"][5, 5] == float(arrays["scalar_probe_loss"])

    # the scalars reached the CSV logger, and the run went on to test the restored model
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "landscape/lambda_max" in header and "landscape/trace" in header
    report = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= report["accuracy"] <= 1.0
