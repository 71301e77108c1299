"""Backbone names checked before a model is built, with close matches from timm's catalogue."""

from __future__ import annotations

import difflib


def check_timm_backbone(name: str, arg: str = "backbone") -> str:
    """``name`` must be a ``timm.list_models()`` architecture (a ``.tag`` suffix and ``hf-hub:``
    names pass); otherwise a ``ValueError`` names the closest architectures."""
    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"`{arg}` must be a timm model name such as 'resnet18'; got {name!r}.")
    if name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name.split(".", 1)[0]):
        return name
    hint = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    suggestion = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
    raise ValueError(
        f"`{arg}` {name!r} is not a timm architecture.{suggestion} `timm.list_models('*pattern*')` "
        "lists them."
    )
