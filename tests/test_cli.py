"""The `lightning-losses` command line."""

from __future__ import annotations

import pytest

from lightning_losses import list_losses
from lightning_losses.cli import main


def test_list_prints_every_loss(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["name", "family", "context", "summary"]
    assert ":math:" not in out
    for name in list_losses():
        assert f"\n{name} " in f"\n{out}"
    assert f"{len(list_losses())} losses" in out


def test_list_filters_by_family(capsys):
    assert main(["list", "--family", "imbalance"]) == 0
    out = capsys.readouterr().out
    assert "ldam" in out and "squentropy" not in out


def test_info_shows_formula_defaults_and_reference(capsys):
    assert main(["info", "ldam"]) == 0
    out = capsys.readouterr().out
    # the formula as readable text, not LaTeX
    assert ".. math::" not in out and ":math:" not in out and "\\" not in out
    assert "Δ_c = C/(n_c^(1/4))" in out
    assert "max_margin = 0.5" in out
    assert "reference: Cao et al." in out
    assert "context: counts, epoch" in out


def test_unknown_name_suggests_close_names(capsys):
    assert main(["info", "focl"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss name 'focl'" in err and "'focal'" in err


def test_unknown_family_is_refused():
    with pytest.raises(SystemExit):
        main(["list", "--family", "segmentatoin"])


def test_committed_reference_is_generated_from_the_docstrings():
    from pathlib import Path

    from lightning_losses.registry import render_reference

    committed = Path(__file__).parents[1] / "docs" / "losses" / "reference.md"
    assert committed.read_text() == render_reference(), (
        "docs/losses/reference.md is stale: run `lightning-losses reference > "
        "docs/losses/reference.md`"
    )


@pytest.mark.parametrize(
    ("tex", "text"),
    [
        (r"-\alpha_y\, (1 - p_y)^{\gamma} \log p_y", "-α_y (1 - p_y)^γ log p_y"),
        (r"\frac{1}{K-1} \sum_{j \ne y} z_j^2", "1/(K-1) Σ_(j ≠ y) z_j²"),
        (r"\mathrm{logsumexp}_k z_k", "logsumexp_k z_k"),
        (r"\sqrt{\sigma^2 + \sigma_d^2}", "√(σ² + σ_d²)"),
    ],
)
def test_latex_becomes_readable_text(tex, text):
    from lightning_losses._plain_math import latex_to_text

    assert latex_to_text(tex) == text


def test_every_registered_docstring_renders_without_latex():
    from lightning_losses import loss_info
    from lightning_losses._plain_math import plain_math

    for name in list_losses():
        plain = plain_math(loss_info(name).doc)
        assert ":math:" not in plain and ".. math::" not in plain, name
        assert "\\frac" not in plain and "\\alpha" not in plain, name
