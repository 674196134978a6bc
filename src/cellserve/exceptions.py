"""Errors raised by cellserve.

CellserveError
├── NotebookError        the notebook cannot be turned into an API (names file and cell)
├── SeedError            a seed cell raised while a kernel was being prepared
├── KernelError          a kernel could not be started or stopped answering
│   └── KernelDied       the kernel process exited mid-request
└── SettingsError        an option or environment variable has a bad value
"""

from __future__ import annotations


class CellserveError(Exception):
    """Root of every error cellserve raises on purpose."""


class NotebookError(CellserveError):
    """The notebook is unreadable or its annotations are wrong; `problems` lists every one."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)

    @classmethod
    def of(cls, problems: list[str]) -> NotebookError:
        """One error for several problems: the first, and how many more `check` would list."""
        first = problems[0]
        if len(problems) > 1:
            first += f" (and {len(problems) - 1} more; `cellserve check` lists them all)"
        return cls(first, problems=tuple(problems))


class SeedError(CellserveError):
    """A seed cell failed; `cell_index` is its 1-based cell number, as shown in messages."""

    def __init__(self, message: str, *, cell_index: int, traceback: str) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.traceback = traceback


class KernelError(CellserveError):
    """A kernel could not be started, or stopped answering."""


class KernelDied(KernelError):
    """The kernel process exited while it was running a request."""


class SettingsError(CellserveError):
    """An option or environment variable has a value cellserve cannot use."""
