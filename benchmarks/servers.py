"""Start, probe and stop the servers under test, each in its own process group.

A ``ServerSpec`` says how to launch one server (cellserve's CLI, hypercorn's CLI with a
chosen event loop, or Kernel Gateway from its own virtualenv); ``RunningServer`` is one
launched instance: when it first answered, its kernels' pids, and a stop that leaves no
process behind (kernels run in sessions of their own, so they are tracked by pid).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

BENCHMARKS = Path(__file__).resolve().parent
KG_VENV = BENCHMARKS / ".kg-venv"
KG_VERSION = "3.0.1"
_BIN = Path(sys.executable).parent


class ServerError(Exception):
    """A server did not start, or died while being measured."""


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server: `name` labels results, `argv` may hold ``{port}``."""

    name: str
    kernels: int  # per worker process
    argv: tuple[str, ...]
    has_health: bool = True
    unset_env: tuple[str, ...] = ()  # variables the server must not inherit
    workers: int = 1
    concurrencies: tuple[int, ...] | None = None  # None: any; the HTTP floor takes only 1

    def command(self, port: int) -> list[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


def cellserve_spec(
    notebook: Path, kernels: int, *, execution: str = "fast", workers: int = 1
) -> ServerSpec:
    """cellserve's own CLI with its defaults: uvloop, reload on, health, metrics and one
    access-log line per request (to the server's log file)."""
    name = "cellserve" if execution == "fast" else f"cellserve-{execution}"
    argv = (
        str(_BIN / "cellserve"),
        "serve",
        str(notebook),
        "--port",
        "{port}",
        "--kernels",
        str(kernels),
        "--execution",
        execution,
        "--workers",
        str(workers),
    )
    return ServerSpec(name, kernels, argv, workers=workers)


def hypercorn_spec(notebook: Path, kernels: int, loop: str) -> ServerSpec:
    """cellserve's app under hypercorn's own CLI with worker class `loop` (asyncio/uvloop)."""
    factory = f"cellserve:app_from_notebook({str(notebook)!r}, kernels={kernels}, reload=False)"
    argv = (
        str(_BIN / "hypercorn"),
        "--worker-class",
        loop,
        "--bind",
        "127.0.0.1:{port}",
        factory,
    )
    return ServerSpec(f"hypercorn-{loop}", kernels, argv)


def http_floor_spec() -> ServerSpec:
    """``http_floor.py``: hypercorn and a bare ASGI app over one cellserve kernel."""
    argv = (sys.executable, str(BENCHMARKS / "http_floor.py"), "127.0.0.1:{port}")
    return ServerSpec("http-floor", 1, argv, has_health=False, concurrencies=(1,))


def kernel_gateway_spec(notebook: Path, kernels: int) -> ServerSpec:
    """Kernel Gateway's notebook-http mode from benchmarks/.kg-venv, default settings."""
    argv = (
        str(KG_VENV / "bin" / "jupyter"),
        "kernelgateway",
        "--KernelGatewayApp.api=kernel_gateway.notebook_http",
        f"--KernelGatewayApp.seed_uri={notebook}",
        "--KernelGatewayApp.ip=127.0.0.1",
        "--KernelGatewayApp.port={port}",
        f"--KernelGatewayApp.prespawn_count={kernels}",
    )
    # PYTHONPATH may point at the snapshot of cellserve under test, which is not KG's business.
    return ServerSpec("kg", kernels, argv, has_health=False, unset_env=("PYTHONPATH",))


def ensure_kernel_gateway() -> None:
    """Install Kernel Gateway into its own virtualenv from PyPI, once."""
    if (KG_VENV / "bin" / "jupyter-kernelgateway").exists():
        return
    print(f"installing jupyter_kernel_gateway=={KG_VERSION} into {KG_VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KG_VENV)], check=True)
    packages = [f"jupyter_kernel_gateway=={KG_VERSION}", "ipykernel", "scikit-learn"]
    pip = [str(KG_VENV / "bin" / "pip"), "install", "--quiet", *packages]
    subprocess.run(pip, check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """One launched server. Use ``launch()``; always ``stop()`` it (also on errors)."""

    def __init__(self, spec: ServerSpec, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{spec.name}-k{spec.kernels}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(
            spec.command(self.port),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=BENCHMARKS,
            env={
                **{k: v for k, v in os.environ.items() if k not in spec.unset_env},
                **(env or {}),
            },
            start_new_session=True,
        )
        self.first_ok: float | None = None
        self.all_ready: float | None = None
        # Process objects, not bare pids: psutil refuses to signal a pid that was reused.
        self._kernels: dict[int, psutil.Process] = {}

    @classmethod
    def launch(
        cls, spec: ServerSpec, log_dir: Path, *, timeout: float = 180.0, probe: str = "/ping"
    ) -> RunningServer:
        """Launch and wait until `probe` answers 200 and every kernel is up."""
        server = cls(spec, log_dir)
        try:
            server.wait_ready(timeout, probe)
        except BaseException:
            server.stop()
            raise
        return server

    def url(self, path: str) -> str:
        return self.base_url + path

    def wait_ready(self, timeout: float, probe: str = "/ping") -> None:
        """Record seconds from spawn to the first 200 on `probe`, then to all kernels up."""
        deadline = self.spawned + timeout
        with httpx.Client(timeout=5.0) as client:
            while self.first_ok is None:
                self._check_alive(deadline)
                with contextlib.suppress(httpx.TransportError):
                    if client.get(self.url(probe)).status_code == 200:
                        self.first_ok = time.monotonic() - self.spawned
                        break
                time.sleep(0.01)
            while len(self.kernel_pids()) < self.spec.kernels:
                self._check_alive(deadline)
                time.sleep(0.02)
            if self.spec.workers > 1:
                self._wait_all_workers(client, deadline)
            self.all_ready = time.monotonic() - self.spawned

    def _wait_all_workers(self, client: httpx.Client, deadline: float) -> None:
        """Every worker's kernels are up: all kernel processes exist, and 20 health answers
        in a row (new connections, so from any worker) show every kernel idle."""
        total = self.spec.kernels * self.spec.workers
        while sum(1 for p in _descendants(self.process.pid) if _is_kernel(p)) < total:
            self._check_alive(deadline)
            time.sleep(0.05)
        in_a_row = 0
        while in_a_row < 20:
            self._check_alive(deadline)
            health = client.get(self.url("/_cellserve/health"), headers={"Connection": "close"})
            idle = health.json().get("kernels", {}).get("idle", 0)
            in_a_row = in_a_row + 1 if idle == self.spec.kernels else 0
            time.sleep(0.02)

    def drain(self, timeout: float = 60.0, quick: float = 0.25) -> float:
        """Wait until no kernel is busy with requests whose clients already left; seconds.

        When wrk closes its connections at the end of a window, a server may still run the
        requests it had queued (Kernel Gateway does; cellserve drops queued requests whose
        client is gone). Rounds of one ``GET /ping`` per kernel, plus one, queue behind that
        backlog; once a round comes back within `quick` seconds, every kernel is free.
        """
        started = time.monotonic()
        width = self.spec.kernels + 1
        with httpx.Client(timeout=timeout) as client, ThreadPoolExecutor(width) as pool:
            while time.monotonic() - started < timeout:
                round_started = time.monotonic()
                list(pool.map(lambda _: client.get(self.url("/ping")), range(width)))
                if time.monotonic() - round_started < quick:
                    break
        return time.monotonic() - started

    def _check_alive(self, deadline: float) -> None:
        if self.process.poll() is not None:
            raise ServerError(
                f"{self.spec.name} exited with {self.process.returncode}; see {self.log_path}"
            )
        if time.monotonic() > deadline:
            raise ServerError(f"{self.spec.name} did not become ready; see {self.log_path}")

    def kernel_pids(self) -> list[int]:
        """Pids of the kernels serving requests now (idle or busy, for cellserve)."""
        if self.spec.has_health:
            health = httpx.get(self.url("/_cellserve/health"), timeout=10.0).json()
            kernels = health.get("stats", {}).get("kernels", [])
            pids = [k["pid"] for k in kernels if k["pid"] and k["state"] in ("idle", "busy")]
        else:
            pids = [p.pid for p in _descendants(self.process.pid) if _is_kernel(p)]
        for pid in pids:
            if pid not in self._kernels:
                with contextlib.suppress(psutil.Error):
                    self._kernels[pid] = psutil.Process(pid)
        return pids

    def rss_mb(self) -> tuple[list[float], float]:
        """RSS in MiB of each kernel, and of the server's own processes (kernels excluded)."""
        kernels = set(self.kernel_pids())
        kernel_rss = [_rss_mb(pid) for pid in sorted(kernels)]
        server = [self.process.pid, *(p.pid for p in _descendants(self.process.pid))]
        server_rss = sum(_rss_mb(pid) for pid in server if pid not in kernels)
        return kernel_rss, server_rss

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server's own processes (every worker), and by all
        their kernels (told apart by their command line)."""
        children = _descendants(self.process.pid)
        kernels = {p.pid for p in children if _is_kernel(p)}
        tree = [self.process.pid, *(p.pid for p in children)]
        server = sum(cpu_seconds(pid) for pid in tree if pid not in kernels)
        return server, sum(cpu_seconds(pid) for pid in kernels)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL the process group and any kernel still alive."""
        with contextlib.suppress(Exception):
            self.kernel_pids()
        for process in _descendants(self.process.pid):
            if _is_kernel(process):
                self._kernels.setdefault(process.pid, process)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        _reap(list(self._kernels.values()), grace=5.0)
        self._log.close()


def _descendants(pid: int) -> Sequence[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _is_kernel(process: psutil.Process) -> bool:
    try:
        return any("ipykernel_launcher" in part for part in process.cmdline())
    except psutil.Error:
        return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process `pid` (0.0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except psutil.Error:
        return 0.0


def _reap(processes: list[psutil.Process], grace: float) -> None:
    """Wait for `processes` to exit; SIGKILL the ones still running after `grace` seconds."""
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
