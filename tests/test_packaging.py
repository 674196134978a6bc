"""The wheel as users get it: built from this tree, installed into a fresh venv, serving.

Slow by nature (a build and an install, from the package registry or pip's cache), so one
module-scoped wheel and venv serve every test here.
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import httpx
import pytest

import cellserve
from tests.servers import free_port, write_notebook

ROOT = Path(__file__).resolve().parents[1]
SWAGGER_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")

pytestmark = pytest.mark.timeout(900)


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=800
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("cellserve-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and, beside it, connexion's `swagger-ui-bundle`, which
    owns the `swagger_ui_bundle` module name and carries an older Swagger UI."""
    path = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", path)
    _run(path / "bin" / "python", "-m", "pip", "install", "-q", wheel, "swagger-ui-bundle")
    return path


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_wheel_carries_the_licence_the_assets_and_the_type_marker(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert "BSD 3-Clause License" in archive.read(licence).decode()
        assert "cellserve/py.typed" in names
        for asset in (*SWAGGER_FILES, "LICENSE", "NOTICE"):
            assert f"cellserve/swagger_ui/{asset}" in names, asset
        upstream_licence = archive.read("cellserve/swagger_ui/LICENSE").decode()
        assert "Apache License" in upstream_licence


def test_wheel_metadata(wheel: Path) -> None:
    metadata = _metadata(wheel)
    assert metadata["Version"] == cellserve.__version__
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata["License-File"] == "LICENSE"
    classifiers = metadata.get_all("Classifier") or []
    assert {"Typing :: Typed", "Framework :: Jupyter"} <= set(classifiers)
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    assert metadata.get_all("Project-URL")
    requires = {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower(): r
        for r in metadata.get_all("Requires-Dist") or []
    }
    assert "swagger-ui-bundle-v2" not in requires
    assert "python-multipart>=0.0.27" in requires["python-multipart"]
    assert "starlette>=0.49.1" in requires["starlette"]


def test_pip_check_is_clean_in_a_fresh_venv(venv: Path) -> None:
    result = _run(venv / "bin" / "python", "-m", "pip", "check")
    assert "No broken requirements found" in result.stdout


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[str]:
    """The venv's own `cellserve serve` on a free port; yields its URL once ready."""
    notebook = write_notebook(
        tmp_path / "hello.ipynb", ["# GET /hello/:name\nprint('hello', REQUEST[:1])"]
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen(
        [venv / "bin" / "cellserve", "serve", notebook, "--port", str(port), "--no-reload"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.communicate()[1]
            try:
                if httpx.get(f"{url}/_cellserve/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed cellserve never became ready"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.communicate(timeout=60)


def test_installed_wheel_serves_a_notebook_with_its_own_swagger_ui_5(
    venv: Path, served: str
) -> None:
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import cellserve, swagger_ui_bundle; print(cellserve.__file__)",
        cwd=venv,
    )
    assert where.stdout.startswith(str(venv))  # the installed copy, not this source tree

    assert httpx.get(f"{served}/hello/x", timeout=30).text == "hello {\n"
    page = httpx.get(f"{served}/docs", timeout=30).text
    (bundle,) = re.findall(r'src="([^"]*/swagger-ui-bundle\.js)"', page)
    script = httpx.get(served + bundle, timeout=30)
    assert script.status_code == 200
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', script.text)
    assert version is not None and version.group(1) == "5"
