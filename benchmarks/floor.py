"""The raw in-kernel floor: jupyter_client round trips to one kernel, with no HTTP at all.

No server can answer an endpoint faster than a client that talks to the kernel directly, so
this is what cellserve's numbers are measured against. The kernel is started and seeded as
cellserve starts and seeds its kernels (IPython history off, the benchmark notebook's seed
cells), and each round trip carries the ``REQUEST`` string cellserve would build for the
same HTTP request. Two modes, matching ``cellserve serve --execution``:

* ``fast``: cellserve's own in-kernel dispatcher (``cellserve/kernel_dispatch.py``) is
  installed, and a round trip is one ``comm_msg`` out and its ``comm_msg`` answer back;
* ``execute``: a round trip is one ``execute_request`` (``store_history=False``) binding
  ``REQUEST`` and running the cell, waiting for the idle status and the ``execute_reply``.

The loop uses the blocking client: the cheapest way jupyter_client offers to wait for a
message. Run as a subprocess that the runner drives over stdin/stdout, so that its round
trips can be interleaved with the HTTP servers' measurements::

    $ python benchmarks/floor.py --mode fast
    READY {"pid": 1234}
    ping 5                      # endpoint, seconds
    {"requests": 4321, ...}
    quit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from bench_notebook import BODIES, ENDPOINTS, SEEDS
from cellserve.request import RequestParts, build_request_json

_COMM_TARGET = "cellserve.dispatch"
_TIMEOUT = 60.0


@dataclass(frozen=True)
class FloorSample:
    """Round trips in one timed window; latencies in milliseconds."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float


def request_json(endpoint: str) -> str:
    """The ``REQUEST`` string cellserve builds for wrk's request to `endpoint`."""
    body = BODIES[endpoint]
    headers = [(b"host", b"127.0.0.1:8000")]
    if body is not None:
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
    parts = RequestParts(headers, b"", (body or "").encode(), {})
    return build_request_json(parts)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Floor:
    """One seeded kernel and the cheapest possible round trip for a mode."""

    def __init__(self, mode: str, cwd: Path) -> None:
        self.mode = mode
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd), extra_arguments=["--HistoryManager.enabled=False"])
        self.client: BlockingKernelClient = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=_TIMEOUT)
        self.comm_id = uuid.uuid4().hex
        self._known: set[str] = set()
        for source in SEEDS:
            self._execute(source)
        if mode == "fast":
            self._install_dispatcher()

    @property
    def pid(self) -> int:
        return int(getattr(self.manager.provisioner, "pid", 0))

    def _execute(self, code: str) -> str:
        """Run `code`; its stdout. Raise RuntimeError if the cell raised."""
        msg_id = self.client.execute(
            code, silent=False, store_history=False, allow_stdin=False, stop_on_error=False
        )
        stdout: list[str] = []
        error: str | None = None
        while True:
            msg = self.client.get_iopub_msg(timeout=_TIMEOUT)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "stream" and content["name"] == "stdout":
                stdout.append(content["text"])
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
        while self.client.get_shell_msg(timeout=_TIMEOUT)["parent_header"].get("msg_id") != msg_id:
            pass
        if error is not None:
            raise RuntimeError(error)
        return "".join(stdout)

    def _send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg = self.client.session.msg(msg_type, content)
        self.client.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def _install_dispatcher(self) -> None:
        # The same bootstrap cellserve.kernels.Kernel sends after seeding: the helpers the
        # server shares with the kernel first, then the dispatcher, in one namespace.
        package = resources.files("cellserve")
        common = package.joinpath("dispatch_common.py").read_text("utf-8")
        source = package.joinpath("kernel_dispatch.py").read_text("utf-8")
        self._execute(
            "def __cellserve_bootstrap():\n"
            "    namespace = {'__name__': 'cellserve_dispatch'}\n"
            f"    exec(compile({common!r}, '<cellserve dispatcher>', 'exec'), namespace)\n"
            f"    exec(compile({source!r}, '<cellserve dispatcher>', 'exec'), namespace)\n"
            "    namespace['make_output_encodable'](get_ipython().kernel.session)\n"
            f"    namespace['install'](get_ipython(), {_COMM_TARGET!r}, 10_000_000)\n"
            "__cellserve_bootstrap()\n"
            "del __cellserve_bootstrap\n"
        )
        self._send("comm_open", {"comm_id": self.comm_id, "target_name": _COMM_TARGET, "data": {}})

    def round_trip(self, endpoint: str, request: str) -> bool:
        """One request to `endpoint`'s cell; True if it produced output and no error."""
        if self.mode == "fast":
            return self._dispatch(endpoint, request)
        code = f"REQUEST = {json.dumps(request)}\n{ENDPOINTS[endpoint]}"
        try:
            return bool(self._execute(code))
        except RuntimeError:
            return False

    def _dispatch(self, endpoint: str, request: str) -> bool:
        data: dict[str, Any] = {"key": endpoint, "info_key": None, "request": request}
        if endpoint not in self._known:
            data["code"] = ENDPOINTS[endpoint]
            self._known.add(endpoint)
        msg_id = self._send("comm_msg", {"comm_id": self.comm_id, "data": data})
        while True:
            msg = self.client.get_iopub_msg(timeout=_TIMEOUT)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "comm_msg":
                break
        answer = msg["content"]["data"]
        return bool(answer["status"] == "ok" and answer["cell"]["error"] is None)

    def measure(self, endpoint: str, seconds: float) -> FloorSample:
        request = request_json(endpoint)
        latencies: list[float] = []
        errors = 0
        started = time.perf_counter()
        end = started + seconds
        now = started
        while now < end:
            ok = self.round_trip(endpoint, request)
            after = time.perf_counter()
            latencies.append(after - now)
            errors += not ok
            now = after
        elapsed = now - started
        latencies.sort()
        return FloorSample(
            requests=len(latencies),
            seconds=elapsed,
            errors=errors,
            p50_ms=percentile(latencies, 0.50) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
        )

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["fast", "execute"], required=True)
    args = parser.parse_args()
    floor = Floor(args.mode, Path(__file__).parent)
    print("READY " + json.dumps({"pid": floor.pid}), flush=True)
    try:
        for line in sys.stdin:
            command = line.split()
            if not command or command[0] == "quit":
                break
            endpoint, seconds = command[0], float(command[1])
            print(json.dumps(asdict(floor.measure(endpoint, seconds))), flush=True)
    finally:
        floor.close()


if __name__ == "__main__":
    main()
