"""Assembly: the Starlette apps around notebook services, their middleware and lifespans.

``notebook_routes`` gives the routes of one notebook (cellserve's and Kernel Gateway's own
endpoints, then every other path served by ``endpoint.py``); the single-notebook app mounts
them at its base URL, the multi-notebook app (multi.py) under one prefix per notebook.

Kernels start in the app's lifespan. Starlette sends no lifespan events to mounted apps, so a
host either composes ``cellserve.lifespan(app)`` into its own lifespan or opts in to starting
on the first request with ``start_on_first_request=True``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from cellserve.access import AccessLogMiddleware
from cellserve.auth import RefuseWebSockets, TokenAuthMiddleware
from cellserve.docs import docs_assets, docs_page
from cellserve.draining import DrainRequestBody
from cellserve.endpoint import serve_notebook_request
from cellserve.exceptions import CellserveError, SettingsError
from cellserve.jobs import Job, JobTable, JobWork, job_routes
from cellserve.metrics import PoolSource, metrics_endpoint
from cellserve.openapi import Section, kernel_gateway_swagger, openapi_document
from cellserve.pool import KernelPool
from cellserve.response import error_response
from cellserve.routing import ADMIN_PREFIX, KERNEL_GATEWAY_PREFIX, RouteMatch
from cellserve.scheduler import KernelState
from cellserve.service import NotebookService
from cellserve.settings import Settings
from cellserve.shutdown import draining
from cellserve.startup import (
    ServerDetector,
    ServerHooks,
    failing_start_under_hypercorn,
    running,
    sole_error,
)

Status = Callable[[], tuple[bool, dict[str, Any]]]


class CellserveApp:
    """State behind one notebook's routes; reachable as ``app.state.cellserve``."""

    def __init__(self, path: Path, settings: Settings, *, label: str | None = None) -> None:
        self.settings = settings
        self.service = NotebookService(path, settings, label=label)
        self.jobs = JobTable(
            ttl=settings.job_ttl, max_jobs=settings.max_jobs, label=self.service.label
        )
        self._start_lock = anyio.Lock()
        self._lazy_start: asyncio.Task[None] | None = None
        self.start_error: BaseException | None = None
        self._starting_since: float | None = None

    async def run(self, started: anyio.Event) -> None:
        """Run the notebook's service until it is stopped; set `started` once it serves.

        A failed start is kept in `start_error` (as itself, not in an ExceptionGroup) for
        the caller, the health endpoint and the 503 bodies.
        """
        self._starting_since = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.service.run)
                await tg.start(self.jobs.run)
                started.set()
        except Exception as exc:
            if self.service.stopping and not self.service.started:
                return  # stopped while starting (Ctrl-C, SIGTERM): not a failure
            self.start_error = sole_error(exc) if isinstance(exc, BaseExceptionGroup) else exc

    def stop(self) -> None:
        """Stop serving: cancel running jobs (interrupting their kernels), stop the service."""
        self.jobs.close()
        self.service.stop()

    async def ensure_started(self) -> None:
        """Raise unless started; with ``start_on_first_request``, start now instead.

        The lazily started service runs in a task this object owns (kept in
        ``_lazy_start``); it ends when the host's event loop cancels it at shutdown, and an
        ``atexit`` hook kills its kernels should the loop be torn down without that.
        """
        if self.service.started:
            return
        if self.start_error is not None:
            raise self.start_error
        if self._starting_since is not None and self._lazy_start is None:
            raise Starting(self._progress())  # a server's lifespan is seeding it
        if not self.settings.start_on_first_request:
            raise CellserveError(
                f"{self.service.label} is not started: compose cellserve.lifespan(app) into "
                "the host app's lifespan, or pass start_on_first_request=True"
            )
        async with self._start_lock:
            if self.service.started:
                return
            if self.start_error is not None:
                raise self.start_error
            ready = asyncio.Event()
            self._lazy_start = asyncio.get_running_loop().create_task(self._run_lazily(ready))
            atexit.register(self._kill_kernels)
            await ready.wait()
            if self.start_error is not None:
                raise self.start_error

    async def _run_lazily(self, ready: asyncio.Event) -> None:
        try:
            async with running([self]):
                ready.set()
                await anyio.sleep_forever()
        except Exception as exc:
            self.start_error = exc
        finally:
            ready.set()

    def _progress(self) -> str:
        """Where start-up is, for the 503 body of a request that came too early."""
        seconds = time.monotonic() - (self._starting_since or time.monotonic())
        pool = self.service.starting
        kernels = ""
        if pool is not None:
            stats = pool.stats()
            counts = Counter(kernel.state for kernel in stats.kernels)
            kernels = "kernels: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + "; "
        return f"{self.service.label} is starting ({kernels}{seconds:.0f} s); retry shortly"

    def _kill_kernels(self) -> None:
        """Last resort at interpreter exit for a lazily started app: no orphan kernels."""
        if not self.service.started:
            return
        for kernel in self.service.current.pool.stats().kernels:
            if kernel.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kernel.pid, signal.SIGKILL)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a notebook route (the router's fallback for every path it does not own)."""
        if scope["type"] != "http":
            return
        try:
            await self.ensure_started()
        except Exception as exc:
            where = f"{self.service.label} {scope['method']} {scope['path']}"
            await _unavailable(where, exc)(scope, receive, send)
            return
        with self.service.serving() as generation:

            async def submit_job(route: str, work: JobWork) -> Job:
                return await self.jobs.submit(route, work, lambda: self.service.holding(generation))

            await serve_notebook_request(
                generation, self.settings, submit_job, scope, receive, send
            )

    def health(self) -> dict[str, Any]:
        if not self.service.started:
            return self._starting_health()
        generation = self.service.current
        stats = generation.pool.stats()
        counts = {state.value: stats.count(state) for state in KernelState}
        return {
            "status": "failed" if stats.gave_up else "ok" if stats.can_serve else "unavailable",
            "pid": os.getpid(),  # which server process answered (see --workers)
            "notebook": generation.api.name,
            "generation": generation.number,
            "kernels": {state: n for state, n in counts.items() if n},
            "queue": stats.queue_depth,
            "jobs": self.jobs.counts(),
            "last_reload": asdict(self.service.last_reload) if self.service.last_reload else None,
            "last_reload_error": self.service.last_error,
            # Served as loaded (Kernel Gateway would serve them too), answering 500.
            "route_errors": [e.describe(generation.api.name) for e in generation.api.syntax_errors],
            "stats": asdict(stats),
        }

    def _starting_health(self) -> dict[str, Any]:
        """Health before the first generation serves: progress, or why it failed."""
        body: dict[str, Any] = {
            "status": "failed" if self.start_error is not None else "starting",
            "pid": os.getpid(),
            "notebook": self.service.path.name,
            "generation": 0,
            "kernels": {},
            "queue": 0,
        }
        if self._starting_since is not None:
            body["starting_seconds"] = round(time.monotonic() - self._starting_since, 1)
        if self.start_error is not None:
            body["error"] = str(self.start_error)
        pool = self.service.starting
        if pool is not None:
            stats = pool.stats()
            body["kernels"] = dict(Counter(kernel.state for kernel in stats.kernels))
            body["stats"] = asdict(stats)
        return body

    def status(self) -> tuple[bool, dict[str, Any]]:
        health = self.health()
        return health["status"] == "ok", health

    def pools(self) -> list[tuple[str, int, KernelPool]]:
        """``(notebook, generation, pool)`` for the pool serving (or starting) now."""
        if not self.service.started:
            pool = self.service.starting
            return [] if pool is None else [(self.service.label, 0, pool)]
        generation = self.service.current
        return [(self.service.label, generation.number, generation.pool)]

    def sections(self, prefix: str = "") -> list[Section]:
        return [Section(prefix, self.service.current.api)] if self.service.started else []


class Starting(CellserveError):
    """The notebook is still being seeded; answered with 503 and Retry-After."""


STARTING_RETRY_AFTER = 2


def _unavailable(label: str, error: Exception) -> Response:
    if isinstance(error, Starting):
        return error_response(503, str(error), {"Retry-After": str(STARTING_RETRY_AFTER)})
    return error_response(503, f"{label} could not be started: {error}")


def base_url(request: Request) -> str:
    """The URL prefix of the app's routes, as the client sees it: the `root_path`, which
    already holds the base URL, since these routes are reached through its ``Mount``."""
    return str(request.scope.get("root_path", ""))


def status_routes(status: Status, pools: PoolSource) -> list[BaseRoute]:
    """``/_cellserve/health`` (503 only once the server can never serve again, so that a
    liveness probe restarts it), ``/_cellserve/ready`` (503 unless ready) and
    ``/_cellserve/metrics`` (Prometheus)."""

    async def health(_: Request) -> Response:
        body = status()[1]
        return JSONResponse(body, status_code=503 if body["status"] == "failed" else 200)

    async def ready(request: Request) -> Response:
        ok, body = status()
        if draining(request.scope):  # stopping: leave the load balancer's rotation first
            ok, body = False, {**body, "status": "draining"}
        return JSONResponse(body, status_code=200 if ok else 503)

    return [
        Route(f"{ADMIN_PREFIX}/health", health),
        Route(f"{ADMIN_PREFIX}/ready", ready),
        Route(f"{ADMIN_PREFIX}/metrics", metrics_endpoint(pools)),
    ]


def _needs_service(
    state: CellserveApp, endpoint: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """`endpoint`, answering 503 while the notebook's service cannot be started."""

    async def guarded(request: Request) -> Response:
        try:
            await state.ensure_started()
        except Exception as exc:
            return _unavailable(state.service.label, exc)
        return await endpoint(request)

    return guarded


def notebook_routes(state: CellserveApp) -> Router:
    """One notebook's routes: cellserve's and Kernel Gateway's endpoints, then the notebook's
    own (every other path)."""
    settings = state.settings

    async def reload(_: Request) -> Response:
        result = await state.service.reload("admin request")
        return JSONResponse(asdict(result), status_code=200 if result.error is None else 422)

    async def openapi(request: Request) -> Response:
        document = openapi_document(
            state.sections(),
            title=state.service.label,
            server_url=base_url(request),
            auth=settings.auth_token is not None,
        )
        return JSONResponse(document)

    async def docs(request: Request) -> Response:
        base = base_url(request)
        return docs_page(
            request,
            title=state.service.label,
            specs=[(state.service.label, f"{base}{ADMIN_PREFIX}/openapi.json")],
            assets=f"{base}{ADMIN_PREFIX}/docs/assets",
        )

    async def swagger(_: Request) -> Response:
        return JSONResponse(kernel_gateway_swagger(state.service.current.api))

    async def source(_: Request) -> Response:
        return Response(
            state.service.current.api.source_text,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{state.service.path.name}"'},
        )

    routes: list[BaseRoute] = [
        *status_routes(state.status, state.pools),
        Route(f"{ADMIN_PREFIX}/reload", _needs_service(state, reload), methods=["POST"]),
        Route(f"{ADMIN_PREFIX}/openapi.json", _needs_service(state, openapi)),
        Route(f"{ADMIN_PREFIX}/docs", docs),
        Mount(f"{ADMIN_PREFIX}/docs/assets", app=docs_assets()),
        Route(f"{KERNEL_GATEWAY_PREFIX}/spec/swagger.json", _needs_service(state, swagger)),
        *job_routes(state.jobs),
    ]
    if settings.docs:
        routes += [
            Route("/openapi.json", _Alias(state, "/openapi.json", _needs_service(state, openapi))),
            Route("/docs", _Alias(state, "/docs", docs)),
        ]
    if settings.allow_notebook_download:
        routes.append(Route(f"{KERNEL_GATEWAY_PREFIX}/source", _needs_service(state, source)))
    if settings.static_path is not None:
        if not Path(settings.static_path).is_dir():
            raise SettingsError(
                f"static path {settings.static_path} is not a directory; "
                "create it or give another --static-path"
            )
        routes.append(Mount("/public", app=StaticFiles(directory=settings.static_path)))
    return Router(routes=routes, default=state.dispatch)


class _Alias:
    """A docs path that yields to a notebook route of the same path."""

    def __init__(
        self, state: CellserveApp, path: str, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> None:
        self.state, self.segments, self.endpoint = state, [path[1:]], endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = self.state.service.started
        found = started and self.state.service.current.routes.match(self.segments, scope["method"])
        if not started or isinstance(found, RouteMatch) or scope["method"] not in ("GET", "HEAD"):
            await self.state.dispatch(scope, receive, send)
        else:
            response = await self.endpoint(Request(scope, receive))
            await response(scope, receive, send)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await error_response(404, f"no route for {scope['path']}")(scope, receive, send)


def mounted_app(router: Router, settings: Settings, states: Sequence[CellserveApp]) -> Starlette:
    """The top-level app: `router` at the base URL, with the middleware, and a lifespan that
    runs `states` listening first (see startup.py); ``app.state.cellserve_server`` says how
    the server wants a failed start reported."""
    app = Starlette(
        middleware=[Middleware(ServerDetector), *middleware_for(settings)],
        lifespan=lambda app: running(states, server=app.state.cellserve_server),
    )
    app.state.cellserve_server = ServerHooks()
    if settings.mount_prefix:
        app.router.routes.append(Mount(settings.mount_prefix, app=router))
        app.router.default = not_found
    else:
        app.router.routes.extend(router.routes)
        app.router.default = router.default
    return app


def middleware_for(settings: Settings) -> list[Middleware]:
    middleware = [
        Middleware(
            AccessLogMiddleware,
            access_log=settings.access_log,
            mount_prefix=settings.mount_prefix,
        ),
        Middleware(DrainRequestBody),
    ]
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
    middleware.append(Middleware(RefuseWebSockets))
    return middleware


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def app_from_notebook(path: str | os.PathLike[str], **options: Any) -> Starlette:
    """A Starlette app serving the notebook at `path`.

    `options` are ``Settings`` fields (``kernels=2``, ``timeout=30``, ``reload=True``...);
    unset ones come from ``CELLSERVE_*`` / ``KG_*`` environment variables, then defaults.

        app = app_from_notebook("house_prices.ipynb", kernels=2)
    """
    with failing_start_under_hypercorn():
        settings = Settings.load(**options)
        state = CellserveApp(Path(path), settings)
        app = mounted_app(notebook_routes(state), settings, [state])
    if not settings.docs:  # only cellserve's own docs path is served
        app.state.cellserve_server.docs_path = f"{ADMIN_PREFIX}/docs"
    app.state.cellserve = state
    return app


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
    async with running([state]):
        yield
