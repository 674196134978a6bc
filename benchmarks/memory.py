"""Measure what a cellserve deployment holds in memory: per server process and per kernel.

    CALIFORNIA_HOUSING_CSV=/path/to/california_housing.csv \\
        python benchmarks/memory.py ../examples/house_prices/house_prices.ipynb --kernels 2

starts ``cellserve serve`` (``--workers`` too, if given), waits until it is ready, sends a
few requests to every GET route without path parameters, then reads each process of the
tree with psutil: RSS (resident, counting shared libraries in full), USS (the memory
that would be freed if that process alone exited) and VMS (address space, which
``--kernel-memory-limit`` caps). The sizing rule in the README uses USS
per process plus the RSS of the first process (the shared libraries, counted once).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

_BIN = Path(sys.executable).parent
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcessMemory:
    role: str  # "server" (serving requests), "kernel", "parent" or "helper" (with workers)
    pid: int
    rss: int
    uss: int
    vms: int  # address space: what --kernel-memory-limit (RLIMIT_AS) counts


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(url + "/_cellserve/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready after {timeout} s")


def _all_kernels_idle(url: str, kernels: int, workers: int) -> bool:
    health = httpx.get(url + "/_cellserve/health", timeout=5).json()
    return bool(health.get("kernels") == {"idle": kernels}) or workers > 1


def _exercise(url: str, requests: int) -> None:
    """Run every parameterless GET route a few times, so kernels hold what requests leave."""
    spec = httpx.get(url + "/openapi.json", timeout=30).json()
    paths = [p for p, ops in spec["paths"].items() if "get" in ops and "{" not in p]
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(requests):
            for path in paths:
                client.get(path)


def measure_tree(root: psutil.Process) -> list[ProcessMemory]:
    """The server processes (root, or its workers) and the kernels they started.

    With ``--workers`` the root only supervises ("parent"); multiprocessing's resource
    tracker is a "helper".
    """
    found = []
    descendants = root.children(recursive=True)
    workers = any("multiprocessing.spawn" in " ".join(p.cmdline()) for p in descendants)
    for process in [root, *descendants]:
        cmdline = " ".join(process.cmdline())
        if "ipykernel" in cmdline:
            role = "kernel"
        elif "multiprocessing.resource_tracker" in cmdline:
            role = "helper"
        elif process is root and workers:
            role = "parent"
        else:
            role = "server"
        info = process.memory_full_info()
        found.append(ProcessMemory(role, process.pid, info.rss, info.uss, info.vms))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--kernels", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20, help="requests per route")
    args = parser.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(_BIN / "cellserve"), "serve", str(args.notebook), "--no-reload"]
    argv += ["--port", str(port), "--kernels", str(args.kernels)]
    if args.workers > 1:
        argv += ["--workers", str(args.workers)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, server)
            deadline = time.monotonic() + 300
            while not _all_kernels_idle(url, args.kernels, args.workers):
                if time.monotonic() > deadline:
                    raise SystemExit("not every kernel became idle")
                time.sleep(0.5)
            _exercise(url, args.requests)
            time.sleep(1)
            processes = measure_tree(psutil.Process(server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    print(f"{args.notebook.name}: {args.workers} worker(s) x {args.kernels} kernel(s)")
    print(f"{'role':8} {'pid':>8} {'RSS MiB':>9} {'USS MiB':>9} {'VMS MiB':>9}")
    for p in processes:
        print(f"{p.role:8} {p.pid:8} {p.rss / MIB:9.1f} {p.uss / MIB:9.1f} {p.vms / MIB:9.1f}")
    for role in ("parent", "helper", "server", "kernel"):
        mine = [p for p in processes if p.role == role]
        if mine:
            uss = sum(p.uss for p in mine) / len(mine) / MIB
            rss = sum(p.rss for p in mine) / len(mine) / MIB
            print(f"mean {role}: RSS {rss:.1f} MiB, USS {uss:.1f} MiB (n={len(mine)})")
    total_rss = sum(p.rss for p in processes) / MIB
    total_uss = sum(p.uss for p in processes) / MIB
    print(f"all processes: sum RSS {total_rss:.1f} MiB, sum USS {total_uss:.1f} MiB")


if __name__ == "__main__":
    main()
