"""Streaming routes: stdout reaches the client while the cell is still running.

A route opts in with a directive under its annotation::

    # GET /train
    # cellserve: stream

The kernel is leased first, exactly as for any route, so a full queue or a pool with no
kernel answers 503 + Retry-After before a byte is sent. Then the response starts with status
200 and is sent chunked (``text/plain``), or as Server-Sent Events when the client accepts
``text/event-stream`` (one ``data:`` event per chunk, then an ``end`` event). A stream that
fails — the cell raises, times out, loses its kernel, or passes the response size limit —
never ends normally: with SSE it ends with an ``error`` event carrying the reason
(``Error ename: evalue`` for a cell error); in plain text the reason is written as a last
line and the chunked body is aborted (no final chunk).
ResponseInfo cannot change a status already sent, so it is not run for streaming routes.
If the client goes away, the cell is interrupted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
from starlette.responses import Response
from starlette.types import Send

from cellserve.cells import CellCall, CellOutcome
from cellserve.exceptions import RequestFailed
from cellserve.logs import log_cell_error
from cellserve.pool import KernelPool
from cellserve.response import TOO_LARGE_REMEDY, failure_response, utf8

_LINE_END = re.compile(r"\r\n|\r|\n")

logger = logging.getLogger("cellserve.streaming")


def _sse(event: str | None, text: str) -> bytes:
    """One event; every line end SSE knows splits a ``data:`` line, so output cannot forge
    fields of its own."""
    lines = "".join(f"data: {line}\n" for line in _LINE_END.split(text))
    head = f"event: {event}\n" if event else ""
    return utf8(head + lines + "\n")


async def stream_cell(
    pool: KernelPool,
    call: CellCall,
    timeout: float | None,
    accept: str | None,
    send: Send,
    disconnected: Callable[[], Awaitable[None]],
) -> Response | None:
    """Run a streaming route's cell, forwarding stdout as it arrives.

    Returns the error response to send when no kernel could be leased, else None (the
    response was streamed, or the client left).
    """
    sse = accept is not None and "text/event-stream" in accept
    content_type = b"text/event-stream" if sse else b"text/plain; charset=utf-8"
    async with AsyncExitStack() as stack:
        try:
            lease = await stack.enter_async_context(pool.lease(call, disconnected=disconnected))
        except RequestFailed as exc:
            return failure_response(exc)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
            }
        )

        async def forward(text: str) -> None:
            body = _sse(None, text.rstrip("\n")) if sse else utf8(text)
            await send({"type": "http.response.body", "body": body, "more_body": True})

        failure: str | None = None
        outcome: CellOutcome | None = None
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                await disconnected()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_on_disconnect)
            try:
                outcome = await lease.run(timeout=timeout, on_stdout=forward)
            except RequestFailed as exc:
                failure = str(exc)
            tg.cancel_scope.cancel()
    if outcome is not None and outcome.cell.error is not None:
        log_cell_error(pool.label, call.route, outcome.cell.error)
        failure = outcome.cell.error.summary
    elif outcome is not None and outcome.cell.truncated:
        logger.error(
            "%s %s: the stream's output passed the response size limit and was cut; %s",
            pool.label,
            call.route,
            TOO_LARGE_REMEDY,
        )
        failure = "the cell's output passed the server's response size limit; the stream was cut"
    if outcome is None and failure is None:
        return None  # the client left: nothing to send
    if sse:
        tail = _sse("end", "") if failure is None else _sse("error", failure)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    elif failure is None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        # Plain text has no error event: write the reason, then stop without the final chunk,
        # so HTTP clients see an incomplete body instead of a finished one.
        await send(
            {"type": "http.response.body", "body": utf8(f"\n{failure}\n"), "more_body": True}
        )
    return None
