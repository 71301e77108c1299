"""MkDocs hook: the table of registered losses, generated from the registry at build time.

A page that contains the marker line ``<!-- registry:loss-table -->`` gets it replaced by one
row per registered loss: its name, linked to its API entry (an autorefs link, so a registered
loss without an API entry fails ``mkdocs build --strict``), its family, linked to the family's
page, the input and target kinds, the context it needs and its reference. A newly registered
loss appears without anyone editing a page.

A family's page is the page whose front matter lists the family, e.g.
``families: [dro]``; :func:`family_pages` finds them (the docs tests use it too). A family page
that the ``nav`` of mkdocs.yml does not list yet is added to its "Losses" section, before the
loss reference, so a new family's page needs only its front matter to appear.

The marker ``<!-- registry:loss-modules -->`` (on the losses API page) becomes one
mkdocstrings directive per module or subpackage of ``lightning_losses.losses`` that holds
registered losses the package itself does not export (a new family's subpackage, say), so their
API entries exist as soon as they are registered.
"""

from __future__ import annotations

import importlib
import posixpath
from pathlib import Path

from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page
from mkdocs.utils.meta import get_data

MARKER = "<!-- registry:loss-table -->"
MODULES_MARKER = "<!-- registry:loss-modules -->"
LOSSES_PACKAGE = "lightning_losses.losses"

_family_pages: dict[str, str] = {}


def family_pages(docs_dir: str | Path) -> dict[str, str]:
    """Family name -> source path (relative to ``docs_dir``) of the page that documents it."""
    pages: dict[str, str] = {}
    root = Path(docs_dir)
    for path in sorted(root.rglob("*.md")):
        _, meta = get_data(path.read_text(encoding="utf-8"))
        families = meta.get("families") or []
        for family in [families] if isinstance(families, str) else families:
            pages.setdefault(str(family), path.relative_to(root).as_posix())
    return pages


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def loss_table(page_uri: str) -> str:
    """The Markdown table of every registered loss, with links relative to ``page_uri``."""
    from lightning_losses.registry import FAMILIES, list_losses, loss_info

    here = posixpath.dirname(page_uri)
    families = [f for f in FAMILIES if list_losses(f)]
    total = sum(len(list_losses(f)) for f in families)
    lines = [
        f"{total} losses in {len(families)} families, read from the registry when the site is "
        "built. The name links to the API entry, the family to its page.",
        "",
        '<div class="loss-table" markdown>',
        "",
        "| name | family | input | target | context | reference |",
        "|---|---|---|---|---|---|",
    ]
    for family in families:
        page = _family_pages.get(family)
        family_cell = f"[{family}]({posixpath.relpath(page, here)})" if page else family
        for name in list_losses(family):
            info = loss_info(name)
            api = f"{info.cls.__module__}.{info.cls.__qualname__}"
            context = ", ".join(f"`{c}`" for c in info.context) or "–"
            lines.append(
                f"| [`{name}`][{api}] | {family_cell} | `{info.input}` | `{info.target}` | "
                f"{context} | {_cell(info.paper)} |"
            )
    lines += ["", "</div>"]
    return "\n".join(lines)


def exporting_module(cls: type) -> str:
    """The shallowest module under ``lightning_losses.losses`` that lists ``cls`` in its
    ``__all__`` (where its API entry is rendered), else the module that defines it."""
    parts = cls.__module__.split(".")
    for depth in range(len(LOSSES_PACKAGE.split(".")), len(parts) + 1):
        name = ".".join(parts[:depth])
        if cls.__name__ in getattr(importlib.import_module(name), "__all__", ()):
            return name
    return cls.__module__


def loss_module_directives() -> str:
    """``::: module`` directives for the modules that render registered losses not exported by
    ``lightning_losses.losses``."""
    from lightning_losses.registry import list_losses, loss_info

    modules = sorted({exporting_module(loss_info(n).cls) for n in list_losses()})
    blocks = [
        f"::: {name}\n    options:\n      show_root_heading: true\n      heading_level: 2"
        for name in modules
        if name != LOSSES_PACKAGE
    ]
    return "\n\n".join(blocks)


def nav_files(nav: list) -> list[str]:
    """Every page path listed in a ``nav`` (nested sections included)."""
    paths = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        paths += nav_files(value) if isinstance(value, list) else [value]
    return paths


def add_family_pages(nav: list, pages: dict[str, str], section: str = "Losses") -> list:
    """``nav`` with every page of ``pages`` it lacks inserted into ``section`` (before the loss
    reference when the section lists it, else at its end)."""
    listed = set(nav_files(nav))
    missing = [page for page in dict.fromkeys(pages.values()) if page not in listed]
    for item in nav:
        if missing and isinstance(item, dict) and isinstance(item.get(section), list):
            entries = item[section]
            at = next(
                (i for i, e in enumerate(entries) if nav_files([e]) == ["losses/reference.md"]),
                len(entries),
            )
            entries[at:at] = missing
    return nav


def on_files(files: Files, config, **kwargs) -> Files:
    _family_pages.clear()
    _family_pages.update(family_pages(config["docs_dir"]))
    if config["nav"]:
        add_family_pages(config["nav"], _family_pages)
    return files


def on_page_markdown(markdown: str, page: Page, config, files: Files, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, loss_table(page.file.src_uri))
    if MODULES_MARKER in markdown:
        markdown = markdown.replace(MODULES_MARKER, loss_module_directives())
    return markdown
