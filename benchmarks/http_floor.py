"""The HTTP floor: hypercorn and the thinnest ASGI app over one seeded cellserve kernel.

The raw floor (``floor.py``) has no HTTP at all, so cellserve ÷ raw floor mixes two costs:
what any Python HTTP server costs per request, and what cellserve adds on top. This server
separates them. It answers ``GET /ping`` (and the other unbatched endpoints) the way
cellserve's fast path does: the same kernel class, seed cells, dispatcher, ``REQUEST``
string and wire framing; on hypercorn with uvloop, as ``cellserve serve`` runs. It has none
of cellserve's routing, middleware, access log, metrics, auth, queue, limits, timeouts or
error handling, which is why it is a floor and not a server: one request at a time (the
runner measures it at concurrency 1 only)::

    $ python benchmarks/http_floor.py 127.0.0.1:8000
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

from bench_notebook import ENDPOINTS, SEEDS
from cellserve.cells import CellCall
from cellserve.kernels import Kernel, KernelConfig
from cellserve.notebook import SeedCell
from cellserve.request import RequestParts, build_request_json

_TIMEOUT = 60.0


class HttpFloor:
    """The ASGI app: path → endpoint code, body → ``REQUEST``, stdout → 200 body."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.sources = {f"/{name}": source for name, source in ENDPOINTS.items()}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        source = self.sources[scope["path"]]
        parts = RequestParts(scope["headers"], scope["query_string"], body, {})
        call = CellCall(source, build_request_json(parts))
        outcome = await self.kernel.finish(self.kernel.begin(call), timeout=_TIMEOUT)
        answer = outcome.cell.stdout.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(answer)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


async def main(bind: str, here: Path) -> None:
    kernel = await Kernel.start(KernelConfig(kernel_name="python3", language="python", cwd=here))
    try:
        await kernel.seed([SeedCell(number, source) for number, source in enumerate(SEEDS, 1)])
        config = Config()
        config.bind = [bind]
        config.accesslog = None
        await serve(HttpFloor(kernel), config)
    finally:
        await kernel.shutdown()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], Path(__file__).resolve().parent))
