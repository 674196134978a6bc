"""Several notebooks in one server, each under its own prefix with its own kernels.

    app = app_from_notebooks({"prices": "house_prices.ipynb", "plots": "plot.ipynb"})

serves ``/prices/...`` and ``/plots/...``; each notebook has its own pool and reload watcher.
``/docs`` shows all of them (one spec per notebook, plus ``/openapi.json`` combining them) and
``/_cellserve/health`` lists every notebook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router

from cellserve.app import (
    CellserveApp,
    base_url,
    mounted_app,
    not_found,
    notebook_routes,
    status_routes,
)
from cellserve.docs import docs_assets, docs_page
from cellserve.exceptions import SettingsError
from cellserve.openapi import openapi_document
from cellserve.routing import ADMIN_PREFIX
from cellserve.settings import Settings
from cellserve.startup import failing_start_under_hypercorn

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
    with failing_start_under_hypercorn():
        return _app_from_notebooks(notebooks, Settings.load(**options))


def _app_from_notebooks(notebooks: NotebookPaths, settings: Settings) -> Starlette:
    part_settings = settings.with_changes(base_url="/")
    states = {
        prefix: CellserveApp(path, part_settings, label=prefix)
        for prefix, path in notebook_prefixes(notebooks).items()
    }

    def status() -> tuple[bool, dict[str, Any]]:
        notebooks = {prefix: state.health() for prefix, state in states.items()}
        statuses = {health["status"] for health in notebooks.values()}
        ok = statuses == {"ok"}
        overall = (
            "ok"
            if ok
            else "failed"
            if "failed" in statuses
            else "starting"
            if "starting" in statuses
            else "degraded"
        )
        body = {"status": overall, "pid": os.getpid(), "notebooks": notebooks}
        return ok, body

    async def openapi(request: Request) -> Response:
        sections = [s for prefix, state in states.items() for s in state.sections(f"/{prefix}")]
        document = openapi_document(
            sections,
            title="cellserve",
            server_url=base_url(request),
            auth=settings.auth_token is not None,
        )
        return JSONResponse(document)

    async def docs(request: Request) -> Response:
        base = base_url(request)
        specs = [(prefix, f"{base}/{prefix}{ADMIN_PREFIX}/openapi.json") for prefix in states]
        return docs_page(
            request, title="cellserve", specs=specs, assets=f"{base}{ADMIN_PREFIX}/docs/assets"
        )

    routes: list[BaseRoute] = [
        *status_routes(status, lambda: [p for state in states.values() for p in state.pools()]),
        Route(f"{ADMIN_PREFIX}/openapi.json", openapi),
        Route("/openapi.json", openapi),
        Route("/docs", docs),
        Mount(f"{ADMIN_PREFIX}/docs/assets", app=docs_assets()),
        *(Mount(f"/{prefix}", app=notebook_routes(state)) for prefix, state in states.items()),
    ]
    router = Router(routes=routes, default=not_found)
    app = mounted_app(router, settings, list(states.values()))
    app.state.cellserve_notebooks = states
    return app
