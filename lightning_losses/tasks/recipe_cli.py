"""A LightningCLI whose configuration mistakes read as one sentence, not a traceback.

A wrong option, value, path, loss name or backbone on a recipe's command line makes
jsonargparse print its usage and a nested traceback in which the library's own message is
buried. :func:`run_recipe_cli` instead prints one line, ``error: <what was given, what is
expected, close matches>``, and exits with status 2. Errors raised while training are not
touched: they keep their traceback.

The recipes' output is kept to what a user acts on: one metrics table per report (the recipe's
own, on stdout; ``trainer.test`` runs with ``verbose=False`` unless ``--verbose true`` asks for
Lightning's table too), without Lightning's advertising tips and without a deprecation warning
that Lightning raises inside its own code (:data:`QUIET_WARNINGS`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

#: Exceptions that mean "the configuration is wrong" when raised while the CLI builds the
#: model, the datamodule and the trainer.
CONFIG_ERRORS = (ValueError, TypeError, FileNotFoundError, KeyError)


#: Warnings raised inside Lightning's own code that a recipe user can do nothing about.
QUIET_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)

#: Lightning's info messages that advertise other products rather than describe the run.
_TIP_PREFIX = "\N{ELECTRIC LIGHT BULB} Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


def quiet_lightning() -> None:
    """Drop Lightning's product tips and its internal deprecation warnings (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


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
    """LightningCLI that turns parse and instantiation errors into :class:`RecipeConfigError`.

    Every recipe's command line also gets ``--test_after_fit`` (test right after ``fit``,
    default true) and ``--test_ckpt_path``, and a config whose ``data`` section names no
    ``class_path`` gets the recipe's :attr:`default_data`. Subclasses add their own arguments
    after calling ``super().add_arguments_to_parser(parser)``.
    """

    #: The datamodule class path of a config whose ``data`` section names none.
    default_data: str | None = None

    def __init__(self, *args: Any, parser_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        quiet = {"exit_on_error": False}
        stages = ("fit", "validate", "test", "predict")
        merged = {**quiet, **{s: dict(quiet) for s in stages}, **(parser_kwargs or {})}
        quiet_lightning()
        try:
            super().__init__(*args, parser_kwargs=merged, **kwargs)
        except argparse.ArgumentError as err:
            raise RecipeConfigError(_message(err)) from None

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "test":  # the recipe prints its own test report
            parser.set_defaults(verbose=False)
        return parser

    def add_arguments_to_parser(self, parser: Any) -> None:
        if self.default_data is not None:
            parser.set_defaults({"data": {"class_path": self.default_data}})
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="run `test` right after `fit`"
        )
        parser.add_argument(
            "--test_ckpt_path",
            type=str | None,
            default=None,
            help="weights for the test after `fit`: null = the final weights; 'best' = the "
            "best checkpoint of the ModelCheckpoint callback (model selection on its monitored "
            "validation metric); or a checkpoint path",
        )

    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        if config.get("test_after_fit", True):
            self.test_after_fit(config.get("test_ckpt_path"))

    def test_after_fit(self, ckpt_path: str | None = None) -> None:
        """Test the fitted model on the datamodule's test split; only the recipe's table prints."""
        self.trainer.test(
            self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False
        )

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
