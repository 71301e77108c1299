"""The documentation site: ``mkdocs build --strict`` passes, the generated loss table lists every
registered loss, every public callback has an API entry, every family with a registered loss has
a page in the navigation, a broken docstring cross-reference fails the strict build, the
formulas parse, and the docstrings' reStructuredText markup becomes Markdown."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs group is not installed (uv sync --group docs)")
pytest.importorskip("mkdocstrings", reason="the docs group is not installed")
pytest.importorskip("material", reason="the docs group is not installed")

from lightning_losses.callbacks import __all__ as PUBLIC_CALLBACKS
from lightning_losses.registry import FAMILIES, list_losses, loss_info

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "docs" / "_hooks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = _mkdocs_build(REPO / "mkdocs.yml", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


def _inventory(site: Path) -> set[str]:
    """Object names of mkdocstrings' Sphinx inventory (objects.inv, version 2)."""
    raw = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = raw.index(b"\n", header_end) + 1
    lines = zlib.decompress(raw[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line}


# -- the full site (one build, about 25 s on 2 busy cores) ----------------------------------


def test_every_registered_loss_is_in_the_generated_table_with_a_link_to_its_api_entry(site):
    page = (site / "losses" / "index.html").read_text()
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S):
        name = re.search(r"<code>([a-z0-9_]+)</code>", row)
        if name:
            rows[name.group(1)] = row
    inventory = _inventory(site)
    for name in list_losses():
        info = loss_info(name)
        assert name in rows, f"{name!r} is missing from the generated loss table"
        link = re.search(r'href="([^"]+)"[^>]*><code>' + name + "</code>", rows[name])
        assert link and "api/" in link.group(1), f"{name!r} has no link to its API entry"
        anchor = link.group(1).split("#", 1)[1]
        assert anchor in inventory
        assert f">{info.family}<" in rows[name] and f"<code>{info.input}</code>" in rows[name]


def test_every_public_callback_has_an_api_entry(site):
    inventory = _inventory(site)
    page = (site / "api" / "callbacks" / "index.html").read_text()
    for name in PUBLIC_CALLBACKS:
        assert f"lightning_losses.callbacks.{name}" in inventory, name
        assert f'id="lightning_losses.callbacks.{name}"' in page, name


def test_docstring_formulas_become_math_and_parse_with_katex(site):
    page = (site / "api" / "losses" / "index.html").read_text()
    # FocalLoss's `.. math::` block, now a displayed formula, and a `:math:` role, now inline.
    assert re.search(r'<div class="arithmatex">\\\[\s*\\ell = -\\alpha_y', page)
    assert '<span class="arithmatex">\\(\\gamma' in page
    assert ".. math::" not in page and ":math:`" not in page

    katex = _module("math_assets").local_katex()
    node = shutil.which("node")
    if katex is None or node is None or not (katex / "katex.js").is_file():
        pytest.skip("needs node and a local KaTeX (Debian libjs-katex or DOCS_KATEX_DIR)")
    formulas = []
    for path in site.rglob("*.html"):
        text = path.read_text()
        for match in re.finditer(r'<(span|div) class="arithmatex">(.*?)</\1>', text, re.S):
            formulas.append([str(path.relative_to(site)), html.unescape(match.group(2)).strip()])
    script = """
const katex = require(process.argv[1]);
const failed = [];
for (const [page, text] of JSON.parse(require("fs").readFileSync(0, "utf8"))) {
  try {
    katex.renderToString(text.slice(2, -2), {displayMode: text.startsWith("\\\\["),
                                             throwOnError: true, strict: false});
  } catch (error) { failed.push(`${page}: ${text.slice(0, 120)}: ${error.message}`); }
}
console.log(JSON.stringify(failed));
"""
    result = subprocess.run(
        [node, "-e", script, str(katex / "katex.js")],
        input=json.dumps(formulas),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert len(formulas) > 500
    assert json.loads(result.stdout) == []


def test_gallery_figures_are_on_the_page_and_small(site):
    figures = sorted((REPO / "docs" / "gallery").glob("*.png"))
    page = (REPO / "docs" / "gallery.md").read_text()
    assert len(figures) >= 5
    for figure in figures:
        assert f"(gallery/{figure.name})" in page, figure.name
        assert figure.stat().st_size < 150 * 1024, figure.name
        assert (site / "gallery" / figure.name).is_file()


@pytest.mark.slow
def test_gallery_script_draws_every_figure(tmp_path):
    script = REPO / "docs" / "_scripts" / "make_gallery.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn == sorted(p.name for p in (REPO / "docs" / "gallery").glob("*.png"))
    assert all(0 < (tmp_path / name).stat().st_size < 150 * 1024 for name in drawn)


# -- navigation and front matter (no build) -------------------------------------------------


def test_every_family_with_a_registered_loss_has_a_page_in_the_nav():
    from mkdocs.config import load_config

    hook = _module("registry_table")
    pages = hook.family_pages(REPO / "docs")
    config = load_config(str(REPO / "mkdocs.yml"))
    nav = set(hook.nav_files(hook.add_family_pages(config["nav"], pages)))
    for family in FAMILIES:
        if not list_losses(family):
            continue
        assert family in pages, (
            f"family {family!r} has registered losses but no page: give its page the front "
            f"matter `families: [{family}]`"
        )
        assert pages[family] in nav, f"{pages[family]} (family {family!r}) is not in the nav"


def test_a_family_page_missing_from_the_nav_joins_the_losses_section():
    hook = _module("registry_table")
    nav = [{"Home": "index.md"}, {"Losses": ["losses/index.md", {"Ref": "losses/reference.md"}]}]
    pages = {"classification": "losses/index.md", "segmentation": "losses/segmentation.md"}
    assert hook.add_family_pages(nav, pages)[1]["Losses"] == [
        "losses/index.md",
        "losses/segmentation.md",
        {"Ref": "losses/reference.md"},
    ]


# -- a broken docstring reference fails the strict build ------------------------------------

DOCSTRING = '''"""A module documented for the test.

See :func:`existing_function` and :class:`~lightning_losses.losses.FocalLoss`{extra}.
"""


def existing_function():
    """Nothing."""
'''


@pytest.mark.parametrize("broken", [False, True])
def test_a_broken_docstring_cross_reference_fails_the_strict_build(tmp_path, broken):
    """A copy of the site's configuration (inherited; mkdocstrings' ``paths: [.]`` is then the
    temporary folder) with one page documenting a small module; with ``broken`` its docstring
    refers to a function that does not exist."""
    shutil.copytree(HOOKS, tmp_path / "docs" / "_hooks")
    extra = ", and :func:`no_such_function`" if broken else ""
    (tmp_path / "documented.py").write_text(DOCSTRING.format(extra=extra))
    (tmp_path / "docs" / "index.md").write_text("# Test\n\n::: documented\n")
    (tmp_path / "mkdocs.yml").write_text(f"INHERIT: {REPO / 'mkdocs.yml'}\nnav:\n  - index.md\n")
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    log = result.stdout + result.stderr
    if broken:
        assert result.returncode != 0
        assert "Could not find cross-reference target 'no_such_function'" in log
    else:
        assert result.returncode == 0, log[-4000:]


# -- the reStructuredText conversion --------------------------------------------------------


def test_rst_blocks_tables_and_argument_lists_become_markdown():
    rst = _module("rst_docstrings")
    text = "Loss.\n\n.. math::\n    \\ell = -\\log p_y\n\nAfter.\n\nExample::\n\n    >>> f(1)\n"
    blocks = rst.convert_blocks(text)
    assert "\n\n$$\n\\ell = -\\log p_y\n$$\n\n" in blocks
    assert "Example:\n\n```python\n>>> f(1)\n```" in blocks
    assert ".. math::" not in blocks and "Example::" not in blocks
    table = "====  =====\n``a``  x | y\n====  =====\n"
    assert "| ``a`` | x \\| y |" in rst.convert_tables(table)
    entries = rst.split_shared_entries(
        "Args:\n    a, b: shared.\n    c,\n        d: wrapped.\n    e: own.\n\nExample:\n    x"
    )
    assert entries.split("\n") == [
        "Args:",
        "    a: shared.",
        "    b: shared.",
        "    c: wrapped.",
        "    d: wrapped.",
        "    e: own.",
        "",
        "Examples:",
        "    x",
    ]
