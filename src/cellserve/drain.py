"""Graceful drain: leave a load balancer's rotation before closing the door.

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
import json
import logging
import signal
from collections.abc import Callable

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellserve.routing import ADMIN_PREFIX

logger = logging.getLogger("cellserve.drain")

_READY_SUFFIX = f"{ADMIN_PREFIX}/ready"
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
) -> None:
    """hypercorn's shutdown trigger: return `delay` seconds after a stop was asked for.

    A stop is one of `signals`, or `stop_requested()` turning true (polled: used for a
    worker's parent, whose request is shared memory with nothing to await).
    """
    asked = asyncio.Event()
    hurry = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        drain.begin()  # /ready turns 503 before any request is read after the signal
        drain.signal = drain.signal or number
        if asked.is_set():
            hurry.set()
        asked.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    if stop_requested is None:
        await asked.wait()
    else:
        while not (asked.is_set() or stop_requested()):  # noqa: ASYNC110
            await anyio.sleep(_POLL_SECONDS)
        drain.begin()
    if delay > 0:
        logger.info("draining: /ready answers 503; serving for %g s more", delay)
        with anyio.move_on_after(delay):
            await hurry.wait()
    logger.info("stopping: finishing requests, then shutting kernels down")


class DrainMiddleware:
    """While draining: ``/_cellserve/ready`` answers 503, other answers close their connection.

    The ready endpoint still runs (so auth still applies); only a 200 becomes a 503, with
    ``"status": "draining"`` in its body.
    """

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.begun:
            await self.app(scope, receive, send)
        elif scope["path"].endswith(_READY_SUFFIX):
            await self.app(scope, receive, _NotReady(send))
        else:
            await self.app(scope, receive, _closing(send))


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


class _NotReady:
    """Turns a 200 readiness answer into 503 ``draining``; passes anything else through."""

    def __init__(self, send: Send) -> None:
        self.send = _closing(send)
        self.start: Message | None = None
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            self.start = message
        elif message["type"] == "http.response.body" and self.start is not None:
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                await self._send_draining()
        else:
            await self.send(message)

    async def _send_draining(self) -> None:
        assert self.start is not None
        try:
            body = json.loads(self.body)
        except ValueError:
            body = {}
        body = {**body, "status": "draining"} if isinstance(body, dict) else body
        content = json.dumps(body).encode()
        headers = [
            (k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"
        ]
        headers.append((b"content-length", str(len(content)).encode()))
        await self.send({**self.start, "status": 503, "headers": headers})
        await self.send({"type": "http.response.body", "body": content})
