"""Keep-alive connections stay usable when a request is answered before its body is read.

A 401, 404, 405 or 413 goes out without reading the request body. The HTTP/1.1 connection
then cannot carry another request, so the server closes it, and a client that already
reused it for its next request sees the connection drop with no response. Before such a
response starts, ``DrainRequestBody`` reads and drops the rest of the body (up to
``DRAIN_LIMIT`` bytes); past that, the response says ``Connection: close`` so the client
knows not to reuse the connection.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_LIMIT = 1024 * 1024
"""Most request-body bytes read and dropped to keep a connection open."""


class DrainRequestBody:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read = False

        async def tracked_receive() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def draining_send(message: Message) -> None:
            nonlocal body_read
            if message["type"] == "http.response.start" and not body_read:
                body_read = True
                if not await _drain(receive):
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, tracked_receive, draining_send)


async def _drain(receive: Receive) -> bool:
    """Read the rest of the request body; False when it was too long to read."""
    size = 0
    while size <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return False  # the client left: nothing to keep open
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False
