"""The Starlette app: notebook routes, cellserve's own endpoints, middleware and lifespan.

Request path through the modules::

    auth → routing (404/405, no kernel) → request (REQUEST string) → pool (queue, kernel)
         → kernels (one round trip) → response (status, headers, body)

The app can run alone (its lifespan starts the kernels) or mounted in another app: Starlette
sends no lifespan events to mounted apps, so either compose ``cellserve.lifespan(app)`` into
the host's lifespan, or let the first request start the kernels.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellserve.auth import TokenAuthMiddleware
from cellserve.docs import docs_assets, docs_page
from cellserve.exceptions import CellserveError
from cellserve.kernels import CellCall
from cellserve.openapi import Section, kernel_gateway_swagger, openapi_document
from cellserve.pool import ExecutionTimeout, KernelState, Unavailable
from cellserve.reload import Generation, NotebookService, reload_on_sighup
from cellserve.request import BadRequest, RequestParts, build_request_json
from cellserve.response import build_response, error_response
from cellserve.routing import MethodNotAllowed, RouteMatch, split_raw_path
from cellserve.settings import Settings
from cellserve.streaming import stream_cell

logger = logging.getLogger("cellserve.app")

ADMIN = "/_cellserve"


class _ClientGone(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


class CellserveApp:
    """State behind one notebook's Starlette app; reachable as ``app.state.cellserve``."""

    def __init__(
        self,
        path: Path,
        settings: Settings,
        *,
        label: str | None = None,
        handles_sighup: bool = True,
    ) -> None:
        self.settings = settings
        self.handles_sighup = handles_sighup
        self.service = NotebookService(path, settings, label=label)
        self._start_lock = anyio.Lock()
        self._detached: asyncio.Task[None] | None = None
        self._start_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start the kernels, yield while serving, stop them all on exit.

        A start-up failure is raised as itself (e.g. SeedError), not wrapped in the task
        group's ExceptionGroup, so its message reaches the log and the 503 body.
        """
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.service.run)
                if self.handles_sighup:
                    tg.start_soon(reload_on_sighup, [self.service], stop)
                try:
                    yield
                finally:
                    stop.set()
                    self.service.stop()
        except BaseExceptionGroup as group:
            raise _sole_error(group) from None

    async def ensure_started(self) -> None:
        """Start on first use when no lifespan did (e.g. mounted without composing it)."""
        if self.service.started:
            return
        async with self._start_lock:
            if self.service.started:
                return
            if self._start_error is not None:
                raise self._start_error
            ready = asyncio.Event()
            # Owned by this app object; ends when the event loop cancels it at shutdown.
            self._detached = asyncio.get_running_loop().create_task(self._run_detached(ready))
            atexit.register(self._kill_kernels)
            await ready.wait()
            if self._start_error is not None:
                raise self._start_error

    async def _run_detached(self, ready: asyncio.Event) -> None:
        try:
            async with self.lifespan():
                ready.set()
                await anyio.sleep_forever()
        except Exception as exc:
            self._start_error = exc
        finally:
            ready.set()

    def _kill_kernels(self) -> None:
        """Last resort at interpreter exit for a lazily started app: no orphan kernels."""
        if not self.service.started:
            return
        for kernel in self.service.current.pool.stats().kernels:
            if kernel.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kernel.pid, signal.SIGKILL)

    # -- notebook routes ------------------------------------------------------------------

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a notebook route (the router's fallback for every path it does not own)."""
        if scope["type"] != "http":
            return
        try:
            await self.ensure_started()
        except Exception as exc:
            response = error_response(503, f"{self.service.label} could not be started: {exc}")
            await response(scope, receive, send)
            return
        with self.service.serving() as generation:
            answer = await self._respond(scope, receive, send, generation)
            if answer is not None:
                await answer(scope, receive, send)

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, generation: Generation
    ) -> Response | None:
        """The response to send, or None when it was streamed or the client left."""
        method = scope["method"]
        try:
            found = generation.routes.match(_route_segments(scope), method)
        except UnicodeDecodeError:
            return error_response(400, "the path is not valid UTF-8 once percent-decoded")
        if found is None:
            return error_response(404, f"no route for {scope['path']}")
        if isinstance(found, MethodNotAllowed):
            allow = ", ".join((*found.allowed, "OPTIONS"))
            if method == "OPTIONS":
                return Response(status_code=200, headers={"Allow": allow})
            return error_response(
                405, f"{scope['path']} does not accept {method}", {"Allow": allow}
            )
        return await self._run_endpoint(scope, receive, send, generation, found)

    async def _run_endpoint(
        self, scope: Scope, receive: Receive, send: Send, generation: Generation, found: RouteMatch
    ) -> Response | None:
        endpoint = found.endpoint
        try:
            body = await _read_body(scope, receive, self.settings.max_body_size)
            request_json = build_request_json(
                RequestParts(scope["headers"], scope["query_string"], body, found.params),
                hide_credentials=self.settings.auth_token is not None,
            )
        except _BodyTooLarge:
            return error_response(
                413, f"the request body is larger than {self.settings.max_body_size} bytes"
            )
        except BadRequest as exc:
            return error_response(400, str(exc))
        except _ClientGone:
            return None
        call = CellCall(
            endpoint.source, request_json, endpoint.response_info, endpoint.options.stream
        )
        timeout = endpoint.options.timeout or self.settings.timeout
        accept = _header(scope, b"accept")
        if endpoint.options.stream:
            await stream_cell(generation.pool, call, timeout, accept, scope, receive, send)
            return None
        try:
            outcome = await generation.pool.execute(
                call, timeout=timeout, disconnected=lambda: _disconnected(receive)
            )
        except Unavailable as exc:
            return error_response(503, str(exc), {"Retry-After": str(exc.retry_after)})
        except ExecutionTimeout as exc:
            return error_response(504, str(exc))
        return build_response(outcome, accept, label=endpoint.label)

    # -- cellserve's own endpoints --------------------------------------------------------

    def health(self) -> dict[str, Any]:
        if not self.service.started:
            return {"status": "starting", "generation": 0, "kernels": {}, "queue": 0}
        generation = self.service.current
        stats = generation.pool.stats()
        counts = {state.value: stats.count(state) for state in KernelState}
        return {
            "status": "ok" if counts["idle"] + counts["busy"] else "unavailable",
            "notebook": generation.api.name,
            "generation": generation.number,
            "kernels": {state: n for state, n in counts.items() if n},
            "queue": stats.queue_depth,
            "last_reload": asdict(self.service.last_reload) if self.service.last_reload else None,
            "last_reload_error": self.service.last_error,
            "stats": asdict(stats),
        }

    def sections(self, prefix: str = "") -> list[Section]:
        return [Section(prefix, self.service.current.api)] if self.service.started else []


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested single-error groups, else the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _route_segments(scope: Scope) -> list[str]:
    """The path below the mount point, as raw segments (so ``%2F`` stays inside one)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    route = path[len(root) :] if root and path.startswith(root) else path
    raw_path = scope.get("raw_path")
    if raw_path:
        raw = raw_path.decode("latin-1").split("?", 1)[0]
        if unquote(raw) == path:
            prefix_depth = path[: len(path) - len(route)].count("/")
            segments: list[str] = raw.split("/")[prefix_depth + 1 :]
            return segments
    return split_raw_path(route)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def build_app(state: CellserveApp, *, standalone: bool = True) -> Starlette:
    """The Starlette app around `state`: own endpoints first, notebook routes as fallback.

    `standalone` apps carry their own middleware, base URL and lifespan; the others are parts
    of a multi-notebook app, which provides those once for all.
    """
    settings = state.settings

    async def health(_: Request) -> Response:
        return JSONResponse(state.health())

    async def ready(_: Request) -> Response:
        body = state.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    async def reload(_: Request) -> Response:
        await state.ensure_started()
        result = await state.service.reload("admin request")
        return JSONResponse(asdict(result), status_code=200 if result.error is None else 422)

    async def openapi(request: Request) -> Response:
        await state.ensure_started()
        return JSONResponse(_openapi_for(request, state))

    async def docs(request: Request) -> Response:
        base = request.scope.get("root_path", "") + settings.mount_prefix
        return docs_page(
            request,
            title=state.service.label,
            specs=[(state.service.label, f"{base}{ADMIN}/openapi.json")],
            assets=f"{base}{ADMIN}/docs/assets",
        )

    async def swagger(_: Request) -> Response:
        await state.ensure_started()
        return JSONResponse(kernel_gateway_swagger(state.service.current.api))

    async def source(_: Request) -> Response:
        await state.ensure_started()
        return Response(
            state.service.current.api.source_text,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{state.service.path.name}"'},
        )

    routes: list[BaseRoute] = [
        Route(f"{ADMIN}/health", health),
        Route(f"{ADMIN}/ready", ready),
        Route(f"{ADMIN}/reload", reload, methods=["POST"]),
        Route(f"{ADMIN}/openapi.json", openapi),
        Route(f"{ADMIN}/docs", docs),
        Mount(f"{ADMIN}/docs/assets", app=docs_assets()),
        Route("/_api/spec/swagger.json", swagger),
    ]
    if settings.docs and standalone:
        routes += [
            _unless_notebook(state, "/openapi.json", openapi),
            _unless_notebook(state, "/docs", docs),
        ]
    if settings.allow_notebook_download:
        routes.append(Route("/_api/source", source))
    if settings.static_path is not None:
        routes.append(Mount("/public", app=StaticFiles(directory=settings.static_path)))
    inner = Router(routes=routes, default=state.dispatch)
    if not standalone:
        app = Starlette(routes=inner.routes)
        app.router.default = state.dispatch
        app.state.cellserve = state
        return app
    app = Starlette(middleware=middleware_for(settings), lifespan=lambda _: state.lifespan())
    if settings.mount_prefix:
        app.router.routes.append(Mount(settings.mount_prefix, app=inner))
        app.router.default = not_found
    else:
        app.router.routes.extend(inner.routes)
        app.router.default = state.dispatch
    app.state.cellserve = state
    return app


def _unless_notebook(
    state: CellserveApp, path: str, endpoint: Callable[[Request], Awaitable[Response]]
) -> Route:
    """An alias for a docs path that yields to a notebook route of the same path."""
    return Route(path, _Alias(state, path, endpoint))


class _Alias:
    def __init__(
        self, state: CellserveApp, path: str, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> None:
        self.state, self.segments, self.endpoint = state, [path[1:]], endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.state.ensure_started()
        found = self.state.service.current.routes.match(self.segments, scope["method"])
        if isinstance(found, RouteMatch) or scope["method"] not in ("GET", "HEAD"):
            await self.state.dispatch(scope, receive, send)
        else:
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, send)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await error_response(404, f"no route for {scope['path']}")(scope, receive, send)


def _openapi_for(request: Request, state: CellserveApp) -> dict[str, Any]:
    base = request.scope.get("root_path", "") + state.settings.mount_prefix
    return openapi_document(
        state.sections(),
        title=state.service.label,
        server_url=base,
        auth=state.settings.auth_token is not None,
    )


def middleware_for(settings: Settings) -> list[Middleware]:
    middleware = []
    if settings.allow_origin:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=_split(settings.allow_origin),
                allow_methods=_split(settings.allow_methods)
                or ["GET", "POST", "PUT", "DELETE", "PATCH"],
                allow_headers=_split(settings.allow_headers),
                allow_credentials=settings.allow_credentials,
                expose_headers=_split(settings.expose_headers),
                max_age=settings.max_age,
            )
        )
    if settings.auth_token:
        middleware.append(Middleware(TokenAuthMiddleware, token=settings.auth_token))
    return middleware


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def app_from_notebook(path: str | os.PathLike[str], **options: Any) -> Starlette:
    """A Starlette app serving the notebook at `path`.

    `options` are ``Settings`` fields (``kernels=2``, ``timeout=30``, ``reload=True``...);
    unset ones come from ``CELLSERVE_*`` / ``KG_*`` environment variables, then defaults.

        app = app_from_notebook("house_prices.ipynb", kernels=2)
    """
    settings = Settings.load(**options)
    state = CellserveApp(Path(path), settings)
    return build_app(state)


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Start and stop a cellserve app's kernels from a host app's lifespan.

    model = app_from_notebook("nb.ipynb")

    @asynccontextmanager
    async def host_lifespan(host):
        async with cellserve.lifespan(model):
            yield

    host = Starlette(routes=[Mount("/model", app=model)], lifespan=host_lifespan)
    """
    state = getattr(getattr(app, "state", None), "cellserve", None)
    if not isinstance(state, CellserveApp):
        raise CellserveError("lifespan() needs an app made by app_from_notebook()")
    async with state.lifespan():
        yield
