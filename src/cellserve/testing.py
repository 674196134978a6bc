"""Test a notebook API in-process: Starlette's TestClient, entered once the kernels are seeded.

    from cellserve.testing import notebook_client

    def test_stats():
        with notebook_client("house_prices.ipynb") as client:
            assert client.get("/housing_stats").status_code == 200

Requests go straight to the app (no server, no port) and run on real kernels. Entering the
block waits until every kernel is seeded, and a notebook that cannot start raises its error
(e.g. ``SeedError``) in the test: the app's lifespan does so for any in-process test client
(``startup.ServerDetector``), so this is ``TestClient(app_from_notebook(path, **options))``.

Needs Starlette's test client: ``pip install 'cellserve[testing]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.testclient import TestClient

from cellserve.app import app_from_notebook
from cellserve.exceptions import CellserveError

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
    with TestClient(app) as client:
        yield client
