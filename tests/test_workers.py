"""``cellserve serve --workers N`` as a real process tree: serving, stopping, failing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import CELLSERVE, Process, assert_gone
from tests.servers import free_port

CELLS = ["x = 1", "# GET /x\nprint(x)"]
MIN_REQUESTS = 6


def _health_by_worker(url: str, workers: int, timeout: float = 60) -> dict[int, dict[str, object]]:
    """Health answers keyed by the pid of the worker that gave them, until all have answered.

    Each request opens a new connection, so the operating system may hand it to any worker.
    """
    seen: dict[int, dict[str, object]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
        with httpx.Client() as client:
            health = client.get(url + "/_cellserve/health", timeout=10).json()
        seen[health["pid"]] = health
    return seen


def _requests_counted(exposition: str) -> float:
    """cellserve_requests_total for GET /x, as one scrape reports it."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "cellserve_requests_total"
        and sample.labels.get("method") == "GET"
        and sample.labels.get("route", "").endswith("/x")
    )


@pytest.mark.parametrize("how", ["ctrl-c to the process group", "sigterm to the parent"])
def test_two_workers_serve_and_stop_leaving_no_kernel(
    how: str, notebook, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(notebook(CELLS)), "--workers", "2", "--port", str(port)]
    args += ["--no-reload", "--drain-delay", "1"]
    server = Process(args, tmp_path / "log", new_session=True)
    processes.append(server)
    server.wait_ready(url)

    by_worker = _health_by_worker(url, 2)
    children = {p.pid for p in psutil.Process(server.popen.pid).children()}
    assert set(by_worker) <= children  # two processes of the server, not the server itself
    kernels = [k["pid"] for h in by_worker.values() for k in h["stats"]["kernels"]]  # type: ignore[index]
    assert len(set(kernels)) == 2  # each worker has its own kernel
    metrics_dir = Path(psutil.Process(next(iter(by_worker))).environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.is_dir()

    # Requests on new connections reach both workers; any worker's metrics count them all.
    answered_by, sent = set(), 0
    while len(answered_by) < 2 or sent < MIN_REQUESTS:
        assert sent < 500, "the requests never reached both workers"
        with httpx.Client() as client:
            assert client.get(url + "/x", timeout=30).text == "1\n"
            answered_by.add(client.get(url + "/_cellserve/health", timeout=10).json()["pid"])
        sent += 1
    for _ in range(4):
        with httpx.Client() as client:
            metrics = client.get(url + "/_cellserve/metrics", timeout=10).text
        assert _requests_counted(metrics) == sent

    if how == "sigterm to the parent":
        server.popen.send_signal(signal.SIGTERM)
    else:
        os.killpg(server.popen.pid, signal.SIGINT)
    # Every worker drains: /ready answers 503 (once the parent has run its signal handler,
    # which a busy machine may delay a moment) until they stop accepting.
    statuses = []
    while True:
        try:
            with httpx.Client() as client:
                statuses.append(client.get(url + "/_cellserve/ready", timeout=10).status_code)
        except httpx.TransportError:
            break
    assert 503 in statuses
    assert set(statuses[statuses.index(503) :]) == {503}, statuses
    assert server.wait(timeout=60) == 0
    assert_gone([*by_worker, *kernels])
    assert not metrics_dir.exists()
    assert "Traceback" not in server.output


def test_a_worker_failing_to_start_stops_the_server_with_one_line(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    pid_file = tmp_path / "kernels.pid"
    record_pid = f"import os\nprint(os.getpid(), file=open({str(pid_file)!r}, 'a'))"
    path = notebook([record_pid, "1 / 0", "# GET /x\nprint(1)"])
    args = [CELLSERVE, "serve", str(path), "--workers", "2", "--port", str(port), "--no-reload"]
    server = Process(args, tmp_path / "log")
    processes.append(server)
    assert server.wait(timeout=120) == 1
    failures = [line for line in server.output.splitlines() if "start-up failed" in line]
    assert failures, server.output
    assert "seed cell 2 raised ZeroDivisionError" in failures[0]
    assert_gone([int(pid) for pid in pid_file.read_text().split()])
    assert psutil.Process().children(recursive=True) == []  # no worker left


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_signal_cuts_the_drain_delay_short(
    workers: int, notebook, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(notebook(CELLS)), "--workers", str(workers)]
    args += ["--port", str(port), "--no-reload", "--drain-delay", "600"]
    server = Process(args, tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    server.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while httpx.get(url + "/_cellserve/ready", timeout=10).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert httpx.get(url + "/x", timeout=30).text == "1\n"  # still serving while draining
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0  # not the 600 s of the delay
