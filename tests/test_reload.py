"""Hot reload against real files, real kernels and a real server."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from cellserve import app_from_notebook
from tests.servers import serving, write_notebook

pytestmark = pytest.mark.anyio

SEED = "import json, os\nSEED = 'v1'\nHITS = 0"
HELLO = "# GET /hello\nHITS += 1\nprint('hello', SEED, HITS)"


async def _until(client: httpx.AsyncClient, path: str, predicate, timeout: float = 30.0):
    """Poll `path` until `predicate(response)` holds; return that response."""
    with anyio.fail_after(timeout):
        while True:
            response = await client.get(path)
            if predicate(response):
                return response
            await anyio.sleep(0.1)


async def _health(client: httpx.AsyncClient) -> dict:
    return (await client.get("/_cellserve/health")).json()


def _kernel_ids(health: dict) -> list[str]:
    return [k["kernel_id"] for k in health["stats"]["kernels"]]


async def test_endpoint_edit_swaps_code_and_keeps_kernels(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO, "# GET /gone\nprint('here')"])
    app = app_from_notebook(path, reload=True, reload_debounce=0.05)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/hello")).text == "hello v1 1\n"
        before = await _health(client)

        write_notebook(
            path,
            [
                SEED,
                "# GET /hello\nHITS += 1\nprint('hi', SEED, HITS)",
                "# GET /added\nprint('new route')",
            ],
        )
        response = await _until(client, "/hello", lambda r: r.text.startswith("hi"))
        # Same kernel, state kept: the counter goes on from the previous request.
        assert response.text in ("hi v1 2\n", "hi v1 3\n")
        after = await _health(client)
        assert _kernel_ids(after) == _kernel_ids(before)
        assert after["generation"] > before["generation"]
        assert after["last_reload"]["change"] == "routes"
        assert (await client.get("/added")).text == "new route\n"
        spec = (await client.get("/openapi.json")).json()
        assert set(spec["paths"]) == {"/hello", "/added"}
        gone = await client.get("/gone")
        assert gone.status_code == 404
        assert gone.json()["reason"] == "Not Found"


async def test_seed_edit_starts_a_new_generation_and_retires_the_old(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO, "# GET /pid\nprint(os.getpid())"])
    app = app_from_notebook(path, reload=True, reload_debounce=0.05)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        old_pid = int((await client.get("/pid")).text)
        write_notebook(path, [SEED.replace("v1", "v2"), HELLO, "# GET /pid\nprint(os.getpid())"])
        response = await _until(client, "/hello", lambda r: "v2" in r.text)
        assert response.text == "hello v2 1\n"  # a freshly seeded kernel
        health = await _health(client)
        assert health["last_reload"]["change"] == "kernels"
        assert int((await client.get("/pid")).text) != old_pid
        with anyio.fail_after(30):
            while _alive(old_pid):
                await anyio.sleep(0.1)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda text: text[: len(text) // 2], id="truncated-json"),
        pytest.param(
            lambda text: text.replace("SEED = 'v1'", "SEED = 'v2'\\nraise ValueError('bad seed')"),
            id="seed-raises",
        ),
        pytest.param(
            lambda text: text.replace("# GET /hello", "# GET /hel lo"), id="bad-annotation"
        ),
    ],
)
async def test_broken_save_keeps_the_old_version_serving(
    tmp_path: Path, broken, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO])
    good_text = path.read_text()
    app = app_from_notebook(path, reload=True, reload_debounce=0.05)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/hello")).status_code == 200
        path.write_text(broken(good_text))
        health = await _until(
            client, "/_cellserve/health", lambda r: r.json()["last_reload_error"] is not None
        )
        error = health.json()["last_reload_error"]
        assert "api.ipynb" in error or "seed cell 1" in error
        (failure,) = [r for r in caplog.records if "reload failed" in r.getMessage()]
        assert failure.getMessage().endswith(error)  # one line; a seed cell's traceback apart
        if "seed cell" in error:
            assert "ValueError: bad seed" in failure.traceback  # type: ignore[attr-defined]
        response = await client.get("/hello")
        assert response.status_code == 200
        assert "v1" in response.text

        fixed = good_text.replace("print('hello'", "print('fixed'")
        path.write_text(fixed)
        await _until(client, "/hello", lambda r: r.text.startswith("fixed"))
        assert (await _health(client))["last_reload_error"] is None


async def test_outputs_only_save_restarts_nothing(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO])
    app = app_from_notebook(path, reload=True, reload_debounce=0.05)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await client.get("/hello")
        before = await _health(client)
        notebook = json.loads(path.read_text())
        notebook["cells"][1]["outputs"] = [
            {"output_type": "stream", "name": "stdout", "text": ["hello v1 1\n"]}
        ]
        notebook["metadata"]["edited"] = True
        path.write_text(json.dumps(notebook))
        health = await _until(
            client, "/_cellserve/health", lambda r: r.json()["last_reload"] is not None
        )
        assert health.json()["last_reload"]["change"] == "docs"
        assert _kernel_ids(health.json()) == _kernel_ids(before)
        assert (await client.get("/hello")).text == "hello v1 2\n"


async def test_manual_reload_endpoint(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO])
    app = app_from_notebook(path, reload=False)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        write_notebook(path, [SEED, "# GET /hello\nprint('manual')"])
        await anyio.sleep(0.5)
        assert (await client.get("/hello")).text.startswith("hello")  # no watcher
        result = await client.post("/_cellserve/reload")
        assert result.status_code == 200
        assert result.json()["change"] == "routes"
        assert (await client.get("/hello")).text == "manual\n"


async def test_load_during_seed_reload_has_no_failures_and_no_mixing(tmp_path: Path) -> None:
    def cells(version: str) -> list[str]:
        return [
            f"import time\nSEED_VERSION = '{version}'",
            f"# GET /version\ntime.sleep(0.01)\nprint(SEED_VERSION, '{version}')",
        ]

    path = write_notebook(tmp_path / "api.ipynb", cells("a"))
    app = app_from_notebook(path, reload=True, reload_debounce=0.05, kernels=2)
    seen: list[str] = []
    failures: list[str] = []
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def load(stop: anyio.Event) -> None:
            while not stop.is_set():
                try:
                    response = await client.get("/version")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    seen.append(response.text)

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(load, stop)
            await anyio.sleep(0.5)
            write_notebook(path, cells("b"))
            await _until(client, "/version", lambda r: r.text == "b b\n")
            await anyio.sleep(0.5)
            stop.set()
    assert failures == []
    assert set(seen) == {"a a\n", "b b\n"}


def test_sighup_reloads_a_served_notebook(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.servers import free_port

    path = write_notebook(tmp_path / "api.ipynb", [SEED, HELLO])
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellserve.cli",
            "serve",
            str(path),
            "--port",
            str(port),
            "--no-reload",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/_cellserve/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        write_notebook(path, [SEED, "# GET /hello\nprint('after hup')"])
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while httpx.get(url + "/hello").text != "after hup\n":
            assert time.monotonic() < deadline, "SIGHUP did not reload the notebook"
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "reloaded (SIGHUP): ~GET /hello; routes change applied" in stderr
