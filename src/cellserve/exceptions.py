"""Errors raised by cellserve.

CellserveError
├── NotebookError        the notebook cannot be turned into an API (names file and cell)
├── SeedError            a seed cell raised while a kernel was being prepared
├── KernelError          a kernel could not be started or stopped answering
│   └── KernelDied       the kernel process exited mid-request
│       └── KernelOutOfMemory  a cell failed an allocation under --kernel-memory-limit
├── RequestFailed        the pool could not run a request (every failure leaving the pool)
│   ├── Unavailable      no kernel can take it now: 503 with Retry-After
│   └── ExecutionTimeout the cell ran past its timeout and was interrupted: 504
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


class RequestFailed(CellserveError):
    """A request could not be run; the message names the notebook and the route."""

    status = 500


class Unavailable(RequestFailed):
    """No kernel can take the request now; answered with 503 and Retry-After."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExecutionTimeout(RequestFailed):
    """The cell ran past its timeout and was interrupted; answered with 504."""

    status = 504


class KernelOutOfMemory(KernelDied):
    """A memory-limited kernel failed an allocation; it is replaced like a dead kernel."""


class SettingsError(CellserveError):
    """An option or environment variable has a value cellserve cannot use."""
