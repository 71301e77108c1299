"""A LightningCLI whose configuration mistakes read as one sentence, not a traceback.

A wrong option, value, path, loss name or backbone on a recipe's command line makes
jsonargparse print its usage and a nested traceback in which the library's own message is
buried. :func:`run_recipe_cli` instead prints one line, ``error: <what was given, what is
expected, close matches>``, and exits with status 2. Errors raised while training are not
touched: they keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI

#: Exceptions that mean "the configuration is wrong" when raised while the CLI builds the
#: model, the datamodule and the trainer.
CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)


class RecipeConfigError(Exception):
    """A configuration mistake found while parsing or instantiating a recipe."""


def _root_cause(err: BaseException) -> BaseException:
    """The innermost configuration error in an exception's cause chain (jsonargparse wraps
    the constructor's own error in its own)."""
    found, seen = err, set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CONFIG_ERRORS):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _message(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


class RecipeCLI(LightningCLI):
    """LightningCLI that turns parse and instantiation errors into :class:`RecipeConfigError`."""

    def __init__(self, *args: Any, parser_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        quiet = {"exit_on_error": False}
        stages = ("fit", "validate", "test", "predict")
        merged = {**quiet, **{s: dict(quiet) for s in stages}, **(parser_kwargs or {})}
        try:
            super().__init__(*args, parser_kwargs=merged, **kwargs)
        except argparse.ArgumentError as err:
            raise RecipeConfigError(_message(err)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except CONFIG_ERRORS as err:
            raise RecipeConfigError(_message(_root_cause(err))) from None


def run_recipe_cli(cli_class: type[RecipeCLI], *args: Any, **kwargs: Any) -> RecipeCLI:
    """Build and run ``cli_class``; a configuration mistake prints one line and exits 2."""
    try:
        return cli_class(*args, **kwargs)
    except RecipeConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        print("(`--help` lists the options; `lightning-losses list` the losses.)", file=sys.stderr)
        raise SystemExit(2) from None
