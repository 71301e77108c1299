"""Run a recipe by name: ``lightning-losses fit classification -c longtail_ldam_drw``.

The recipes (``recipes/*.py``) and their configs (``recipes/configs/*.yaml``) ship inside the
installed package as ``lightning_losses/recipes/`` (the wheel copies the top-level folder, the
one source); in a source checkout they are read from the top-level ``recipes/`` folder.
A config may be given by name (``-c classification``), by file name or by path; without any
config, the recipe's own default (``configs/<recipe>.yaml``) is used.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from ._checks import closest

STAGES = ("fit", "validate", "test", "predict")


def recipes_dir() -> Path:
    """The folder holding the recipe scripts: inside the package, else the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "recipes", here.parent / "recipes"):
        if (candidate / "configs").is_dir():
            return candidate
    raise FileNotFoundError(
        "the recipes are not installed with this copy of lightning_losses: install the package "
        "from its wheel (`pip install lightning-losses[recipes]`) or run from a clone."
    )


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.py") if not p.name.startswith("_"))


def list_configs() -> list[str]:
    return sorted(p.stem for p in (recipes_dir() / "configs").glob("*.yaml"))


def resolve_config(value: str) -> str:
    """A config path as given if it exists, else the packaged config of that name."""
    if Path(value).exists():
        return value
    configs = recipes_dir() / "configs"
    for name in (value, f"{value}.yaml"):
        if (configs / name).is_file():
            return str(configs / name)
    hint = closest(Path(value).stem, list_configs())
    suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
    raise ValueError(
        f"config {value!r} is neither a file nor a packaged config.{suggestion} Packaged "
        f"configs: {', '.join(list_configs())}."
    )


def recipe_argv(recipe: str, stage: str, args: list[str]) -> list[str]:
    """The recipe script's command line, configs given by name resolved to packaged paths."""
    resolved, has_config, i = [], False, 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config") and i + 1 < len(args):
            resolved += [arg, resolve_config(args[i + 1])]
            has_config, i = True, i + 2
            continue
        if arg.startswith("--config="):
            resolved.append("--config=" + resolve_config(arg.split("=", 1)[1]))
            has_config = True
        else:
            resolved.append(arg)
        i += 1
    default = recipes_dir() / "configs" / f"{recipe}.yaml"
    if not has_config and default.is_file():
        resolved = ["--config", str(default), *resolved]
    return [stage, *resolved]


def run_recipe(recipe: str, stage: str, args: list[str]) -> None:
    """Run ``recipes/<recipe>.py <stage> <args>`` as its own ``__main__``."""
    recipes = list_recipes()
    if recipe not in recipes:
        hint = closest(recipe, recipes)
        suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
        raise ValueError(f"unknown recipe {recipe!r}.{suggestion} Recipes: {', '.join(recipes)}.")
    script = recipes_dir() / f"{recipe}.py"
    argv = recipe_argv(recipe, stage, args)
    saved = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
