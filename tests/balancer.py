"""A test-only round-robin HTTP proxy that sends requests only to ready backends.

It does what a load balancer in front of cellserve replicas does, and no more: it polls
each backend's ``/_cellserve/ready`` every `interval` seconds and forwards each request to
the next backend that last answered 200, over pooled keep-alive connections. It never
retries: a request that fails on its backend is answered 502, so a test counts every failure.
"""

from __future__ import annotations

import itertools

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class RoundRobinProxy:
    def __init__(self, backends: list[str], interval: float = 0.1) -> None:
        self.backends = list(backends)
        self.ready: set[str] = set()
        self.interval = interval
        self._turn = itertools.count()
        # Idle connections are dropped before hypercorn's keep-alive timeout (5 s) closes them
        # from its side: otherwise a request can race that close, as with any real proxy.
        limits = httpx.Limits(keepalive_expiry=2)
        self._client = httpx.AsyncClient(timeout=60, limits=limits)
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=_METHODS)])

    async def watch(self) -> None:
        """Poll readiness until cancelled (run it in the test's task group)."""
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=1, limits=limits) as probe:
            while True:
                for backend in list(self.backends):
                    try:
                        response = await probe.get(backend + "/_cellserve/ready")
                        ok = response.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    (self.ready.add if ok else self.ready.discard)(backend)
                self.ready &= set(self.backends)
                await anyio.sleep(self.interval)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _forward(self, request: Request) -> Response:
        candidates = [backend for backend in self.backends if backend in self.ready]
        if not candidates:
            return Response("no ready backend", status_code=503)
        backend = candidates[next(self._turn) % len(candidates)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("host", None)
        try:
            answer = await self._client.request(
                request.method,
                backend + request.url.path,
                params=request.query_params,
                headers=headers,
                content=await request.body(),
            )
        except httpx.HTTPError as exc:
            return Response(f"{backend}: {exc!r}", status_code=502)
        except Exception as exc:  # the proxy's own fault: say so, apart from the backends'
            return Response(f"proxy error forwarding to {backend}: {exc!r}", status_code=500)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(answer.content, status_code=answer.status_code, headers=kept)
