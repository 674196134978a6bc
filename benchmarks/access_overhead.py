"""CPU per request of cellserve's outermost middleware: request id, access-log line, metrics.

Runs the middleware in-process around a trivial ASGI app (no server, no kernel), so the
number is the middleware's own cost. Lines go to an in-memory stream.

    python benchmarks/access_overhead.py [REQUESTS]
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from typing import Any

from cellserve.access import AccessLogMiddleware
from cellserve.logs import JsonFormatter, TextFormatter, note_kernel, note_queued, note_route


async def app(scope: Any, receive: Any, send: Any) -> None:
    note_route("api.ipynb", "GET /x")  # what endpoint.py and the pool record for a request
    note_queued()
    note_kernel("3f2a9c1b0d4e")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"1\n"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    pass


def request() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"host", b"localhost"), (b"x-request-id", b"bench-1")],
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
    }


async def cpu_per_request(target: Any, n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await target(request(), receive, send)
    return (time.process_time() - started) / n * 1e6


async def main(n: int) -> None:
    handler = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    bare = await cpu_per_request(app, n)
    rows = [("bare app", bare)]
    rows.append(
        (
            "middleware, no access log",
            await cpu_per_request(AccessLogMiddleware(app, access_log=False), n),
        )
    )
    handler.setFormatter(TextFormatter())
    rows.append(("middleware, text access log", await cpu_per_request(AccessLogMiddleware(app), n)))
    handler.setFormatter(JsonFormatter())
    rows.append(("middleware, JSON access log", await cpu_per_request(AccessLogMiddleware(app), n)))
    for name, micros in rows:
        print(f"{name:30s} {micros:6.1f} µs CPU/request  (+{micros - bare:.1f})")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
