"""The outermost middleware: a request id, one access-log line and the request metrics.

``X-Request-ID`` is taken from the request when well-formed, generated otherwise, and echoed
in the response. While the request runs, its `RequestContext` is current, so every log line
about it carries its id (and, once known, its notebook, route and kernel).
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellserve import metrics
from cellserve.logs import RequestContext, enter_request, leave_request, request_id_from
from cellserve.routing import ADMIN_PREFIX, KERNEL_GATEWAY_PREFIX

logger = logging.getLogger("cellserve.access")

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED = 499
"""Status logged when the client left before any response was sent (nginx's convention)."""

# Metric labels stay bounded whatever clients send: cellserve's own paths are labelled by a
# fixed name (a job's id or an asset's file name left out), any other unmatched path by "",
# and a method outside HTTP's own by "other".
_OWN_PATHS = frozenset(
    {
        *(f"{ADMIN_PREFIX}/{name}" for name in ("health", "ready", "metrics", "reload")),
        *(f"{ADMIN_PREFIX}/{name}" for name in ("openapi.json", "docs")),
        f"{KERNEL_GATEWAY_PREFIX}/spec/swagger.json",
        f"{KERNEL_GATEWAY_PREFIX}/source",
        "/openapi.json",
        "/docs",
    }
)
_JOBS = f"{ADMIN_PREFIX}/jobs/"
_ASSETS = f"{ADMIN_PREFIX}/docs/assets"
# A path is logged as sent on the wire when it holds only printable ASCII without spaces;
# otherwise percent-encoded, so that a decoded "%0A" cannot forge a log line.
_PLAIN_PATH = re.compile(r"[!-~]*")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True, mount_prefix: str = "") -> None:
        self.app = app
        self.access_log = access_log
        self.mount_prefix = mount_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                offered = value
                break
        context = RequestContext(request_id_from(offered), scope["method"], scope["path"])
        echoed = (REQUEST_ID_HEADER, context.request_id.encode("ascii"))
        status = CLIENT_CLOSED
        size = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                headers.append(echoed)
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        token = enter_request(context)
        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if status == CLIENT_CLOSED:
                status = 500  # the server's error handler answers it
            raise
        finally:
            metrics.IN_FLIGHT.dec()
            self._record(context, scope, status, size, time.perf_counter() - started)
            leave_request(token)

    def _record(
        self, context: RequestContext, scope: Scope, status: int, size: int, seconds: float
    ) -> None:
        notebook = context.notebook or ""
        route = context.route or self._own_route(context.path, status)
        method = context.method if context.method in _METHODS else "other"
        metrics.record_request(notebook, route, method, status, seconds)
        if context.queue_wait is not None:
            metrics.QUEUE_WAIT.labels(notebook).observe(context.queue_wait)
        if self.access_log and logger.isEnabledFor(logging.INFO):
            client = scope.get("client")
            duration_ms = round(seconds * 1000, 2)
            path = context.path
            if not _PLAIN_PATH.fullmatch(path):
                path = quote(path, safe="/!$&'()*+,;=:@~")
            logger.info(
                "%s %s %d %.1f ms %d B",
                context.method,
                path,
                status,
                duration_ms,
                size,
                extra={
                    "request": context,
                    "method": context.method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "bytes": size,
                    "client": client[0] if client else None,
                },
            )

    def _own_route(self, path: str, status: int) -> str:
        if status == 404:
            return ""
        path = path[len(self.mount_prefix) :] if path.startswith(self.mount_prefix) else path
        if path in _OWN_PATHS:
            return path
        if path.startswith(_JOBS):
            return _JOBS + ("{id}/result" if path.endswith("/result") else "{id}")
        if path.startswith(_ASSETS + "/"):
            return _ASSETS
        return ""
