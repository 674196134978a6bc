"""Test a notebook API in-process: Starlette's TestClient, entered once the kernels are seeded.

    from cellserve.testing import notebook_client

    def test_stats():
        with notebook_client("house_prices.ipynb") as client:
            assert client.get("/housing_stats").status_code == 200

Requests go straight to the app (no server, no port) and run on real kernels. Entering the
block waits until every kernel is seeded, and a notebook that cannot start raises its error
(e.g. ``SeedError``) in the test. The app's own lifespan is made for servers instead: it
returns at once (routes answer 503 while seeding) and ends the process on a failed start.

Needs Starlette's test client: ``pip install 'cellserve[testing]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from cellserve.app import CellserveApp, app_from_notebook
from cellserve.exceptions import CellserveError
from cellserve.startup import running

__all__ = ["notebook_client"]


@contextmanager
def notebook_client(
    notebook: str | os.PathLike[str] | Starlette, **options: Any
) -> Iterator[TestClient]:
    """A TestClient for `notebook`, its kernels seeded; they are stopped when the block ends.

    `notebook` is a path (`options` then go to ``app_from_notebook``) or an app made by
    ``app_from_notebook`` or ``app_from_notebooks``.
    """
    if isinstance(notebook, Starlette):
        if options:
            raise CellserveError("options are for app_from_notebook(): pass a path with them")
        app = notebook
    else:
        app = app_from_notebook(notebook, **options)
    notebooks = _notebooks_of(app)
    # Mounted, the app gets no lifespan events of its own; the host runs its notebooks the
    # way cellserve.lifespan() does: wait for every one, raise the first start-up error.
    host = Starlette(routes=[Mount("/", app=app)], lifespan=lambda _: running(notebooks))
    with TestClient(host) as client:
        yield client


def _notebooks_of(app: Starlette) -> list[CellserveApp]:
    single = getattr(app.state, "cellserve", None)
    if isinstance(single, CellserveApp):
        return [single]
    several = getattr(app.state, "cellserve_notebooks", None)
    if isinstance(several, dict) and several:
        return list(several.values())
    raise CellserveError("notebook_client() needs an app made by app_from_notebook(s)()")
