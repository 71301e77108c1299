"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_model_trains():
    namespace: dict = {}
    exec(_python_blocks()[0], namespace)  # defines Model exactly as the README shows it
    model = namespace["Model"]()
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(data, batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_every_python_block_runs_as_written():
    for block in _python_blocks():
        exec(block, {})


def test_readme_contract_snippet():
    namespace: dict = {}
    exec(_python_blocks()[1], namespace)
    assert namespace["loss"](namespace["logits"], namespace["target"]).ndim == 0


def test_readme_callbacks_snippet():
    from lightning_losses.callbacks import InfoBatch

    namespace: dict = {}
    exec(_python_blocks()[2], namespace)
    assert any(isinstance(cb, InfoBatch) for cb in namespace["trainer"].callbacks)


def test_readme_teacher_and_flatness_snippet():
    from lightning_losses.callbacks import SAM, Distillation, LossLandscape

    namespace: dict = {}
    exec(_python_blocks()[3], namespace)
    distill, landscape = namespace["callbacks"]
    assert isinstance(distill, Distillation) and isinstance(landscape, LossLandscape)
    (sam,) = namespace["flat"]
    assert isinstance(sam, SAM) and sam.rho == 0.05
