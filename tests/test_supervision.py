"""Kernels behind a jupyter_client kernel provisioner are supervised like local ones.

The kernelspec ``cellserve-provisioned`` (tests/provisioner/kernels/) names the test-only
provisioner registered by tests/provisioner's dist-info folder; both are found through
``sys.path`` / ``PYTHONPATH`` and ``JUPYTER_PATH`` set here, nothing is installed. The pool
sees the kernel only through the provisioner's public API: liveness from ``poll()``, stopping
through ``shutdown_kernel(now=True)`` and the provisioner's ``kill()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from cellserve import app_from_notebook
from tests.processes import CELLSERVE, Process, assert_gone, is_running
from tests.servers import free_port, serving, write_notebook

PROVISIONER_DIR = Path(__file__).parent / "provisioner"
KERNEL = "cellserve-provisioned"
CELLS = [
    "import os, time\nSEEDED_BY = os.getpid()",
    "# GET /sleep\ntime.sleep(30)",
    "# GET /seeded\nprint(SEEDED_BY)",
]


@pytest.fixture
def provisioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make the test provisioner and its kernelspec findable; returns its event log."""
    log = tmp_path / "provisioner.log"
    monkeypatch.syspath_prepend(str(PROVISIONER_DIR))
    monkeypatch.setenv("JUPYTER_PATH", str(PROVISIONER_DIR))
    monkeypatch.setenv("CELLSERVE_PROVISIONER_LOG", str(log))
    monkeypatch.setenv("CELLSERVE_PROVISIONER_FAULT", str(tmp_path / "fault"))
    yield log


def launched(log: Path) -> list[int]:
    lines = log.read_text().split("\n") if log.exists() else []
    return [int(line.split()[1]) for line in lines if line.startswith("launch ")]


async def health(client: httpx.AsyncClient) -> dict:  # type: ignore[type-arg]
    return (await client.get("/_cellserve/health")).json()  # type: ignore[no-any-return]


async def until_serving_again(client: httpx.AsyncClient, restarts: int) -> dict:  # type: ignore[type-arg]
    with anyio.fail_after(60):
        while True:
            body = await health(client)
            kernel = body["stats"]["kernels"][0]
            if kernel["state"] == "idle" and kernel["restarts"] == restarts:
                return body
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_kill_9_answers_503_promptly_and_the_kernel_is_replaced_and_reseeded(
    tmp_path: Path, provisioned: Path
) -> None:
    path = write_notebook(tmp_path / "api.ipynb", CELLS, kernel=KERNEL)
    app = app_from_notebook(path, timeout=60)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        (first,) = launched(provisioned)
        assert (await client.get("/seeded")).text == f"{first}\n"
        answered: list[httpx.Response] = []

        async def sleeper() -> None:
            response = await client.get("/sleep")
            answered.append(response)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            with anyio.fail_after(30):
                while (await health(client))["kernels"] != {"busy": 1}:
                    await anyio.sleep(0.05)
            os.kill(first, signal.SIGKILL)

        (response,) = answered
        # Noticed by the pool's supervision ("died", 503), not by the 60 s timeout (504).
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["message"] == (
            "api.ipynb GET /sleep: the kernel running this request died; it is being restarted"
        )

        body = await until_serving_again(client, restarts=1)
        second = launched(provisioned)[-1]
        assert second != first and body["stats"]["kernels"][0]["pid"] == second
        assert (await client.get("/seeded")).text == f"{second}\n"  # seed code ran again
        assert (await client.get("/_cellserve/ready")).status_code == 200
        assert not is_running(first)


@pytest.mark.anyio
async def test_unexpected_error_in_the_slot_task_is_logged_and_the_slot_recovers(
    tmp_path: Path, provisioned: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "cellserve.pool")
    path = write_notebook(tmp_path / "api.ipynb", CELLS, kernel=KERNEL)
    app = app_from_notebook(path, timeout=60)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        (first,) = launched(provisioned)
        (tmp_path / "fault").touch()  # the provisioner's next poll() raises
        await until_serving_again(client, restarts=0)  # (idle again after the restart)
        with anyio.fail_after(60):
            while len(launched(provisioned)) < 2 or (await health(client))["kernels"] != {
                "idle": 1
            }:
                await anyio.sleep(0.05)
        second = launched(provisioned)[-1]
        assert (await client.get("/seeded")).text == f"{second}\n"
        assert_gone([first])
    (record,) = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert record.exc_info is not None
    assert "injected provisioner fault" in repr(record.exc_info[1].__cause__)


def test_sigterm_leaves_no_kernel_even_one_busy_in_a_cell(
    tmp_path: Path, provisioned: Path
) -> None:
    path = write_notebook(tmp_path / "api.ipynb", CELLS, kernel=KERNEL)
    port = free_port()
    env = {
        "PYTHONPATH": os.pathsep.join([str(PROVISIONER_DIR), *sys.path]),
        "JUPYTER_PATH": str(PROVISIONER_DIR),
        "CELLSERVE_PROVISIONER_LOG": str(provisioned),
        "CELLSERVE_SHUTDOWN_GRACE": "1",
    }
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--kernels", "2"]
    server = Process(args, tmp_path / "server.log", env=env)
    url = f"http://127.0.0.1:{port}"
    busy = threading.Thread(target=lambda: _ignore_errors(httpx.get, url + "/sleep", timeout=60))
    try:
        server.wait_ready(url)
        busy.start()
        deadline = time.monotonic() + 30
        while httpx.get(url + "/_cellserve/health").json()["kernels"].get("busy") != 1:
            assert time.monotonic() < deadline, "the /sleep request never reached a kernel"
            time.sleep(0.05)
        pids = launched(provisioned)
        assert len(pids) == 2
        server.popen.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, server.output
        assert_gone(pids)
    finally:
        server.close()
        busy.join(timeout=60)


def _ignore_errors(function: Callable[..., object], *args: object, **kwargs: object) -> None:
    with contextlib.suppress(httpx.HTTPError):
        function(*args, **kwargs)
