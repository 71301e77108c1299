"""The losses install and import without the recipe side: importing ``lightning_losses`` and
building a loss (or the LossMixin) loads no Lightning, torchmetrics, timm, smp, scikit-learn,
matplotlib, diffusers, SciPy or scikit-image (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "lightning",
    "torchmetrics",
    "timm",
    "segmentation_models_pytorch",
    "sklearn",
    "matplotlib",
    "diffusers",
    "scipy",
    "skimage",
)


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(set(sys.modules))))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    modules = json.loads(out.splitlines()[-1])
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def test_losses_and_the_registry_import_only_torch():
    code = (
        "import lightning_losses\n"
        "from lightning_losses import LossMixin, build_loss, list_losses\n"
        "for name in list_losses():\n"
        "    lightning_losses.loss_info(name)\n"
        "build_loss('focal')\n"
        "import lightning_losses.cli\n"
    )
    assert _loaded_after(code) == []


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: the callbacks do import Lightning."""
    assert "lightning" in _loaded_after("from lightning_losses.callbacks import InfoBatch")


def test_callbacks_and_metrics_need_no_recipe_extra():
    """The core install (no extras) runs the callbacks and the library's metrics. (SciPy is not
    checked here: torchmetrics imports it whenever it is installed.)"""
    code = (
        "from lightning_losses.callbacks import InfoBatch, GroupDRO, Distillation, SAM\n"
        "from lightning_losses.metrics import GroupAccuracy, ReIDMetrics\n"
    )
    loaded = _loaded_after(code)
    assert not set(loaded) & {"timm", "segmentation_models_pytorch", "sklearn", "skimage"}
