"""Shared fixtures: notebooks written to disk, and real hypercorn servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellserve.open_files import raise_open_files_limit
from tests.processes import Process
from tests.servers import ServerThread, write_notebook

HOUSING_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "california_housing.csv"


@pytest.fixture
def anyio_backend() -> str:
    # The Jupyter stack is asyncio-only.
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def _open_files_limit_as_the_server_has() -> None:
    """This process hosts servers and kernels as `cellserve serve` does: give it the same
    open-files limit (the soft one raised to the hard one)."""
    raise_open_files_limit()


@pytest.fixture(autouse=True, scope="session")
def _isolated_jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep IPython's profile and history out of the developer's home directory."""
    ipython_dir = tmp_path_factory.mktemp("ipython")
    saved = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    yield
    if saved is None:
        os.environ.pop("IPYTHONDIR", None)
    else:
        os.environ["IPYTHONDIR"] = saved


@pytest.fixture
def notebook(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a notebook from cell sources: ``notebook(["# GET /x\\nprint(1)"])``."""

    def make(cells: list[str], name: str = "api.ipynb", **kwargs: object) -> Path:
        return write_notebook(tmp_path / name, cells, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes started by a test; killed at teardown if the test left them running."""
    started: list[Process] = []
    yield started
    for process in started:
        process.close()


__all__ = ["HOUSING_CSV", "ServerThread"]
