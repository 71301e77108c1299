"""The loss registry: ``build_loss``, ``list_losses``, ``loss_info``.

A loss class joins the registry with :func:`register_loss`. Its metadata (family, input kind,
target kind, context it needs, paper) lives next to the code: the kinds and the context come from
class attributes of :class:`~lightning_losses.losses.Loss`, so they cannot drift apart. The CLI, the
docs and the conformance tests all read the registry.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._checks import check_choice, closest

FAMILIES = (
    "classification",
    "imbalance",
    "calibration",
    "dro",
    "distillation",
    "segmentation",
    "topology",
    "metric",
    "diffusion",
)


@dataclass(frozen=True)
class LossInfo:
    """What the registry knows about one loss."""

    name: str
    cls: type[nn.Module]
    family: str
    paper: str
    input: str
    target: str
    context: tuple[str, ...]
    per_sample: bool

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.split("\n\n", 1)[0].replace("\n", " ")

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.cls) or ""

    def defaults(self) -> dict[str, Any]:
        """Constructor arguments and their defaults."""
        sig = inspect.signature(self.cls.__init__)
        return {
            p.name: p.default
            for p in list(sig.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def describe(self, plain: bool = False) -> str:
        """A multi-line text card: summary, formula docstring, defaults, reference.

        ``plain=True`` renders the docstring's LaTeX as readable Unicode text (the terminal's
        ``lightning-losses info``); the default keeps it for the documentation site.
        """
        doc = self.doc
        if plain:
            from ._plain_math import plain_math

            doc = plain_math(doc)
        lines = [
            f"{self.name}  ({self.cls.__module__}.{self.cls.__qualname__})",
            f"family: {self.family}   input: {self.input}   target: {self.target}   "
            f"context: {', '.join(self.context) or '-'}   per-sample: {self.per_sample}",
            "",
            textwrap.indent(doc, "  "),
            "",
            "defaults:",
            *(f"  {k} = {v!r}" for k, v in self.defaults().items()),
            "",
            f"reference: {self.paper}",
        ]
        return "\n".join(lines)


_REGISTRY: dict[str, LossInfo] = {}


def register_loss(name: str, *, family: str, paper: str):
    """Class decorator that registers a :class:`~lightning_losses.losses.Loss` under ``name``."""
    check_choice(family, FAMILIES, "family")

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"loss name {name!r} is already registered by {_REGISTRY[name].cls}.")
        _REGISTRY[name] = LossInfo(
            name=name,
            cls=cls,
            family=family,
            paper=paper,
            input=cls.input_kind,
            target=cls.target_kind,
            context=tuple(cls.context),
            per_sample=True,
        )
        cls.registered_name = name
        return cls

    return wrap


def _populate() -> None:
    from . import losses  # noqa: F401  (importing the families fills the registry)


def list_losses(family: str | None = None) -> list[str]:
    """Registered loss names, sorted; only those of ``family`` when given."""
    _populate()
    if family is not None:
        check_choice(family, FAMILIES, "family")
    return sorted(n for n, info in _REGISTRY.items() if family in (None, info.family))


def loss_info(name: str, family: str | None = None) -> LossInfo:
    """Metadata of a registered loss; an unknown name gets the closest names as suggestions.

    With ``family``, the name must belong to that family, and suggestions come from it only.
    """
    _populate()
    if not isinstance(name, str):
        raise TypeError(
            f"a loss name must be a string such as 'focal' (`lightning-losses list` shows all); "
            f"got {name!r} of type {type(name).__name__}."
        )
    if family is not None:
        check_choice(family, FAMILIES, "family")
        names = list_losses(family)
        if name not in names:
            hint = closest(name, names)
            suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
            other = f" ({name!r} is a {_REGISTRY[name].family} loss)" if name in _REGISTRY else ""
            raise ValueError(
                f"unknown {family} loss name {name!r}{other}.{suggestion} The {family} losses "
                f"are: {', '.join(names)}."
            )
    if name not in _REGISTRY:
        hint = closest(name, _REGISTRY)
        suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
        raise ValueError(
            f"unknown loss name {name!r}.{suggestion} `lightning-losses list` shows all "
            f"{len(_REGISTRY)} registered losses."
        )
    return _REGISTRY[name]


def render_reference() -> str:
    """The loss reference in Markdown, made from the registry: one card per loss, by family.

    Each card is :meth:`LossInfo.describe`: the docstring with its formula, the defaults read
    from the constructor and the reference, so the documentation cannot drift from the code.
    """
    lines = [
        "# Loss reference",
        "",
        "Generated from the docstrings by `lightning-losses reference > docs/losses/reference.md`;",
        "do not edit by hand. The family pages next to this file explain the choices.",
    ]
    for family in FAMILIES:
        names = list_losses(family)
        if not names:
            continue
        lines += ["", f"## {family}"]
        for name in names:
            info = loss_info(name)
            lines += ["", f"### `{name}`", "", info.summary, "", "```text", info.describe(), "```"]
    return "\n".join(lines) + "\n"


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered loss ``name`` with constructor arguments ``kwargs``.

    Example:
        >>> loss = build_loss("focal", gamma=2.0)
    """
    info = loss_info(name)
    accepted = info.defaults()
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        parts = []
        for k in unknown:
            hint = closest(k, accepted)
            parts.append(f"{k!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        raise TypeError(
            f"loss {name!r} got unknown option(s) {', '.join(parts)}; it accepts "
            f"{', '.join(accepted)}."
        )
    return info.cls(**kwargs)
