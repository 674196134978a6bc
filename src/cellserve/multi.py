"""Several notebooks in one server, each under its own prefix with its own kernels.

    app = app_from_notebooks({"prices": "house_prices.ipynb", "plots": "plot.ipynb"})

serves ``/prices/...`` and ``/plots/...``; each notebook has its own pool and reload watcher.
``/docs`` shows all of them (one spec per notebook, plus ``/openapi.json`` combining them) and
``/_cellserve/health`` lists every notebook.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from cellserve.app import ADMIN, CellserveApp, build_app, middleware_for, not_found
from cellserve.docs import docs_assets, docs_page
from cellserve.exceptions import SettingsError
from cellserve.openapi import openapi_document
from cellserve.reload import reload_on_sighup
from cellserve.settings import Settings

NotebookPaths = Mapping[str, str | os.PathLike[str]] | Iterable[str | os.PathLike[str]]


def notebook_prefixes(notebooks: NotebookPaths) -> dict[str, Path]:
    """``{prefix: path}``; a bare path (or folder of notebooks) is served under its file stem."""
    if isinstance(notebooks, Mapping):
        pairs = [(str(prefix).strip("/"), Path(path)) for prefix, path in notebooks.items()]
    else:
        paths: list[Path] = []
        for item in notebooks:
            item = Path(item)
            paths.extend(sorted(item.glob("*.ipynb")) if item.is_dir() else [item])
        pairs = [(path.stem, path) for path in paths]
    result: dict[str, Path] = {}
    for prefix, path in pairs:
        if not prefix or "/" in prefix or prefix.startswith("_"):
            raise SettingsError(f"{path}: prefix {prefix!r} must be one path segment, not '_...'")
        if prefix in result:
            raise SettingsError(f"two notebooks would both be served under /{prefix}")
        result[prefix] = path
    if not result:
        raise SettingsError("no notebooks to serve")
    return result


def app_from_notebooks(notebooks: NotebookPaths, **options: Any) -> Starlette:
    """One Starlette app serving several notebooks, each under its own prefix."""
    settings = Settings.load(**options)
    part_settings = settings.with_changes(base_url="/")
    states = {
        prefix: CellserveApp(path, part_settings, label=prefix, handles_sighup=False)
        for prefix, path in notebook_prefixes(notebooks).items()
    }

    def status() -> tuple[bool, dict[str, Any]]:
        notebooks = {prefix: state.health() for prefix, state in states.items()}
        ok = all(health["status"] == "ok" for health in notebooks.values())
        return ok, {"status": "ok" if ok else "degraded", "notebooks": notebooks}

    async def health(_: Request) -> Response:
        return JSONResponse(status()[1])

    async def ready(_: Request) -> Response:
        ok, body = status()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def openapi(request: Request) -> Response:
        sections = [s for prefix, state in states.items() for s in state.sections(f"/{prefix}")]
        base = request.scope.get("root_path", "") + settings.mount_prefix
        document = openapi_document(
            sections, title="cellserve", server_url=base, auth=settings.auth_token is not None
        )
        return JSONResponse(document)

    async def docs(request: Request) -> Response:
        base = request.scope.get("root_path", "") + settings.mount_prefix
        specs = [(prefix, f"{base}/{prefix}{ADMIN}/openapi.json") for prefix in states]
        return docs_page(
            request, title="cellserve", specs=specs, assets=f"{base}{ADMIN}/docs/assets"
        )

    routes: list[BaseRoute] = [
        Route(f"{ADMIN}/health", health),
        Route(f"{ADMIN}/ready", ready),
        Route(f"{ADMIN}/openapi.json", openapi),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
        Mount(f"{ADMIN}/docs/assets", app=docs_assets()),
        *(
            Mount(f"/{prefix}", app=build_app(state, standalone=False))
            for prefix, state in states.items()
        ),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for state in states.values():
                await stack.enter_async_context(state.lifespan())
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                services = [state.service for state in states.values()]
                tg.start_soon(reload_on_sighup, services, stop)
                try:
                    yield
                finally:
                    stop.set()

    if settings.mount_prefix:
        routes = [Mount(settings.mount_prefix, routes=routes)]
    app = Starlette(routes=routes, middleware=middleware_for(settings), lifespan=lifespan)
    app.router.default = not_found
    app.state.cellserve_notebooks = states
    return app
