"""Pipelined kernels on real kernels: the next request waits inside the busy kernel.

A kernel runs the calls it was sent in order. These tests check what must still hold when a
second call is already in the kernel: a timeout or an interrupt hits only the call that
overran, the call behind it is answered correctly, and a crash answers both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from cellserve import app_from_notebook
from cellserve.cells import CellCall
from cellserve.exceptions import KernelError
from cellserve.kernels import Kernel, KernelConfig
from cellserve.notebook import SeedCell
from cellserve.pool import KernelPool, PoolLimits
from tests.servers import ServerThread, write_notebook

SEED = "import json, os, time\n\ndef arg(name):\n    return json.loads(REQUEST)['args'][name][0]"

ROUTES = [
    # Overruns its 3 s timeout.
    "# GET /overrun\n# cellserve: timeout=3\ntime.sleep(30)",
    # A shorter timeout than the call ahead of it runs: it counts from when this call starts.
    "# GET /pid\n# cellserve: timeout=1.5\nprint(os.getpid())",
    "# GET /die\ntime.sleep(float(arg('after')))\nos._exit(1)",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = write_notebook(tmp_path_factory.mktemp("pipelining") / "api.ipynb", [SEED, *ROUTES])
    with ServerThread(app_from_notebook(path, kernels=1, reload=False)) as running:
        yield running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def kernel_stats(http: httpx.Client) -> dict[str, Any]:
    kernels: list[dict[str, Any]] = http.get("/_cellserve/health").json()["stats"]["kernels"]
    return kernels[0]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_timeout_interrupts_only_the_call_that_overran(http: httpx.Client) -> None:
    with ThreadPoolExecutor(2) as threads:
        overrun = threads.submit(http.get, "/overrun")
        wait_until(lambda: kernel_stats(http)["in_flight"] == 1, "the kernel runs /overrun")
        behind = threads.submit(http.get, "/pid")
        # Sent to the busy kernel at once, not queued in the server.
        wait_until(lambda: kernel_stats(http)["in_flight"] == 2, "/pid is pipelined")
        assert http.get("/_cellserve/health").json()["stats"]["queue_depth"] == 0
        assert overrun.result().status_code == 504
        answer = behind.result()
    # /pid's 1.5 s started when /overrun ended, not when /pid was sent 3 s earlier.
    assert answer.status_code == 200, answer.text
    assert int(answer.text) == kernel_stats(http)["pid"]
    wait_until(lambda: kernel_stats(http)["state"] == "idle", "the kernel is idle again")
    assert kernel_stats(http)["in_flight"] == 0


def test_a_crash_answers_the_call_running_and_the_one_behind_it(http: httpx.Client) -> None:
    pid = kernel_stats(http)["pid"]
    with ThreadPoolExecutor(2) as threads:
        dying = threads.submit(http.get, "/die", params={"after": "1"})
        wait_until(lambda: kernel_stats(http)["in_flight"] == 1, "the kernel runs /die")
        behind = threads.submit(http.get, "/pid")
        wait_until(lambda: kernel_stats(http)["in_flight"] == 2, "/pid is pipelined")
        for response in (dying.result(), behind.result()):
            assert response.status_code == 503, response.text
            assert "died" in response.json()["message"]
    wait_until(lambda: kernel_stats(http)["state"] == "idle", "a new kernel serves")
    assert kernel_stats(http)["pid"] != pid
    assert http.get("/pid").status_code == 200


@pytest.mark.anyio
async def test_an_interrupt_that_reaches_the_call_behind_sends_it_again(tmp_path: Path) -> None:
    """The kernel finished the call an interrupt was meant for just before the signal came,
    so the signal stops the next call instead: that call runs again and answers normally."""
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path)
    kernel = await Kernel.start(config)
    try:
        await kernel.seed([SeedCell(1, "import time\nRUNS = 0")])
        started = tmp_path / "started"
        quick = kernel.begin(CellCall("print('first')", "{}"))
        slow = kernel.begin(
            CellCall(
                f"RUNS += 1\nopen({str(started)!r}, 'w').close()\ntime.sleep(1)\nprint(RUNS)", "{}"
            )
        )
        assert (await kernel.finish(quick, timeout=30)).cell.stdout == "first\n"
        with anyio.fail_after(60):
            while not started.exists():  # the second call runs in the kernel now
                await anyio.sleep(0.02)
        assert await kernel.interrupt(grace=10)  # meant for the first call, hits the second
        outcome = await kernel.finish(slow, timeout=30)
        assert outcome.cell.error is None
        assert outcome.cell.stdout == "2\n"  # it ran twice: interrupted, then sent again
    finally:
        await kernel.shutdown()


@pytest.mark.anyio
async def test_a_call_abandoned_behind_the_running_one_keeps_its_place(tmp_path: Path) -> None:
    """The kernel still runs a pipelined call its requester gave up on; the call sent after
    it starts its timeout only once the kernel is done with that one."""
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path)
    kernel = await Kernel.start(config)
    release = tmp_path / "release"
    try:
        await kernel.seed([SeedCell(1, "import os, time")])
        wait = f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\nprint('A')"
        running = kernel.begin(CellCall(wait, "{}"))
        abandoned = kernel.begin(CellCall("time.sleep(3)\nprint('B')", "{}"))
        with anyio.move_on_after(0.2):  # its requester leaves while it waits in the kernel
            await kernel.finish(abandoned, timeout=30)
        after = kernel.begin(CellCall("print('C')", "{}"))
        release.touch()
        assert (await kernel.finish(running, timeout=30)).cell.stdout == "A\n"
        # C's 2 s start after B's 3 s, not when A ended.
        assert (await kernel.finish(after, timeout=2)).cell.stdout == "C\n"
    finally:
        await kernel.shutdown()


@pytest.mark.anyio
async def test_a_call_left_behind_the_running_one_still_takes_its_place_in_the_depth(
    tmp_path: Path,
) -> None:
    """At depth 2, a kernel running one call and still holding one whose requester left
    takes no third: the next request waits in the queue until the running call ends."""
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path)
    limits = PoolLimits(size=1, pipeline_depth=2, timeout=60)
    pool = KernelPool([SeedCell(1, "import os, time")], limits, lambda: Kernel.start(config))
    release = tmp_path / "release"
    hold = f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\nprint('A')"
    answers: dict[str, str] = {}

    async def request(name: str, source: str) -> None:
        async with pool.lease(CellCall(source, "{}", route=f"GET /{name}")) as lease:
            answers[name] = (await lease.run()).cell.stdout

    async def until(condition: Callable[[], bool]) -> None:
        with anyio.fail_after(30):
            while not condition():
                await anyio.sleep(0.01)

    def slot() -> Any:
        return pool.stats().kernels[0]

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            tg.start_soon(request, "a", hold)
            await until(lambda: slot().in_flight == 1)
            async with anyio.create_task_group() as left:
                left.start_soon(request, "b", "print('B')")
                await until(lambda: slot().in_flight == 2)
                left.cancel_scope.cancel()  # B's requester leaves; the kernel still holds B
            tg.start_soon(request, "c", "print('C')")
            await until(lambda: pool.stats().queue_depth == 1 or slot().in_flight == 2)
            assert (pool.stats().queue_depth, slot().in_flight) == (1, 1)
            release.touch()
            await until(lambda: "c" in answers)
            await pool.close()
    assert answers == {"a": "A\n", "c": "C\n"}


@pytest.mark.anyio
async def test_a_kernel_is_seeded_once_and_then_read_without_nbclient(tmp_path: Path) -> None:
    """After seeding, the kernel's sockets are read by cellserve alone: a second seed (which
    would need nbclient's reads) is refused instead of hanging, and calls still answer."""
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path)
    kernel = await Kernel.start(config)
    try:
        await kernel.seed([SeedCell(1, "N = 41")])
        with pytest.raises(KernelError, match="seeded already"):
            await kernel.seed([SeedCell(1, "N = 0")])
        fast = kernel.begin(CellCall("print(N + 1)", "{}"))
        assert (await kernel.finish(fast, timeout=30)).cell.stdout == "42\n"
        executed = kernel.begin(CellCall("print(N)", "{}", stream=True))  # the execute path
        assert (await kernel.finish(executed, timeout=30)).cell.stdout == "41\n"
    finally:
        await kernel.shutdown()
