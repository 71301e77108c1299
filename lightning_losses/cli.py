"""``lightning-losses``: look up the registered losses from the shell.

    lightning-losses list [--family FAMILY]   one line per loss: name, family, context, summary
    lightning-losses info NAME                formula, defaults and reference of one loss
    lightning-losses reference                every loss card as Markdown (docs/losses/reference.md)

The recipes have their own LightningCLI scripts under ``recipes/``.
"""

from __future__ import annotations

import argparse
import sys

from .registry import FAMILIES, list_losses, loss_info, render_reference


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_losses(args.family)
    width = max(len(n) for n in names)
    for name in names:
        info = loss_info(name)
        context = ",".join(info.context) or "-"
        print(f"{name:<{width}}  {info.family:<14} {context:<14} {info.summary}")
    print(f"\n{len(names)} losses")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(loss_info(args.name).describe())
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(render_reference())
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"lightning-losses: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
