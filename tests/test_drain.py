"""Graceful drain: the ready route and the middleware, then two real replicas behind a
readiness-checking proxy, restarted in turn.

A rolling restart as Kubernetes does it (maxSurge 1, maxUnavailable 0): start a new replica,
wait until it is ready, SIGTERM an old one; repeat for the other. Steady load goes through
the proxy the whole time. Two slow requests sent straight to each old replica, the first
running when SIGTERM arrives with requests queued behind it, outlast the drain delay and
must still finish.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from cellserve.app import status_routes
from cellserve.auth import TokenAuthMiddleware
from cellserve.shutdown import Drain, DrainMiddleware
from tests.balancer import RoundRobinProxy
from tests.processes import CELLSERVE, Process, assert_gone
from tests.servers import free_port, serving

DRAIN_DELAY = 2.0
CELLS = [
    "import os, time",
    "# GET /work\ntime.sleep(0.02)\nprint(os.getpid())",
    "# GET /slow\ntime.sleep(2.5)\nprint(os.getpid())",
]
LOAD_CLIENTS = 4
MAX_REQUESTS = 20_000  # a bound on the load, which normally stops when the test is done


class Replica:
    def __init__(self, path: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [CELLSERVE, "serve", str(path), "--port", str(self.port), "--no-reload"]
        args += ["--drain-delay", str(DRAIN_DELAY)]
        self.process = Process(args, log, {"CELLSERVE_SHUTDOWN_GRACE": "15"})

    async def start(self) -> Replica:
        await anyio.to_thread.run_sync(self.process.wait_ready, self.url)
        return self

    async def health(self, client: httpx.AsyncClient) -> dict[str, Any]:
        answer: dict[str, Any] = (await client.get(self.url + "/_cellserve/health")).json()
        return answer


class Load:
    """`clients` loops of GET /work through the proxy, recording every answer."""

    def __init__(self, proxy_url: str) -> None:
        self.proxy_url = proxy_url
        self.answers: Counter[str] = Counter()  # status code, or the transport error's name
        self.failures: list[str] = []
        self.served_by: Counter[str] = Counter()  # 200s by the pid of the kernel
        self.done = anyio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.proxy_url, timeout=60) as http:
            while not self.done.is_set() and self.answers.total() < MAX_REQUESTS:
                try:
                    response = await http.get("/work")
                except httpx.HTTPError as exc:
                    self.answers[type(exc).__name__] += 1
                    self.failures.append(repr(exc))
                    continue
                self.answers[str(response.status_code)] += 1
                if response.status_code == 200:
                    self.served_by[response.text.strip()] += 1
                else:
                    self.failures.append(f"{response.status_code} {response.text}")


async def _until(condition: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.02)


async def _readiness_until_closed(url: str, signalled: float) -> list[tuple[float, int]]:
    """Every /_cellserve/ready status (and when) until the server stops accepting."""
    seen = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=5, limits=limits) as probe:
        while True:
            try:
                status = (await probe.get(url + "/_cellserve/ready")).status_code
            except httpx.TransportError:
                return seen
            seen.append((time.monotonic() - signalled, status))
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_rolling_restart_under_load_fails_no_request(notebook, tmp_path: Path) -> None:
    path = notebook(CELLS)
    started: list[Replica] = []

    def replica() -> Replica:
        started.append(Replica(path, tmp_path / f"replica-{len(started)}.log"))
        return started[-1]

    slow: list[int] = []
    readiness: list[list[tuple[float, int]]] = []
    client = httpx.AsyncClient(timeout=60)
    try:
        old = [await replica().start(), await replica().start()]
        proxy = RoundRobinProxy([r.url for r in old])
        async with serving(proxy.app) as proxy_url, anyio.create_task_group() as tg:
            tg.start_soon(proxy.watch)
            await _until(_true_when(lambda: len(proxy.ready) == 2))
            load = Load(proxy_url)

            async def slow_request(url: str) -> None:
                slow.append((await client.get(url + "/slow")).status_code)

            async def replace(leaving: Replica) -> None:
                """Start a new replica, wait until the proxy uses it, then stop `leaving`."""
                arriving = await replica().start()
                proxy.backends.append(arriving.url)
                await _until(_true_when(lambda: arriving.url in proxy.ready))
                kernels = [k["pid"] for k in (await leaving.health(client))["stats"]["kernels"]]

                # A slow request running and others queued when SIGTERM comes; the slow ones
                # outlast the drain delay, so they are still there when accepting stops.
                tg.start_soon(slow_request, leaving.url)
                await _until(lambda: _health_is(leaving, client, "kernels", {"busy": 1}))
                tg.start_soon(slow_request, leaving.url)
                await _until(lambda: _queued(leaving, client))

                leaving.process.popen.send_signal(signal.SIGTERM)
                readiness.append(await _readiness_until_closed(leaving.url, time.monotonic()))
                exit_code = await anyio.to_thread.run_sync(leaving.process.wait, 60)
                assert exit_code == 0, leaving.process.output
                proxy.backends.remove(leaving.url)
                await anyio.to_thread.run_sync(assert_gone, kernels)

            async with anyio.create_task_group() as clients:
                for _ in range(LOAD_CLIENTS):
                    clients.start_soon(load.run)
                await _until(_true_when(lambda: load.answers["200"] >= 20))
                for leaving in old:
                    await replace(leaving)
                load.done.set()
            tg.cancel_scope.cancel()
        await proxy.aclose()
    finally:
        await client.aclose()
        for r in started:
            r.process.close()

    print(
        f"\nrolling restart of 2 replicas: {dict(load.answers)}, by kernel {dict(load.served_by)}"
    )
    assert load.failures == [], _server_errors(started)
    assert slow == [200] * 4  # the running and the queued slow requests of each old replica
    assert len(load.served_by) == 4  # every replica, old and new, served some of the load
    for statuses in readiness:
        # 503 from the first answer after SIGTERM, and answering for the drain delay.
        assert statuses, "the replica stopped accepting at once"
        assert {status for _, status in statuses} == {503}, statuses
        assert statuses[-1][0] >= DRAIN_DELAY * 0.9, statuses


def _server_errors(replicas: list[Replica]) -> str:
    """The replicas' log lines about failed requests, to explain a failure."""
    lines = [
        f"{replica.url}: {line}"
        for replica in replicas
        for line in replica.process.output.splitlines()
        if " 500 " in line or " 502 " in line or " 503 " in line or "Error" in line
    ]
    return "\n".join(lines[-40:])


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def _queued(replica: Replica, client: httpx.AsyncClient) -> bool:
    return bool((await replica.health(client))["queue"] >= 1)


async def _health_is(replica: Replica, client: httpx.AsyncClient, key: str, value: object) -> bool:
    return (await replica.health(client))[key] == value


@pytest.mark.anyio
async def test_draining_turns_ready_to_503_after_auth_and_closes_connections() -> None:
    """cellserve's own ready route, behind auth, with the drain middleware around the app."""

    async def hello(_: Request) -> Response:
        return PlainTextResponse("hi", headers={"Connection": "keep-alive"})

    ready = status_routes(lambda: (True, {"status": "ok", "pid": 1}), list)
    inner = Starlette(
        routes=[*ready, Route("/hello", hello)],
        middleware=[Middleware(TokenAuthMiddleware, token="t")],
    )
    drain = Drain()
    transport = httpx.ASGITransport(app=DrainMiddleware(inner, drain))
    auth = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/_cellserve/ready", headers=auth)).status_code == 200
        assert (await client.get("/hello", headers=auth)).headers["connection"] == "keep-alive"
        drain.begin()
        answer = await client.get("/_cellserve/ready", headers=auth)
        assert answer.status_code == 503
        assert answer.json() == {"status": "draining", "pid": 1}
        assert answer.headers["connection"] == "close"
        assert (await client.get("/_cellserve/ready")).status_code == 401  # auth still first
        hello_answer = await client.get("/hello", headers=auth)
        assert hello_answer.text == "hi"
        assert hello_answer.headers.get_list("connection") == ["close"]
