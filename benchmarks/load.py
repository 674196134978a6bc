"""Put load on a server with wrk, or on the raw floor over its pipe; one ``Sample`` per window.

wrk is a C event loop: one thread holds all the connections (keep-alive), so on a two-core
machine the load generator takes as little CPU from the server as it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench_notebook import BODIES
from servers import cpu_seconds

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "request.lua"
WRK_TIMEOUT = "30s"  # > the longest queue wait (64 x 50 ms /sleep on one kernel is 3.2 s)


@dataclass(frozen=True)
class Sample:
    """One timed window of load. Latencies in milliseconds; errors include non-2xx replies."""

    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: apt-get install -y wrk (Debian) or brew install wrk")
    return path


def run_wrk(url: str, endpoint: str, concurrency: int, seconds: int) -> Sample:
    """`concurrency` keep-alive connections sending `endpoint`'s request for `seconds`."""
    command = [
        require_wrk(),
        "--threads",
        "1",
        "--connections",
        str(concurrency),
        "--duration",
        f"{seconds}s",
        "--timeout",
        WRK_TIMEOUT,
        "--script",
        str(WRK_SCRIPT),
        url,
    ]
    env = {**os.environ, "WRK_BODY": BODIES[endpoint] or ""}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            report = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise RuntimeError(f"wrk gave no report: {done.stdout}\n{done.stderr}")
    errors = report["errors"]
    latency = report["latency_us"]
    return Sample(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        errors=sum(errors.values()),
        non_2xx=errors["status"],
        p50_ms=latency["p50"] / 1000,
        p99_ms=latency["p99"] / 1000,
    )


class FloorProcess:
    """A ``floor.py`` subprocess: one seeded kernel driven without HTTP."""

    def __init__(self, mode: str, log_path: Path) -> None:
        self.mode = mode
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("floor.py")), "--mode", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        ready = self._stdout.readline()
        if not ready.startswith("READY "):
            self.close()
            raise RuntimeError(f"the {mode} floor did not start; see {log_path}")
        self.kernel_pid = int(json.loads(ready.removeprefix("READY "))["pid"])

    @property
    def _stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def measure(self, endpoint: str, seconds: int) -> Sample:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{endpoint} {seconds}\n")
        self.process.stdin.flush()
        report = json.loads(self._stdout.readline())
        return Sample(
            requests=report["requests"],
            seconds=report["seconds"],
            errors=report["errors"],
            non_2xx=0,
            p50_ms=report["p50_ms"],
            p99_ms=report["p99_ms"],
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the floor's client process, and by its kernel."""
        return cpu_seconds(self.process.pid), cpu_seconds(self.kernel_pid)

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
