"""End-of-stage reports: a printed table, a JSON file and a reliability diagram per stage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only


def format_table(title: str, metrics: Mapping[str, float]) -> str:
    width = max(len(k) for k in metrics)
    rule = "-" * (width + 14)
    rows = [f"{k:<{width}}  {v:>10.4f}" for k, v in metrics.items()]
    return "\n".join([rule, title, rule, *rows, rule])


@rank_zero_only
def print_report(*lines: str) -> None:
    """Print a report on stdout, once (rank zero): the run's one metrics table goes where its
    result belongs, apart from the log messages on stderr."""
    print("\n".join(lines), flush=True)


def write_report(
    out_dir: str | Path,
    stage: str,
    metrics: Mapping[str, float],
    reliability: Any | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``{stage}_metrics.json`` (and ``{stage}_reliability.png``) to ``out_dir``."""
    from ..calibration import plot_reliability_diagram

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stage}_metrics.json"}
    payload = {"stage": stage, "metrics": dict(metrics), **dict(extra or {})}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if reliability is not None:
        paths["reliability"] = out / f"{stage}_reliability.png"
        plot_reliability_diagram(
            reliability, path=paths["reliability"], title=f"{stage} reliability"
        )
    return paths
