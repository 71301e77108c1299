"""MkDocs hook: KaTeX for the formulas, from the site itself when KaTeX is installed locally.

Formulas reach the HTML through ``pymdownx.arithmatex`` (generic mode) and are typeset in the
browser by ``docs/javascripts/katex.js``. KaTeX itself comes from the first of:

1. the directory in the environment variable ``DOCS_KATEX_DIR`` (a KaTeX ``dist`` folder, e.g.
   ``node_modules/katex/dist``);
2. Debian's ``libjs-katex`` package, ``/usr/share/javascript/katex``;

copied into the built site under ``assets/katex/``, so the site renders formulas with no
network. With neither, the pages load KaTeX from the jsDelivr CDN (formulas then need a
connection when the page is viewed; the build itself never does).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

KATEX_CDN = "https://cdn.jsdelivr.net/npm/katex@0.16.11/dist"
LOCAL_DIR = "assets/katex"
DEBIAN_KATEX = "/usr/share/javascript/katex"
FILES = ("katex.min.css", "katex.min.js")

_source: Path | None = None


def local_katex() -> Path | None:
    """The local KaTeX directory to copy into the site, or None to use the CDN."""
    for candidate in (os.environ.get("DOCS_KATEX_DIR"), DEBIAN_KATEX):
        if candidate and all((Path(candidate) / name).is_file() for name in FILES):
            return Path(candidate)
    return None


def on_config(config, **kwargs):
    global _source
    _source = local_katex()
    base = LOCAL_DIR if _source is not None else KATEX_CDN
    config.extra_css.insert(0, f"{base}/katex.min.css")
    config.extra_javascript[:0] = [f"{base}/katex.min.js", "javascripts/katex.js"]
    return config


def on_post_build(config, **kwargs) -> None:
    if _source is None:
        return
    target = Path(config["site_dir"]) / LOCAL_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(_source / name, target / name)
    if (_source / "fonts").is_dir():
        shutil.copytree(_source / "fonts", target / "fonts", dirs_exist_ok=True)
