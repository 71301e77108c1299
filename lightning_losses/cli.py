"""``lightning-losses``: look up the registered losses from the shell.

lightning-losses list [--family FAMILY]   one line per loss: name, family, context, summary
lightning-losses info NAME                formula, defaults and reference of one loss
lightning-losses reference                every loss card as Markdown (docs/losses/reference.md)
lightning-losses recipes                  the recipes and their configs
lightning-losses fit RECIPE [ARGS]        run a recipe (also validate, test, predict); ARGS
                                          are the recipe's LightningCLI arguments, and
                                          `-c NAME` picks a packaged config by name
"""

from __future__ import annotations

import argparse
import sys

from ._plain_math import plain_math
from .recipe_runner import STAGES
from .registry import FAMILIES, list_losses, loss_info, render_reference


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_losses(args.family)
    rows = [("name", "family", "context", "summary")]
    for name in names:
        info = loss_info(name)
        summary = plain_math(info.summary)
        rows.append((name, info.family, ",".join(info.context) or "-", summary))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3])
        if i == 0:
            print("  ".join("-" * w for w in widths), "-" * 7)
    scope = f" in family {args.family!r}" if args.family else ""
    print(f"\n{len(names)} losses{scope}; `lightning-losses info NAME` shows one in full.")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(loss_info(args.name).describe(plain=True))
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(render_reference())
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .recipe_runner import list_configs, list_recipes, recipes_dir

    print(f"recipes ({recipes_dir()}):")
    for name in list_recipes():
        print(f"  {name}")
    print("configs (-c NAME):")
    for name in list_configs():
        print(f"  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-losses", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered losses")
    p_list.add_argument("--family", choices=FAMILIES, default=None)
    p_list.set_defaults(func=_cmd_list)
    p_info = sub.add_parser("info", help="formula, defaults and reference of one loss")
    p_info.add_argument("name")
    p_info.set_defaults(func=_cmd_info)
    p_ref = sub.add_parser("reference", help="every loss card as Markdown")
    p_ref.set_defaults(func=_cmd_reference)
    p_rec = sub.add_parser("recipes", help="the recipes and their configs")
    p_rec.set_defaults(func=_cmd_recipes)
    for stage in STAGES:  # parsed by hand in main(): the rest belongs to LightningCLI
        sub.add_parser(stage, help=f"{stage} a recipe: {stage} RECIPE [LightningCLI args]")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STAGES:
        return _run_recipe(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `lightning-losses list | head`: the reader stopped, not an error
        sys.stderr.close()
        return 0
    except ValueError as err:
        print(f"lightning-losses: error: {err}", file=sys.stderr)
        return 2


def _run_recipe(argv: list[str]) -> int:
    from .recipe_runner import run_recipe

    if len(argv) < 2 or argv[1].startswith("-"):
        print(
            f"lightning-losses: error: usage: lightning-losses {argv[0]} RECIPE [args]; "
            "`lightning-losses recipes` lists them.",
            file=sys.stderr,
        )
        return 2
    try:
        run_recipe(argv[1], argv[0], argv[2:])
    except (ValueError, FileNotFoundError) as err:
        print(f"lightning-losses: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
