"""The `lightning-losses` command line."""

from __future__ import annotations

import pytest

from lightning_losses import list_losses
from lightning_losses.cli import main


def test_list_prints_every_loss(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
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
    assert ".. math::" in out
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
