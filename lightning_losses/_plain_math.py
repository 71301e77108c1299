"""Docstring formulas as readable terminal text: ``\\alpha (1 - p)^{\\gamma}`` -> ``α (1 - p)^γ``.

The docstrings carry reStructuredText math (``.. math::`` blocks and ``:math:`` roles) for the
documentation site; ``lightning-losses info`` prints them through :func:`plain_math`, which maps
the LaTeX that the docstrings use to Unicode. It is a reader's aid, not a LaTeX renderer: an
unknown command keeps its name without the backslash.
"""

from __future__ import annotations

import re

_SYMBOLS = {
    # Greek
    "alpha": "α",
    "beta": "β",
    "gamma": "γ",
    "delta": "δ",
    "epsilon": "ε",
    "varepsilon": "ε",
    "zeta": "ζ",
    "eta": "η",
    "theta": "θ",
    "kappa": "κ",
    "lambda": "λ",
    "mu": "μ",
    "nu": "ν",
    "xi": "ξ",
    "pi": "π",
    "rho": "ρ",
    "sigma": "σ",
    "tau": "τ",
    "phi": "φ",
    "varphi": "φ",
    "chi": "χ",
    "psi": "ψ",
    "omega": "ω",
    "Gamma": "Γ",
    "Delta": "Δ",
    "Theta": "Θ",
    "Lambda": "Λ",
    "Sigma": "Σ",
    "Phi": "Φ",
    "Psi": "Ψ",
    "Omega": "Ω",
    "ell": "ℓ",
    # operators and relations
    "sum": "Σ",
    "prod": "Π",
    "int": "∫",
    "cdot": "·",
    "times": "×",
    "le": "≤",
    "leq": "≤",
    "ge": "≥",
    "geq": "≥",
    "ne": "≠",
    "neq": "≠",
    "approx": "≈",
    "in": "∈",
    "notin": "∉",
    "infty": "∞",
    "to": "→",
    "rightarrow": "→",
    "leftarrow": "←",
    "mapsto": "↦",
    "pm": "±",
    "partial": "∂",
    "nabla": "∇",
    "sim": "~",
    "propto": "∝",
    "lfloor": "⌊",
    "rfloor": "⌋",
    "lceil": "⌈",
    "rceil": "⌉",
    "langle": "⟨",
    "rangle": "⟩",
    "|": "‖",
    "star": "*",
    "ldots": "…",
    "cdots": "⋯",
    "forall": "∀",
    "exists": "∃",
    "cap": "∩",
    "cup": "∪",
    "subset": "⊂",
    "setminus": "∖",
    "emptyset": "∅",
    "top": "ᵀ",
    "odot": "⊙",
    # spacing and sizing commands that vanish
    ",": " ",
    ";": " ",
    ":": " ",
    "!": "",
    "quad": "  ",
    "qquad": "    ",
    " ": " ",
    "left": "",
    "right": "",
    "big": "",
    "Big": "",
    "bigg": "",
    "Bigg": "",
    "displaystyle": "",
    "{": "{",
    "}": "}",
    "_": "_",
    "%": "%",
}
_SYMBOLS |= {k: k for k in ("log", "exp", "max", "min", "arg", "sup", "inf", "lim", "tanh")}

_SUPERSCRIPTS = str.maketrans("0123456789+-=()nTi", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿᵀⁱ")
_SUBSCRIPTS = str.maketrans("0123456789+-=()", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎")
_FONT = re.compile(r"\\(?:mathrm|mathbf|mathit|mathcal|mathbb|operatorname|text|textrm|bm)\s*")
_FRAC = re.compile(r"\\[dt]?frac\s*(\{(?:[^{}]|\{[^{}]*\})*\})\s*(\{(?:[^{}]|\{[^{}]*\})*\})")
_SQRT = re.compile(r"\\sqrt\s*(\{(?:[^{}]|\{[^{}]*\})*\})")
_SCRIPT = re.compile(r"([\^_])\{([^{}]*)\}")
_COMMAND = re.compile(r"\\([A-Za-z]+|.)")


def _group(braced: str) -> str:
    inner = braced[1:-1].strip()
    return inner if re.fullmatch(r"[\w.\\]+", inner) else f"({inner})"


def _script(match: re.Match[str]) -> str:
    mark, body = match.groups()
    table = _SUPERSCRIPTS if mark == "^" else _SUBSCRIPTS
    if body and all(c in table for c in map(ord, body)):
        return body.translate(table)
    return mark + (body if len(body) == 1 else "(" + body.strip() + ")")


def latex_to_text(tex: str) -> str:
    """One formula: LaTeX commands mapped to Unicode, fractions as ``(a)/(b)``."""
    text = _FONT.sub("", tex)
    for _ in range(3):  # nested fractions and roots, innermost first
        text = _FRAC.sub(lambda m: f"{_group(m[1])}/{_group(m[2])}", text)
        text = _SQRT.sub(lambda m: f"√{_group(m[1])}", text)
    text = _COMMAND.sub(lambda m: _SYMBOLS.get(m[1], m[1]), text)
    text = _SCRIPT.sub(_script, text)
    text = re.sub(r"\^(\d)", lambda m: m[1].translate(_SUPERSCRIPTS), text)
    text = re.sub(r"(?<=[^\s{(])\{([^{}]*)\}", r"\1", text)  # leftover grouping braces
    text = text.replace("{", "").replace("}", "")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def plain_math(doc: str) -> str:
    """A docstring with its ``:math:`` roles and ``.. math::`` blocks as readable text."""
    doc = re.sub(r":math:`([^`]*)`", lambda m: latex_to_text(m[1]), doc)
    lines, out, i = doc.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith(".. math::"):
            indent = len(line) - len(line.lstrip())
            i += 1
            block = [line.strip()[len(".. math::") :].strip()]  # the formula may start here
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i].strip())
                i += 1
            formula = " ".join(b for b in block if b)
            for part in re.split(r"\\\\", formula):
                out.append(" " * (indent + 4) + latex_to_text(part.replace("&", "")))
            out.append("")
            continue
        out.append(line)
        i += 1
    doc = "\n".join(out)
    doc = re.sub(r":(?:class|func|meth|attr|mod|data):`~?([^`]*)`", lambda m: m[1], doc)
    return re.sub(r"``([^`]*)``", r"\1", doc)
