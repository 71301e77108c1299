"""Recipes by name: `lightning-losses fit RECIPE -c CONFIG`, and the recipes inside the wheel."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from lightning_losses.cli import main
from lightning_losses.recipe_runner import (
    list_configs,
    list_recipes,
    recipe_argv,
    recipes_dir,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_serves_the_top_level_recipes():
    assert recipes_dir() == ROOT / "recipes"
    assert "classification" in list_recipes()
    assert {"classification", "longtail_ldam_drw"} <= set(list_configs())


def test_configs_by_name_file_name_or_path():
    packaged = str(ROOT / "recipes" / "configs" / "focal.yaml")
    assert resolve_config("focal") == packaged
    assert resolve_config("focal.yaml") == packaged
    assert resolve_config(packaged) == packaged
    with pytest.raises(ValueError, match=r"config 'focall'.*Did you mean 'focal'"):
        resolve_config("focall")


def test_the_recipe_default_config_comes_first_unless_one_is_given():
    default = str(ROOT / "recipes" / "configs" / "classification.yaml")
    overlay = str(ROOT / "recipes" / "configs" / "focal.yaml")
    assert recipe_argv("classification", "fit", ["--trainer.max_epochs", "1"]) == [
        "fit",
        "--config",
        default,
        "--trainer.max_epochs",
        "1",
    ]
    assert recipe_argv("classification", "fit", ["-c", "classification", "-c", "focal"]) == [
        "fit",
        "-c",
        default,
        "-c",
        overlay,
    ]
    assert recipe_argv("classification", "test", ["--config=focal"]) == [
        "test",
        f"--config={overlay}",
    ]


def test_unknown_recipe_or_config_is_one_clear_line(capsys):
    assert main(["fit", "clasification"]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'clasification'" in err and "'classification'" in err
    assert main(["fit", "classification", "-c", "longtail_ldam"]) == 2
    assert "'longtail_ldam_drw'" in capsys.readouterr().err
    assert main(["fit"]) == 2
    assert "usage: lightning-losses fit RECIPE" in capsys.readouterr().err


def test_recipes_command_lists_recipes_and_configs(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "  classification" in out and "  longtail_ldam_drw" in out


def test_a_recipe_runs_by_name(tmp_path):
    code = main(
        [
            "fit",
            "classification",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert code == 0
    (report,) = tmp_path.rglob("test_metrics.json")
    assert json.loads(report.read_text())["hparams"]["backbone"] == "resnet18"


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else ["python3", "-m", "uv"]


def test_the_wheel_ships_the_recipes_and_their_configs(tmp_path):
    subprocess.run(
        [*_uv(), "build", "--wheel", "-o", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "recipes").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"lightning_losses/recipes/{path.relative_to(ROOT / 'recipes')}" in names
    meta = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    # the recipe-side packages are extras, not requirements of the losses
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [line for line in requires if "extra ==" not in line]
    assert not any(p in line for line in core for p in ("timm", "segmentation-models", "scikit"))
    assert any(line.startswith("Requires-Dist: timm") and "'recipes'" in line for line in requires)
