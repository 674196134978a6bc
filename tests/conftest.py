"""Shared fixtures: notebooks written to disk, and real hypercorn servers on loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

# The test extra installs jupyter-server-proxy, whose jupyter_events requires
# jsonschema[format-nongpl] and so rfc3987_syntax: jsonschema imports it at once, and it compiles
# some thirty grammars on import (2.7 s per process on 2 cores, four times the rest of
# `cellserve serve`'s start). A plain `pip install cellserve` does not have it. Marked absent
# here and, through sitecustomize, in every process the tests start (servers, CLI commands),
# the suite runs as users' installs do and no longer spends most of its time importing.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
_PLAIN_JSONSCHEMA = str(Path(__file__).with_name("plain_jsonschema"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_PLAIN_JSONSCHEMA, os.environ.get("PYTHONPATH")) if p
)

import pytest  # noqa: E402

from tests.processes import Process  # noqa: E402
from tests.servers import ServerThread, write_notebook  # noqa: E402

HOUSING_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "california_housing.csv"


@pytest.fixture
def anyio_backend() -> str:
    # The Jupyter stack is asyncio-only.
    return "asyncio"


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
