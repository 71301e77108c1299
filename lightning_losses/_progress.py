"""A progress bar with the elapsed and the remaining time, drawn by the library Lightning uses.

Lightning draws its own bars with rich when rich is installed (``RichProgressBar``) and with
tqdm otherwise (``TQDMProgressBar``; tqdm is one of Lightning's dependencies). Long work outside
the training loop, such as ``LossLandscape``'s analysis and the benchmark scripts, draws its bar
the same way, so no dependency is added and the output looks like the trainer's. Both libraries
are imported only when a bar is drawn.

The time left is the library's own estimate: the remaining units of work divided by the recent
rate. It is only as good as the units are even, so a caller whose steps differ in cost advances
the bar by a weight per step (see ``LossLandscape``), and one whose plan changes on the way (an
iteration that stops early) corrects :attr:`ProgressBar.total`.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import Any, TextIO

__all__ = ["BACKENDS", "ProgressBar", "default_backend", "trainer_progress_bar"]

BACKENDS = ("tqdm", "rich")

# percentage, bar, elapsed < remaining; the counts are added when they mean something
_TQDM_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
_TQDM_FORMAT_COUNTS = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]"
)


def default_backend() -> str:
    """``"rich"`` when rich is installed, else ``"tqdm"``: Lightning's own choice of bar."""
    return "rich" if importlib.util.find_spec("rich") is not None else "tqdm"


class ProgressBar:
    """A bar over ``total`` units of work, with the elapsed time and the time left.

    Args:
        total: the units of work (> 0); may be corrected later through :attr:`total`.
        description: the text in front of the bar; change it with :meth:`set_description`.
        enabled: ``False`` draws nothing and makes every method a no-op (except :meth:`write`,
            which still prints).
        backend: ``"tqdm"``, ``"rich"`` or ``None`` (:func:`default_backend`).
        unit: name of a unit of work; when given, the bar also shows ``done/total unit``
            (leave it ``None`` when the units are weights that mean nothing to a reader).
        leave: keep the finished bar on screen; ``None`` keeps it unless it is drawn below
            another bar (tqdm's rule; rich keeps it unless ``leave=False``).
        file: where to draw (default ``sys.stdout``, where Lightning draws its bars).
        host: a running ``rich.progress.Progress`` to add the task to when a second live
            display cannot be started next to it (rich before version 14).

    With rich, the bar redraws itself at most ten times a second: a display nested in, or added
    to, Lightning's is otherwise redrawn only on Lightning's own hooks.

    Example:
        >>> with ProgressBar(3, "runs", enabled=False) as bar:
        ...     for _ in range(3):
        ...         bar.advance()
        >>> bar.completed
        3
    """

    def __init__(
        self,
        total: float,
        description: str = "",
        *,
        enabled: bool = True,
        backend: str | None = None,
        unit: str | None = None,
        leave: bool | None = None,
        file: TextIO | None = None,
        host: Any = None,
    ) -> None:
        if not total > 0:
            raise ValueError(f"`total` must be > 0 units of work; got {total!r}.")
        backend = default_backend() if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS} or None; got {backend!r}.")
        self.enabled = bool(enabled)
        self.backend = backend
        self.completed: float = 0
        self._total: float = total
        self._file = file
        self._tqdm: Any = None
        self._rich: Any = None
        self._rich_owned = False
        self._task: Any = None
        self._drawn = 0.0
        if not self.enabled:
            return
        if backend == "tqdm":
            self._open_tqdm(description, unit, leave)
        else:
            self._open_rich(description, unit, leave, host)

    # -- drawing ------------------------------------------------------------------------------
    def _open_tqdm(self, description: str, unit: str | None, leave: bool | None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm(
            total=self._total,
            desc=description,
            unit=unit or "it",
            bar_format=_TQDM_FORMAT if unit is None else _TQDM_FORMAT_COUNTS,
            leave=leave,
            dynamic_ncols=True,
            file=self._file if self._file is not None else sys.stdout,
        )

    def _open_rich(self, description: str, unit: str | None, leave: bool | None, host: Any) -> None:
        from rich.console import Console
        from rich.errors import LiveError
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
        if unit is not None:
            columns += [MofNCompleteColumn(), TextColumn(unit)]
        columns += [TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn()]
        console = Console(file=self._file) if self._file is not None else None
        progress = Progress(*columns, console=console, transient=leave is False)
        try:
            progress.start()
        except LiveError:  # rich < 14 allows one live display: join the running one
            if host is None:
                raise
            progress, self._rich_owned = host, False
        else:
            self._rich_owned = True
        self._rich = progress
        self._task = progress.add_task(description, total=self._total)

    # -- state --------------------------------------------------------------------------------
    @property
    def total(self) -> float:
        """The units of work of the whole bar; set it to correct the plan on the way."""
        return self._total

    @total.setter
    def total(self, value: float) -> None:
        self._total = max(value, self.completed, 1e-12)
        if self._tqdm is not None:
            self._tqdm.total = self._total
            self._tqdm.refresh()
        elif self._rich is not None:
            self._rich.update(self._task, total=self._total)
            self._redraw()

    def _redraw(self) -> None:
        now = time.monotonic()
        if now - self._drawn >= 0.1:
            self._drawn = now
            self._rich.refresh()

    def advance(self, amount: float = 1) -> None:
        """``amount`` more units done."""
        self.completed += amount
        if self._tqdm is not None:
            self._tqdm.update(amount)
        elif self._rich is not None:
            self._rich.update(self._task, advance=amount)
            self._redraw()

    def set_description(self, description: str) -> None:
        if self._tqdm is not None:
            self._tqdm.set_description_str(description)
        elif self._rich is not None:
            self._rich.update(self._task, description=description)
            self._redraw()

    def write(self, text: str) -> None:
        """Print a line above the bar without breaking it (a plain print when disabled)."""
        if self._tqdm is not None:
            self._tqdm.write(text, file=self._tqdm.fp)
        elif self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self._file if self._file is not None else sys.stdout, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._rich is not None:
            if self._rich_owned:
                self._rich.stop()
            else:
                self._rich.remove_task(self._task)
                self._rich.refresh()
            self._rich = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trainer_progress_bar(
    trainer: Any, total: float, description: str, **kwargs: Any
) -> ProgressBar:
    """A bar drawn like the trainer's own: on when the trainer shows a progress bar on this
    process (``enable_progress_bar=True`` and rank zero), with rich when the trainer's bar is
    Lightning's ``RichProgressBar``, else with tqdm. ``kwargs`` go to :class:`ProgressBar`."""
    bar = getattr(trainer, "progress_bar_callback", None)
    enabled = (
        bar is not None
        and bool(getattr(bar, "is_enabled", True))
        and bool(getattr(trainer, "is_global_zero", True))
    )
    backend, host = "tqdm", None
    if enabled:
        from lightning.pytorch.callbacks import RichProgressBar

        if isinstance(bar, RichProgressBar):
            backend, host = "rich", bar.progress
    return ProgressBar(total, description, enabled=enabled, backend=backend, host=host, **kwargs)
