"""The reload scenario: edit the served notebook under load; how long until it shows, and
did any request fail?

cellserve runs with ``--reload`` on a copy of the benchmark notebook while several httpx
clients call ``GET /version`` back to back. The notebook is then saved twice, the way
Jupyter saves (a temporary file moved over the original):

1. an endpoint-only edit (``/version`` answers ``"endpoint": 2``): a new route table on
   the same, still seeded kernels;
2. a seed edit (``MODEL_VERSION = "2"``): a new pool of kernels is started and seeded (the
   random forest trained again) beside the old one, then swapped in.

For each edit, the time from the save to the first reply with the new body; over the whole
run, every non-2xx reply and every transport error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench_notebook import ENDPOINTS, SEEDS, write_notebook
from servers import RunningServer, cellserve_spec

_SEEN_TIMEOUT = 120.0


@dataclass(frozen=True)
class ReloadTrial:
    """One run of the scenario; times in seconds, None when the edit never showed."""

    kernels: int
    clients: int
    endpoint_edit_s: float | None
    seed_edit_s: float | None
    server_endpoint_reload_s: float | None
    server_seed_reload_s: float | None
    requests: int
    errors: int
    error_kinds: dict[str, int]


@dataclass
class _Traffic:
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wanted: str = ""
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    seen_at: float = 0.0

    def expect(self, text: str) -> None:
        self.wanted, self.seen = text, asyncio.Event()

    def record(self, status: int | None, body: str, error: str | None = None) -> None:
        self.requests += 1
        if error is not None or status is None or not 200 <= status < 300:
            kind = error or f"HTTP {status}"
            self.errors[kind] = self.errors.get(kind, 0) + 1
        elif self.wanted and self.wanted in body and not self.seen.is_set():
            self.seen_at = time.monotonic()
            self.seen.set()


async def _client(url: str, traffic: _Traffic, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=60.0) as client:
        while not stop.is_set():
            try:
                response = await client.get(url)
            except httpx.TransportError as exc:
                traffic.record(None, "", type(exc).__name__)
                await asyncio.sleep(0.01)
            else:
                traffic.record(response.status_code, response.text)


def _last_reload_seconds(server: RunningServer) -> float | None:
    last = httpx.get(server.url("/_cellserve/health"), timeout=10.0).json()["last_reload"]
    return float(last["seconds"]) if last else None


async def _edit_and_wait(
    path: Path, traffic: _Traffic, endpoints: dict[str, str], seeds: tuple[str, ...], wanted: str
) -> float | None:
    traffic.expect(wanted)
    saved = time.monotonic()
    write_notebook(path, seeds, endpoints)
    try:
        await asyncio.wait_for(traffic.seen.wait(), _SEEN_TIMEOUT)
    except TimeoutError:
        return None
    return traffic.seen_at - saved


async def _scenario(
    server: RunningServer, path: Path, kernels: int, clients: int, settle: float
) -> ReloadTrial:
    traffic = _Traffic()
    stop = asyncio.Event()
    url = server.url("/version")
    endpoints = dict(ENDPOINTS)
    tasks = [asyncio.create_task(_client(url, traffic, stop)) for _ in range(clients)]
    try:
        await asyncio.sleep(settle)
        endpoints["version"] = ENDPOINTS["version"].replace('"endpoint": 1', '"endpoint": 2')
        endpoint_s = await _edit_and_wait(path, traffic, endpoints, SEEDS, '"endpoint": 2')
        server_endpoint_s = await asyncio.to_thread(_last_reload_seconds, server)
        await asyncio.sleep(settle)
        seeds = (SEEDS[0], SEEDS[1].replace('MODEL_VERSION = "1"', 'MODEL_VERSION = "2"'))
        seed_s = await _edit_and_wait(path, traffic, endpoints, seeds, '"model": "2"')
        server_seed_s = await asyncio.to_thread(_last_reload_seconds, server)
        await asyncio.sleep(settle)  # the old pool drains and shuts down under load too
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return ReloadTrial(
        kernels=kernels,
        clients=clients,
        endpoint_edit_s=endpoint_s,
        seed_edit_s=seed_s,
        server_endpoint_reload_s=server_endpoint_s,
        server_seed_reload_s=server_seed_s,
        requests=traffic.requests,
        errors=sum(traffic.errors.values()),
        error_kinds=dict(traffic.errors),
    )


def run_reload_trial(work_dir: Path, kernels: int, clients: int, settle: float) -> ReloadTrial:
    """Serve a fresh copy of the notebook with ``--reload``, load it, edit it twice."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = write_notebook(work_dir / "notebook.ipynb")
    server = RunningServer.launch(cellserve_spec(path, kernels), work_dir)
    try:
        return asyncio.run(_scenario(server, path, kernels, clients, settle))
    finally:
        server.stop()
