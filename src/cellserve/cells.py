"""What a request asks of a kernel and what the kernel gives back, as plain values.

``kernels.py`` turns Jupyter messages into these at the boundary; ``response.py`` and
``streaming.py`` turn them into HTTP. Nothing here knows about Jupyter or HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

StdoutSink = Callable[[str], Awaitable[None]]
"""Receives stdout text as a streaming cell prints it."""


@dataclass(frozen=True)
class CellCall:
    """One request for one kernel: the route's code and the ``REQUEST`` string."""

    source: str
    request_json: str
    response_info: str | None = None
    stream: bool = False
    route: str = ""
    """The route's label (``GET /users/:id``), for messages."""
    variable: str = "REQUEST"
    """The global the request string is bound to; ``REQUESTS`` (a JSON list) for a batch."""
    seal: Callable[[], CellCall] | None = None
    """A batch still taking requests: closes it and returns the call to send. The kernel that
    takes the call calls it, so a batch holds exactly what was queued when a kernel freed."""


@dataclass(frozen=True)
class PendingCall:
    """A call handed to a kernel: `msg_id` is set when it already went out (fast path)."""

    call: CellCall
    key: str
    msg_id: str | None


@dataclass(frozen=True)
class CellError:
    ename: str
    evalue: str
    traceback: str = ""

    @property
    def summary(self) -> str:
        """Kernel Gateway's one-line error text (its trailing space included)."""
        return f"Error {self.ename}: {self.evalue} "


@dataclass(frozen=True)
class CellOutput:
    """What one cell produced, in the terms Kernel Gateway chooses a response from."""

    stdout: str = ""
    truncated: bool = False
    result: Mapping[str, Any] | None = None
    displays: tuple[Mapping[str, Any], ...] = ()
    error: CellError | None = None


@dataclass(frozen=True)
class CellOutcome:
    """The route cell's output, and the ResponseInfo cell's when the route has one."""

    cell: CellOutput
    response_info: CellOutput | None = None
    kernel_exiting: bool = False
    """The cell asked the kernel to exit (``exit()``): it must not take another request."""
