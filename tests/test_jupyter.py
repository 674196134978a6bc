"""The jupyter-server-proxy entry point, loaded by jupyter-server-proxy itself.

JupyterLab is not installed: jupyter-server-proxy's own loader reads the entry point into the
``ServerProcess`` it would launch; the test fills in the command's ``{port}`` and
``{base_url}`` as its handler does, runs it, and talks to it at the URLs the proxy would
forward (the whole path, since the entry asks for ``absolute_url``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server_proxy.config import get_entrypoint_server_processes

from cellserve.jupyter import notebooks_with_endpoints
from tests.servers import free_port, write_notebook

BASE_URL = "/user/ana/"


def _server_process() -> Any:
    """What jupyter-server-proxy makes of the entry point (it warns and skips a bad one)."""
    (process,) = [p for p in get_entrypoint_server_processes() if p.name == "cellserve"]
    return process


def _command(folder: Path, port: int) -> list[str]:
    """The command as jupyter-server-proxy runs it, for a Jupyter serving `folder`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        command: list[str] = list(_server_process().command)
    # The proxy's handler renders each part with str.format and these arguments.
    arguments = {"port": port, "base_url": BASE_URL, "unix_socket": ""}
    return [part.format(**arguments) for part in command]


def test_jupyter_server_proxy_reads_a_launcher_tile_opening_the_docs() -> None:
    process = _server_process()
    assert "{port}" in process.command
    assert any("{base_url}" in part for part in process.command)
    assert process.absolute_url is True
    launcher = process.launcher_entry
    assert launcher.enabled and launcher.title == "Notebook API"
    assert Path(launcher.icon_path).read_text().lstrip().startswith("<svg")
    assert launcher.path_info == "cellserve/docs"


def _wait_for(check: Callable[[], bool], server: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not check():
        assert server.poll() is None, server.communicate()[1]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _answers(url: str, expected: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=10).text == expected
        except httpx.TransportError:
            return False

    return check


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """The tile's command for a folder with one API notebook and one ordinary notebook."""
    api = write_notebook(tmp_path / "prices.ipynb", ["# GET /hello\nprint('v1')"])
    write_notebook(tmp_path / "notes.ipynb", ["x = 1"])
    port = free_port()
    server = subprocess.Popen(
        _command(tmp_path, port),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{port}{BASE_URL}cellserve", server, api
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_launched_command_serves_the_folders_api_notebooks_and_reloads_on_save(
    launched: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, server, api = launched
    _wait_for(_answers(f"{url}/prices/hello", "v1\n"), server, "the notebook's route")
    docs = httpx.get(f"{url}/docs", timeout=10)
    assert docs.status_code == 200
    assert f"{BASE_URL}cellserve/prices/_cellserve/openapi.json" in docs.text
    spec = httpx.get(f"{url}/prices/_cellserve/openapi.json", timeout=10).json()
    assert spec["servers"][0]["url"] == f"{BASE_URL}cellserve/prices"
    assert httpx.get(f"{url}/notes/_cellserve/health", timeout=10).status_code == 404

    write_notebook(api, ["# GET /hello\nprint('v2')"])
    _wait_for(_answers(f"{url}/prices/hello", "v2\n"), server, "the saved version")


def test_a_folder_without_api_notebooks_says_what_to_do(tmp_path: Path) -> None:
    write_notebook(tmp_path / "notes.ipynb", ["x = 1"])
    result = subprocess.run(
        _command(tmp_path, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "not serving notes.ipynb" in result.stderr
    assert "declares an endpoint" in result.stderr


def test_notebooks_whose_name_cannot_be_a_prefix_are_skipped_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cells = ["# GET /hello\nprint('hi')"]
    prices = write_notebook(tmp_path / "prices.ipynb", cells)
    for name in ("_draft.ipynb", "a=b.ipynb"):
        write_notebook(tmp_path / name, cells)
    assert notebooks_with_endpoints(tmp_path) == {"prices": prices}
    skipped = capsys.readouterr().err
    assert "not serving _draft.ipynb" in skipped and "not serving a=b.ipynb" in skipped
