"""Streaming routes: stdout reaches the client while the cell is still running.

A route opts in with a directive under its annotation::

    # GET /train
    # cellserve: stream

The response starts at once with status 200 and is sent chunked (``text/plain``), or as
Server-Sent Events when the client accepts ``text/event-stream`` (one ``data:`` event per
chunk, then an ``end`` event, or an ``error`` event carrying ``Error ename: evalue``).
ResponseInfo cannot change a status already sent, so it is not run for streaming routes.
If the client goes away, the cell is interrupted.
"""

from __future__ import annotations

import re

import anyio
from starlette.types import Receive, Scope, Send

from cellserve.cells import CellCall, CellOutcome
from cellserve.exceptions import KernelError
from cellserve.pool import ExecutionTimeout, KernelPool, Unavailable

_LINE_END = re.compile(r"\r\n|\r|\n")


def _sse(event: str | None, text: str) -> bytes:
    """One event; every line end SSE knows splits a ``data:`` line, so output cannot forge
    fields of its own."""
    lines = "".join(f"data: {line}\n" for line in _LINE_END.split(text))
    head = f"event: {event}\n" if event else ""
    return (head + lines + "\n").encode("utf-8")


async def stream_cell(
    pool: KernelPool,
    call: CellCall,
    timeout: float | None,
    accept: str | None,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Run a streaming route's cell, forwarding stdout as it arrives."""
    sse = accept is not None and "text/event-stream" in accept
    content_type = b"text/event-stream" if sse else b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
        }
    )

    async def forward(text: str) -> None:
        body = _sse(None, text.rstrip("\n")) if sse else text.encode("utf-8")
        await send({"type": "http.response.body", "body": body, "more_body": True})

    tail = b""
    outcome: CellOutcome | None = None
    async with anyio.create_task_group() as tg:

        async def cancel_on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_disconnect)
        try:
            outcome = await pool.execute(
                CellCall(call.source, call.request_json, None, stream=True),
                timeout=timeout,
                on_stdout=forward,
            )
        except (Unavailable, ExecutionTimeout, KernelError) as exc:
            tail = _sse("error", str(exc)) if sse else f"\n{exc}\n".encode()
        tg.cancel_scope.cancel()
    if outcome is not None:
        error = outcome.cell.error
        if error is not None:
            tail = _sse("error", error.summary) if sse else f"{error.summary}\n".encode()
        elif sse:
            tail = _sse("end", "")
    if outcome is not None or tail:  # nothing to send to a client that left
        await send({"type": "http.response.body", "body": tail, "more_body": False})
