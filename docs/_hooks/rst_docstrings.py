"""Griffe extension: the docstrings' reStructuredText markup, read as Markdown by mkdocstrings.

The docstrings are Google style (``Args:``, ``Returns:``, ``Example:``) with Sphinx markup inside:
``.. math::`` blocks, ``:math:`` roles, ``.. code-block::`` directives, literal blocks after
``::`` and cross-reference roles (``:class:``, ``:func:``, ``:meth:``, ``:attr:``, ``:mod:``,
``:data:``). mkdocstrings renders Markdown, so this extension rewrites each docstring once, after
the package is loaded and before it is parsed:

- ``.. math::`` blocks become ``$$ ... $$`` blocks and ``:math:`x``` becomes ``\\(x\\)``, both
  picked up by ``pymdownx.arithmatex`` and typeset by KaTeX in the browser;
- ``.. code-block:: lang`` and ``text::`` literal blocks become fenced code blocks, and simple
  tables (columns under ``====  ====`` rules) become Markdown tables;
- a role whose target is an object of the package becomes an autorefs link, resolved the way
  Sphinx does (the object's own scope first, then its parents; a leading ``.`` is relative to
  the module, ``~`` shows the last name only). A target that exists but has no page of its
  own (a private helper) is shown as code. A target in another installed package (``torch``,
  ``matplotlib``) is shown as code too, as there is no inventory to link to offline.
- A target that resolves to nothing is a broken reference: it becomes a plain autorefs link,
  which ``mkdocs build --strict`` reports and fails on.

Two Google-style habits of the docstrings are normalised for griffe's parser as well: an
``Example:`` section title becomes ``Examples:`` (griffe reads only the plural as a section of
doctest examples), and an argument entry naming several parameters (``weight, ignore_index:
...``) becomes one entry per parameter with the same description.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator

import griffe

ROLE = re.compile(r":(?:py:)?(math|class|func|meth|attr|mod|data|obj|exc|const):`([^`]+)`")
DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. (?P<name>math|code-block|code)::\s*(?P<arg>.*)$")
LITERAL_INTRO = re.compile(r"^(?P<indent>\s*)(?P<text>\S.*?)::\s*$")
TABLE_RULE = re.compile(r"^\s*=+(?: +=+)+\s*$")
MATH_ROLE = re.compile(r":math:`[^`]*`")
EXAMPLE_TITLE = re.compile(r"^(?P<indent>\s*)Example:\s*$")
PARAM_SECTION = re.compile(r"^(?P<indent>\s*)(?:Args|Arguments|Parameters|Attributes):\s*$")
WRAPPED_NAMES = re.compile(r"^\s*\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*\s*,\s*$")
SHARED_ENTRY = re.compile(
    r"^(?P<indent>\s*)(?P<names>\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(?P<rest>(?:\s*\([^)]*\))?:(?:\s.*)?)$"
)


class _External(Exception):
    """The target lives in another package."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines indented deeper than ``indent`` from ``start`` on, dedented (blank lines inside
    kept, leading and trailing ones dropped), and the index of the first line after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    body = lines[start:end]
    while body and not body[0].strip():
        body = body[1:]
    depth = min((_indent(ln) for ln in body if ln.strip()), default=indent)
    return [ln[depth:] for ln in body], end


def convert_blocks(text: str) -> str:
    """Directives and ``::`` literal blocks as Markdown fences and ``$$`` math blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        literal = None if directive else LITERAL_INTRO.match(line)
        if literal and literal["text"].startswith(".."):
            literal = None
        if not directive and not literal:
            out.append(line)
            i += 1
            continue
        match = directive or literal
        pad = match["indent"]
        body, i = _block(lines, i + 1, len(pad))
        if directive and directive["name"] == "math":
            formula = [directive["arg"]] if directive["arg"] else []
            formula += [ln for ln in body if ln.strip()]
            out += ["", f"{pad}$$", *(f"{pad}{ln}" for ln in formula), f"{pad}$$", ""]
            continue
        if directive:
            lang = directive["arg"].strip()
        else:
            # "Example::" keeps one colon, as reStructuredText shows it; the block is code.
            out.append(f"{pad}{literal['text']}:")
            lang = "python" if any(ln.lstrip().startswith(">>>") for ln in body) else "text"
        out += ["", f"{pad}```{lang}", *(f"{pad}{ln}" for ln in body), f"{pad}```", ""]
    return "\n".join(out)


def _cell(text: str) -> str:
    """A table cell's text with its pipes escaped for Markdown (``\\vert`` inside math)."""
    text = text.strip()
    pieces, last = [], 0
    for match in MATH_ROLE.finditer(text):
        pieces.append(re.sub(r"(?<!\\)\|", r"\\|", text[last : match.start()]))
        pieces.append(re.sub(r"(?<!\\)\|", r"\\vert ", match.group()))
        last = match.end()
    pieces.append(re.sub(r"(?<!\\)\|", r"\\|", text[last:]))
    return "".join(pieces)


def convert_tables(text: str) -> str:
    """reStructuredText simple tables as Markdown tables (an empty header row when the table
    has none); a row whose first column is blank continues the row above."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not TABLE_RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        pad = lines[i][: _indent(lines[i])]
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        rows: list[list[str]] = []
        header = 0
        i += 1
        while i < len(lines):
            line = lines[i]
            i += 1
            if TABLE_RULE.match(line):
                if i == len(lines) or not lines[i].strip():
                    break
                header = len(rows)
                continue
            if not line.strip():
                continue
            cells = [line[a:b] for a, b in zip(starts, [*starts[1:], len(line)], strict=True)]
            if rows and not cells[0].strip():
                pairs = zip(rows[-1], cells, strict=True)
                rows[-1] = [f"{old} {new.strip()}".strip() for old, new in pairs]
            else:
                rows.append([c.strip() for c in cells])
        head = rows[:header] or [[""] * len(starts)]
        body = rows[header:] if header else rows
        head_line = " | ".join(" ".join(col).strip() for col in zip(*head, strict=True))
        out += ["", f"{pad}| {head_line} |", f"{pad}|{'---|' * len(starts)}"]
        out += [f"{pad}| {' | '.join(_cell(c) for c in row)} |" for row in body]
        out.append("")
    return "\n".join(out)


def split_shared_entries(text: str) -> str:
    """``Example:`` titles as ``Examples:``; ``a, b: text`` argument entries as one per name."""
    lines = text.splitlines()
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        title = EXAMPLE_TITLE.match(line)
        if title:
            out.append(f"{title['indent']}Examples:")
            i += 1
            continue
        section = PARAM_SECTION.match(line)
        if section:
            section_indent = len(section["indent"])
            out.append(line)
            i += 1
            continue
        if section_indent is not None and WRAPPED_NAMES.match(line) and i + 1 < len(lines):
            # "a, b,\n    c: text": the names of a shared entry wrapped over two lines.
            line = f"{line.rstrip()} {lines[i + 1].strip()}"
            i += 1
        entry = SHARED_ENTRY.match(line) if section_indent is not None else None
        if not entry:
            out.append(line)
            i += 1
            continue
        body, i = _block(lines, i + 1, len(entry["indent"]))
        pad = entry["indent"] + " " * 4
        for name in re.split(r"\s*,\s*", entry["names"]):
            out.append(f"{entry['indent']}{name}{entry['rest']}")
            out += [f"{pad}{ln}" if ln.strip() else "" for ln in body]
    return "\n".join(out)


def _scopes(obj: griffe.Object) -> Iterator[griffe.Object]:
    scope: griffe.Object | None = obj
    while scope is not None:
        yield scope
        scope = scope.parent


def _lookup(collection: griffe.ModulesCollection, path: str) -> str | None:
    """The canonical path of the object at ``path``, None when there is none; raises
    :class:`_External` when ``path`` goes through an import from another package."""
    try:
        found = collection[path]
    except KeyError:
        return None
    except (griffe.AliasResolutionError, griffe.CyclicAliasError) as error:
        raise _External(path) from error
    try:
        return found.canonical_path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError) as error:
        raise _External(path) from error


def resolve(obj: griffe.Object, target: str) -> str | None:
    """The canonical path that ``target`` names, seen from ``obj``; None when it names nothing;
    raises :class:`_External` for an object of another package."""
    collection = obj.modules_collection
    if target.startswith("."):
        name = target.lstrip(".")
        candidates = [f"{scope.path}.{name}" for scope in _scopes(obj.module)]
    else:
        candidates = [f"{scope.path}.{target}" for scope in _scopes(obj)] + [target]
    for path in candidates:
        found = _lookup(collection, path)
        if found is not None:
            return found
    head = target.lstrip(".").split(".", 1)[0]
    if head != obj.package.name and importlib.util.find_spec(head) is not None:
        raise _External(target)
    return None


def convert_roles(obj: griffe.Object, text: str) -> str:
    """Sphinx roles as KaTeX math, autorefs links or code."""

    def replace(match: re.Match[str]) -> str:
        role, target = match.groups()
        # A role may be wrapped over two lines: a name loses the break, a formula keeps a space.
        target = re.sub(r"\s+", " " if role == "math" else "", target)
        if role == "math":
            return f"\\({target}\\)"
        short = target.startswith("~")
        target = target.lstrip("~")
        shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        code = f"<code>{shown}</code>"
        try:
            path = resolve(obj, target)
        except _External:
            return f"`{shown}`"
        if path is None:
            return f"[{code}][{target}]"
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    return ROLE.sub(replace, text)


def convert(obj: griffe.Object, text: str) -> str:
    """A reStructuredText-flavoured docstring as Markdown."""
    return convert_roles(obj, convert_blocks(convert_tables(split_shared_entries(text))))


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)
