"""Graceful shutdown: drain, leaving a load balancer's rotation before closing the door.

(``draining.py`` is another thing: it drains unread request *bodies*.)

On SIGTERM (or SIGINT) ``cellserve serve``:

1. answers ``/_cellserve/ready`` with 503 at once, so health-checking load balancers and
   Kubernetes endpoints take this server out of rotation;
2. keeps serving for ``--drain-delay`` seconds, answering with ``Connection: close`` so that
   clients and proxies do not keep connections to a server that is going away;
3. then lets hypercorn stop accepting; running and queued requests get the shutdown grace
   (``CELLSERVE_SHUTDOWN_GRACE``) to finish, and then the kernels stop.

A second signal ends the delay at once. The drain belongs to the command line: an app served
by plain hypercorn, or mounted elsewhere, stops the way its server stops it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("cellserve.shutdown")

_SCOPE_KEY = "cellserve.draining"
_POLL_SECONDS = 0.1


class Drain:
    """Whether this server is draining; once begun it never ends (the process is stopping).

    `shared`, when given, is read too: a worker drains as soon as its parent asks, without
    waiting for the worker's own event loop to notice.
    """

    def __init__(self, shared: Callable[[], bool] | None = None) -> None:
        self._begun = False
        self._shared = shared
        self.signal: int | None = None
        """The signal that began the drain, if one did."""

    @property
    def begun(self) -> bool:
        if not self._begun and self._shared is not None and self._shared():
            self._begun = True
        return self._begun

    def begin(self) -> None:
        self._begun = True


async def stop_after_drain(
    drain: Drain,
    delay: float,
    signals: tuple[signal.Signals, ...],
    *,
    stop_requested: Callable[[], bool] | None = None,
    hurry_requested: Callable[[], bool] | None = None,
) -> None:
    """hypercorn's shutdown trigger: return `delay` seconds after a stop was asked for.

    A stop is one of `signals`, or `stop_requested()` turning true; a second signal, or
    `hurry_requested()` turning true, ends the delay early. (The callables are polled: a
    worker's parent asks through shared memory, which has nothing to await.)
    """
    asked = asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        drain.begin()  # /ready turns 503 before any request is read after the signal
        drain.signal = drain.signal or number
        (hurry if asked.is_set() else asked).set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    await _until(asked, stop_requested)
    drain.begin()
    asked.set()  # from now on, a signal cuts the delay short
    if delay > 0:
        logger.info("draining: /ready answers 503; serving for %g s more", delay)
        with anyio.move_on_after(delay):
            await _until(hurry, hurry_requested)
    logger.info("stopping: finishing requests, then shutting kernels down")


async def _until(event: asyncio.Event, polled: Callable[[], bool] | None) -> None:
    if polled is None:
        await event.wait()
        return
    while not (event.is_set() or polled()):  # noqa: ASYNC110
        await anyio.sleep(_POLL_SECONDS)


class DrainMiddleware:
    """While draining: mark each request's scope (so ``/_cellserve/ready`` answers 503, after
    auth and inside the access log like any answer) and close each connection after its
    response."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.begun:
            await self.app(scope, receive, send)
        else:
            await self.app({**scope, _SCOPE_KEY: True}, receive, _closing(send))


def draining(scope: Scope) -> bool:
    """Whether the server answering this request is draining (see ``DrainMiddleware``)."""
    return bool(scope.get(_SCOPE_KEY, False))


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing
