"""``/_cellserve/metrics``: parsed with prometheus_client's own parser; counters are compared
before and after traffic, a timeout, a crash and reloads (other tests may share the process,
so only deltas are asserted)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cellserve import app_from_notebook
from tests.servers import ServerThread, write_notebook

CELLS = [
    "import os, time\nVALUE = 1",
    "# GET /value\nprint(VALUE)",
    "# GET /stream\n# cellserve: stream\nprint(VALUE)",
    "# GET /slow\n# cellserve: timeout=1\ntime.sleep(30)",
    "# GET /exit\nos._exit(1)",
]
NB = "api.ipynb"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **kwargs: str) -> Samples:
    response = httpx.get(url + "/_cellserve/metrics", timeout=30, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def notebook_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_notebook(tmp_path_factory.mktemp("metrics") / NB, CELLS)


@pytest.fixture(scope="module")
def server(notebook_path: Path) -> Iterator[ServerThread]:
    with ServerThread(app_from_notebook(notebook_path, interrupt_grace=5)) as running:
        yield running


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_requests_and_latency_move_with_traffic(server: ServerThread) -> None:
    before = scrape(server.url)
    for _ in range(3):
        assert httpx.get(server.url + "/value", timeout=30).status_code == 200
    assert httpx.get(server.url + "/nowhere", timeout=30).status_code == 404
    assert httpx.get(server.url + "/stream", timeout=30).text == "1\n"
    after = scrape(server.url)

    ok = {"notebook": NB, "route": "GET /value", "method": "GET", "status": "200"}
    missing = {"notebook": "", "route": "", "method": "GET", "status": "404"}
    assert value(after, "cellserve_requests_total", **ok) - value(
        before, "cellserve_requests_total", **ok
    ) == pytest.approx(3)
    assert value(after, "cellserve_requests_total", **missing) - value(
        before, "cellserve_requests_total", **missing
    ) == pytest.approx(1)
    route = {"notebook": NB, "route": "GET /value"}
    count = "cellserve_request_duration_seconds_count"
    assert value(after, count, **route) - value(before, count, **route) == pytest.approx(3)
    waits = "cellserve_queue_wait_seconds_count"
    # Every request that leases a kernel, streaming ones too.
    assert value(after, waits, notebook=NB) - value(before, waits, notebook=NB) == 4
    assert value(after, "cellserve_kernels", notebook=NB, state="idle") == 1
    assert value(after, "cellserve_queue_depth", notebook=NB) == 0
    assert value(after, "cellserve_generation", notebook=NB) >= 1
    # The scrape itself is in flight while it is being answered.
    assert value(after, "cellserve_requests_in_flight") >= 1


def test_hostile_methods_and_paths_cannot_grow_the_labels(tmp_path: Path) -> None:
    """A scanner's invented methods, its paths (401 before routing, so no 404 to go by) and
    job ids share a few fixed labels."""
    path = write_notebook(tmp_path / NB, CELLS[:2])
    token = {"Authorization": "Bearer s3cret"}
    with ServerThread(app_from_notebook(path, auth_token="s3cret")) as running:
        before = scrape(running.url, headers=token)  # type: ignore[arg-type]
        with httpx.Client(base_url=running.url, timeout=30) as client:
            for n in range(3):
                assert client.request(f"SCAN{n}", "/value").status_code == 401
                assert client.get(f"/_cellserve/probe{n}").status_code == 401
                assert client.get(f"/_cellserve/jobs/job{n}", headers=token).status_code == 404
            assert client.get("/_cellserve/health").status_code == 401
        after = scrape(running.url, headers=token)  # type: ignore[arg-type]

    def added(route: str, method: str, status: str) -> float:
        labels = {"notebook": "", "route": route, "method": method, "status": status}
        name = "cellserve_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("", "other", "401") == 3
    assert added("", "GET", "401") == 3
    assert added("/_cellserve/health", "GET", "401") == 1
    assert added("", "GET", "404") == 3
    labels = {
        value for name, labels in after if name.startswith("cellserve") for _, value in labels
    }
    assert not any(hostile in value for value in labels for hostile in ("SCAN", "probe", "job0"))


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """cellserve's WARNING and ERROR lines so far."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("cellserve") and r.levelno >= logging.WARNING
    ]


def test_timeouts_and_interrupts_are_counted(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    before = scrape(server.url)
    assert httpx.get(server.url + "/slow", timeout=60).status_code == 504
    after = scrape(server.url)
    [line] = problems(caplog)  # logged once, with its cause
    assert line == "504: api.ipynb GET /slow: the cell ran longer than 1.0 s and was interrupted"
    for name in ("cellserve_request_timeouts_total", "cellserve_kernel_interrupts_total"):
        assert value(after, name, notebook=NB) - value(before, name, notebook=NB) == 1, name
    assert httpx.get(server.url + "/value", timeout=30).text == "1\n"


def test_crashes_and_restarts_are_counted(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    before = scrape(server.url)
    assert httpx.get(server.url + "/exit", timeout=60).status_code == 503

    def restarted() -> bool:
        now = scrape(server.url)
        return (
            value(now, "cellserve_kernel_restarts_total", notebook=NB)
            > value(before, "cellserve_kernel_restarts_total", notebook=NB)
            and value(now, "cellserve_kernels", notebook=NB, state="idle") == 1
        )

    wait_until(restarted, "the crashed kernel was never restarted")
    after = scrape(server.url)
    for name in ("cellserve_kernel_crashes_total", "cellserve_kernel_restarts_total"):
        assert value(after, name, notebook=NB) - value(before, name, notebook=NB) == 1, name
    [line] = problems(caplog)  # logged once, with its cause
    assert "api.ipynb GET /exit" in line and "restarting" in line
    seeds = "cellserve_seed_duration_seconds_count"
    assert value(after, seeds, notebook=NB) - value(before, seeds, notebook=NB) == 1


def test_reloads_are_counted_by_kind_and_outcome(
    server: ServerThread, notebook_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    before = scrape(server.url)
    write_notebook(notebook_path, [*CELLS, "# GET /added\nprint(2)"])
    assert httpx.post(server.url + "/_cellserve/reload", timeout=60).status_code == 200
    notebook_path.write_text("{not json", encoding="utf-8")
    assert httpx.post(server.url + "/_cellserve/reload", timeout=60).status_code == 422
    after = scrape(server.url)
    write_notebook(notebook_path, CELLS)
    applied_lines = [r.getMessage() for r in caplog.records if "reloaded (admin" in r.getMessage()]
    assert len(applied_lines) == 1 and "+GET /added" in applied_lines[0]
    [failure] = problems(caplog)
    assert failure.startswith("api.ipynb reload failed (admin request): ")
    applied = {"notebook": NB, "kind": "routes", "outcome": "applied"}
    failed = {"notebook": NB, "kind": "none", "outcome": "failed"}
    for labels in (applied, failed):
        name = "cellserve_reloads_total"
        assert value(after, name, **labels) - value(before, name, **labels) == 1, labels
    name = "cellserve_generation"
    assert value(after, name, notebook=NB) - value(before, name, notebook=NB) == 1


def test_metrics_need_the_token_when_auth_is_on(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / NB, CELLS[:2])
    with ServerThread(app_from_notebook(path, auth_token="s3cret")) as running:
        assert httpx.get(running.url + "/_cellserve/metrics", timeout=30).status_code == 401
        samples = scrape(running.url, headers={"Authorization": "Bearer s3cret"})  # type: ignore[arg-type]
        assert any(name == "cellserve_requests_total" for name, _ in samples)


def test_queue_rejections_are_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_notebook(tmp_path / NB, CELLS)
    with ServerThread(app_from_notebook(path, max_queue=0)) as running:
        before = scrape(running.url)
        with httpx.Client(base_url=running.url, timeout=60) as client:
            holder = threading.Thread(target=lambda: client.get("/slow"))
            holder.start()
            wait_until(
                lambda: (
                    value(scrape(running.url), "cellserve_kernels", notebook=NB, state="busy") == 1
                ),
                "the slow request never started",
            )
            refused = httpx.get(running.url + "/value", timeout=30)
            holder.join()
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        after = scrape(running.url)
    name = "cellserve_queue_rejections_total"
    assert value(after, name, notebook=NB) - value(before, name, notebook=NB) == 1
    refusals = [line for line in problems(caplog) if "GET /value" in line]
    assert refusals == [f"503: {refused.json()['message']}"]
