"""On a terminal: a live table of start-up progress, with the log lines scrolling above it.

Only ``cellserve serve`` draws it, and only when stderr is a terminal and the log format is
text; everyone else gets the same progress as plain log lines (``kernels.py`` logs each seed
cell). The table is redrawn from the notebooks' health bodies, in the event loop, until every
notebook is ready or start-up ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

REFRESH_SECONDS = 0.25

Progress = Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]
"""Yields ``(notebook, health body)`` for every notebook."""


def progress_table(notebooks: Iterable[tuple[str, Mapping[str, Any]]]) -> Table:
    """One row per kernel: notebook, kernel slot, state, seed cell, time in that state."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("notebook", "kernel", "state", "seed cell", "for"):
        table.add_column(column)
    for label, health in notebooks:
        kernels = health.get("stats", {}).get("kernels", [])
        if not kernels:
            table.add_row(label, "", str(health.get("status", "")), "", "")
        for kernel in kernels:
            seed = ""
            if kernel.get("seed_cell") is not None:
                seed = f"{kernel['seed_cell']} of {kernel['seed_cells']}"
            seconds = kernel.get("state_seconds")
            table.add_row(
                label,
                str(kernel["slot"] + 1),
                str(kernel["state"]),
                seed,
                f"{seconds:.0f} s" if seconds is not None else "",
            )
    return table


class _ConsoleStream:
    """A stream for a logging handler that prints above the live display."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def write(self, text: str) -> None:
        self.console.out(text, end="", highlight=False)

    def flush(self) -> None:
        pass


async def show_progress(
    progress: Progress, done: Callable[[], bool], handler: logging.StreamHandler[Any]
) -> None:
    """Draw the table until `done()`; `handler`'s lines print above it meanwhile."""
    console = Console(stderr=True)
    with Live(console=console, auto_refresh=False, transient=True) as live:
        previous = handler.setStream(_ConsoleStream(console))
        try:
            while not done():
                live.update(progress_table(progress()), refresh=True)
                await anyio.sleep(REFRESH_SECONDS)
        finally:
            if previous is not None:
                handler.setStream(previous)
