"""Reading one of a kernel's zmq sockets on the event loop, cheaply.

jupyter_client's asyncio channels read through pyzmq's asyncio layer, which makes a future
(with its bookkeeping and a loop callback) for every message and calls back on every event of
the socket. On the fast path that was the largest single cost of a request in the server after
HTTP itself. Once a kernel is seeded (nbclient, which needs those futures, is done with it),
``ChannelReader.take_over`` moves the socket's file descriptor to a watch of its own: a message
already waiting is read at once without a future, and a wait costs one future and one timer.

A zmq socket's descriptor signals *changes*: after each signal the socket's events must be read
(``zmq.EVENTS``) before the descriptor can signal again, and a message may be waiting without a
new signal. ``wait`` and the watch both read the events, so no message is ever missed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq


class ChannelReader:
    """Reads `socket` (a pyzmq asyncio socket) without zmq futures."""

    def __init__(self, socket: Any) -> None:
        self._async_socket = socket
        self._socket: zmq.Socket[bytes] = zmq.Socket.shadow(socket.underlying)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """A blocking handle on the same zmq socket (not a copy): send with ``zmq.NOBLOCK``."""
        return self._socket

    def take_over(self) -> None:
        """Watch the socket's descriptor here from now on. Nothing may wait on the socket
        through pyzmq's asyncio layer afterwards (its futures would never complete)."""
        loop = asyncio.get_running_loop()
        descriptor = self._socket.FD
        loop.remove_reader(descriptor)
        loop.add_reader(descriptor, self._signalled)
        self._loop = loop

    def release(self) -> None:
        """Stop watching (before the socket closes)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._socket.FD)
        self._loop = None

    def read_nowait(self) -> list[bytes] | None:
        """The next message's frames, or None when none is waiting."""
        try:
            return self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` until a message may be read; whether one may."""
        if self._loop is None:
            return bool(await self._async_socket.poll(seconds * 1000, zmq.POLLIN))
        if self._has_message():
            return True
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        timer = self._loop.call_later(seconds, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.remove(waiter)
        return self._has_message()

    def _has_message(self) -> bool:
        events: int = self._socket.getsockopt(zmq.EVENTS)  # type: ignore[assignment]
        return bool(events & zmq.POLLIN)

    def _signalled(self) -> None:
        # Reading the events re-arms the descriptor, whoever is waiting.
        if self._has_message():
            for waiter in self._waiters:
                _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
