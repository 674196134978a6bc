"""``--kernel-memory-limit``: a cell allocating past it gets 503 and only its kernel is replaced."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import pytest

from cellserve import app_from_notebook
from cellserve.exceptions import KernelError, SettingsError
from cellserve.memory_limit import limit_kernel_memory, limited_command
from cellserve.settings import Settings, to_bytes
from tests.processes import assert_gone
from tests.servers import ServerThread

GIB = 1024**3
LIMIT = 1536 * 1024**2  # a bare Python kernel has about 0.7 GiB of address space
CELLS = [
    "import os, time\nSEEDED_IN = os.getpid()",
    "# GET /hog\nblock = bytearray(4 * 1024**3)\nprint(len(block))",
    "# GET /sleep\ntime.sleep(1.5)\nprint(SEEDED_IN, os.getpid())",
]


def test_sizes_in_flags_and_environment() -> None:
    assert to_bytes("1073741824") == GIB
    assert to_bytes("512M") == 512 * 1024**2
    assert to_bytes("1.5GiB") == int(1.5 * GIB)
    assert to_bytes(" 2g ") == 2 * GIB
    with pytest.raises(ValueError, match="not a size"):
        to_bytes("lots")
    assert Settings.load(environ={"CELLSERVE_KERNEL_MEMORY_LIMIT": "2G"}).kernel_memory_limit == (
        2 * GIB
    )
    assert Settings.load(environ={}, kernel_memory_limit="1G").kernel_memory_limit == GIB
    with pytest.raises(SettingsError, match="CELLSERVE_KERNEL_MEMORY_LIMIT"):
        Settings.load(environ={"CELLSERVE_KERNEL_MEMORY_LIMIT": "1 lot"})
    with pytest.raises(SettingsError, match="kernel_memory_limit"):
        Settings(kernel_memory_limit=0)


def test_the_kernel_command_is_wrapped_and_remote_kernels_are_refused() -> None:
    command = limited_command(["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], 7)
    assert command[:2] == [sys.executable, "-c"]
    assert command[3] == "7"
    assert command[4:] == [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert "RLIMIT_AS" in command[2]
    remote = SimpleNamespace(
        kernel_name="k8s_python",
        kernel_spec=SimpleNamespace(
            argv=["python"], metadata={"kernel_provisioner": {"provisioner_name": "k8s"}}
        ),
    )
    with pytest.raises(KernelError, match="'k8s' provisioner"):
        limit_kernel_memory(remote, GIB)
    assert remote.kernel_spec.argv == ["python"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")
@pytest.mark.parametrize("execution", ["fast", "execute"])
def test_a_cell_past_the_limit_gets_503_and_only_its_kernel_is_replaced(
    execution: str, notebook
) -> None:
    app = app_from_notebook(
        notebook(CELLS), kernels=2, kernel_memory_limit="1536M", execution=execution
    )
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        health = _when_all_idle(client)
        kernels = [k["pid"] for k in health["stats"]["kernels"]]
        for pid in kernels:
            assert psutil.Process(pid).rlimit(psutil.RLIMIT_AS) == (LIMIT, LIMIT)

        # One kernel sleeps through the other's failed allocation, and answers.
        sleeping: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: sleeping.append(client.get("/sleep")))
        thread.start()
        deadline = time.monotonic() + 30
        while client.get("/_cellserve/health").json()["kernels"] != {"busy": 1, "idle": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        hog = client.get("/hog")
        assert hog.status_code == 503
        assert "memory limit (1536 MiB" in hog.json()["message"]
        thread.join(timeout=60)
        assert sleeping[0].status_code == 200
        survivor = int(sleeping[0].text.split()[1])

        # The hog's kernel is replaced by a new, seeded one; the other kernel kept its process.
        health = _when_all_idle(client)
        now = {k["pid"]: k for k in health["stats"]["kernels"]}
        assert survivor in now
        (replaced,) = set(kernels) - {survivor}
        assert_gone([replaced])
        (new,) = set(now) - {survivor}
        assert now[new]["restarts"] == 1
        assert "memory limit" in now[new]["last_error"]
        # Two requests at once take both kernels; the seed ran in each (also the new one).
        with ThreadPoolExecutor(2) as pool:
            answers = set(pool.map(lambda _: client.get("/sleep").text, range(2)))
        assert answers == {f"{pid} {pid}\n" for pid in (survivor, new)}


def _when_all_idle(client: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = client.get("/_cellserve/health").json()
        if health["kernels"] == {"idle": 2}:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
