"""Batched routes: the answer contract (pure) and batches on real kernels behind hypercorn."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cellserve import app_from_notebook
from cellserve.batching import Batcher, batcher_for, split_answers
from cellserve.cells import CellError, CellOutcome, CellOutput
from cellserve.logs import TextFormatter
from tests.servers import ServerThread, write_notebook

# -- the answer contract ----------------------------------------------------------------------


def answers(stdout: str, count: int) -> list[tuple[int, str, bytes]]:
    responses = split_answers(
        CellOutcome(CellOutput(stdout=stdout)), count, notebook="nb.ipynb", label="POST /p"
    )
    return [(r.status_code, r.headers["content-type"], r.body) for r in responses]


def test_each_request_gets_its_own_answer_as_json_or_text() -> None:
    assert answers('[{"p": 1.5}, [1, 2], "plain", null]\n', 4) == [
        (200, "application/json", b'{"p": 1.5}'),
        (200, "application/json", b"[1, 2]"),
        (200, "text/plain; charset=utf-8", b"plain"),
        (200, "application/json", b"null"),
    ]


def test_an_answer_may_set_its_own_status_and_headers() -> None:
    item = {"$response": {"status": 422, "headers": {"X-Why": ["a", "b"]}, "body": {"e": 1}}}
    responses = split_answers(
        CellOutcome(CellOutput(stdout=json.dumps([item, {"$response": {"status": 204}}]))),
        2,
        notebook="nb.ipynb",
        label="POST /p",
    )
    assert responses[0].status_code == 422
    assert responses[0].body == b'{"e": 1}'
    assert responses[0].headers.getlist("x-why") == ["a", "b"]
    assert (responses[1].status_code, responses[1].body) == (204, b"")


def test_an_object_with_other_keys_beside_response_is_a_plain_answer() -> None:
    assert answers('[{"$response": 1, "x": 2}]', 1) == [
        (200, "application/json", b'{"$response": 1, "x": 2}')
    ]


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"$response": 5}, "`$response` must be a JSON object"),
        ({"$response": {"status": 99}}, "status must be an integer HTTP status"),
        ({"$response": {"headers": {"Content-Length": "1"}}}, "set by the server"),
        ({"$response": {"headers": {"X": "a\r\nb"}}}, "is not a valid HTTP field value"),
    ],
)
def test_a_bad_answer_fails_only_its_own_request(item: dict[str, Any], fragment: str) -> None:
    (bad, _, body), good = answers(json.dumps([item, "ok"]), 2)
    assert bad == 500
    message = json.loads(body)["message"]
    assert "POST /p" in message
    assert fragment in message
    assert good == (200, "text/plain; charset=utf-8", b"ok")


@pytest.mark.parametrize(
    ("stdout", "fragment"),
    [
        ("[1, 2]", "answered a batch of 3 request(s) with 2 answer(s)"),
        ('{"a": 1}', "must print one JSON array"),
        ("not json", "must print one JSON array"),
        ("", "printed 'nothing'"),
    ],
)
def test_a_wrong_answer_fails_every_request_naming_the_route(stdout: str, fragment: str) -> None:
    result = answers(stdout, 3)
    assert len(result) == 3
    for status, content_type, body in result:
        assert (status, content_type) == (500, "application/json")
        message = json.loads(body)["message"]
        assert message.startswith("POST /p is batched")
        assert fragment in message


def test_an_error_is_every_requests_error() -> None:
    outcome = CellOutcome(CellOutput(error=CellError("ValueError", "bad row")))
    responses = split_answers(outcome, 2, notebook="nb.ipynb", label="POST /p")
    assert [(r.status_code, r.body) for r in responses] == [
        (500, b"Error ValueError: bad row \n")
    ] * 2


# -- on real kernels --------------------------------------------------------------------------

SEED = "import json, os, time"
RESPONSE_LIMIT = 10_000

ROUTES = [
    # Holds the only kernel until the file named by ?file= exists.
    "# GET /hold\npath = json.loads(REQUEST)['args']['file'][0]\n"
    "while not os.path.exists(path):\n    time.sleep(0.01)\nprint('held')",
    "# POST /double\n# cellserve: batch max_size=8\nbatch = json.loads(REQUESTS)\n"
    "print(json.dumps([{'n': r['body']['n'] * 2, 'batch': len(batch)} for r in batch]))",
    "# POST /status\n# cellserve: batch\nbatch = json.loads(REQUESTS)\nprint(json.dumps(["
    "{'$response': {'status': r['body']['status'], 'headers': {'X-Size': len(batch)},"
    " 'body': r['body']}} for r in batch]))",
    "# POST /short\n# cellserve: batch\nprint(json.dumps(json.loads(REQUESTS)[1:]))",
    "# POST /raise\n# cellserve: batch\nraise ValueError('no batch today')",
    "# GET /slow\n# cellserve: batch, timeout=1\ntime.sleep(30)",
    "# GET /crash\n# cellserve: batch\nos._exit(1)",
    # A request's body sets its answer's status: a string one makes that answer unusable.
    "# POST /own_status\n# cellserve: batch\nprint(json.dumps([{'$response': "
    "{'status': r['body']['status']}} for r in json.loads(REQUESTS)]))",
    "# POST /not_array\n# cellserve: batch\nprint(json.dumps({'echo': json.loads(REQUESTS)}))",
    f"# POST /too_large\n# cellserve: batch\nprint('x' * {RESPONSE_LIMIT})",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    folder = tmp_path_factory.mktemp("batching")
    path = write_notebook(folder / "batched.ipynb", [SEED, *ROUTES])
    app = app_from_notebook(path, kernels=1, reload=False, max_response_size=RESPONSE_LIMIT)
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def batcher(server: ServerThread, label: str) -> Batcher:
    generation = server.app.state.cellserve.service.current
    endpoint = next(e for e in generation.api.endpoints if e.label == label)
    return batcher_for(generation, endpoint)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def busy(http: httpx.Client) -> bool:
    return bool(http.get("/_cellserve/health").json()["kernels"].get("busy"))


class Held:
    """The only kernel held by ``GET /hold`` while requests queue; ``release()`` frees it."""

    def __init__(self, http: httpx.Client, folder: Path, threads: ThreadPoolExecutor) -> None:
        self.http = http
        self.file = folder / "release"
        self.threads = threads
        self.hold = threads.submit(http.get, "/hold", params={"file": str(self.file)})
        wait_until(lambda: busy(http), "the kernel runs /hold")

    def post(self, path: str, body: object) -> Future[httpx.Response]:
        return self.threads.submit(self.http.post, path, json=body)

    def release(self) -> None:
        self.file.touch()
        assert self.hold.result().text == "held\n"


@pytest.fixture
def held(http: httpx.Client, tmp_path: Path) -> Iterator[Held]:
    with ThreadPoolExecutor(24) as threads:
        held = Held(http, tmp_path, threads)
        try:
            yield held
        finally:
            held.file.touch()  # never leave the kernel held, even when the test failed


def test_a_request_on_a_free_kernel_runs_at_once_alone(http: httpx.Client) -> None:
    response = http.post("/double", json={"n": 21})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"n": 42, "batch": 1}


def test_queued_requests_of_one_route_join_one_batch(
    server: ServerThread, http: httpx.Client, held: Held
) -> None:
    doubles = [held.post("/double", {"n": n}) for n in range(10)]
    statuses = [held.post("/status", {"status": status}) for status in (201, 202)]
    wait_until(lambda: batcher(server, "POST /double").waiting == 2, "10 requests queued")
    wait_until(lambda: batcher(server, "POST /status").waiting == 2, "2 other requests queued")
    held.release()
    answers = [future.result().json() for future in doubles]
    # Each request its own answer; max_size=8: eight in one batch, the other two in the next.
    assert [answer["n"] for answer in answers] == [2 * n for n in range(10)]
    assert sorted(answer["batch"] for answer in answers) == [2] * 2 + [8] * 8
    for future, status in zip(statuses, (201, 202), strict=True):
        response = future.result()
        assert response.status_code == status
        assert response.headers["x-size"] == "2"  # only the same route joined
        assert response.json() == {"status": status}


def test_a_short_answer_fails_every_request_of_the_batch(
    server: ServerThread, http: httpx.Client, held: Held
) -> None:
    futures = [held.post("/short", {"n": n}) for n in range(3)]
    wait_until(lambda: batcher(server, "POST /short").waiting == 3, "3 requests queued")
    held.release()
    for future in futures:
        response = future.result()
        assert response.status_code == 500
        assert response.json()["message"] == (
            "POST /short is batched: its cell answered a batch of 3 request(s) with 2 "
            "answer(s); every request of the batch gets this error"
        )


def test_an_exception_reaches_every_request_and_is_logged_once(
    server: ServerThread, http: httpx.Client, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    futures = [held.post("/raise", {"n": n}) for n in range(3)]
    wait_until(lambda: batcher(server, "POST /raise").waiting == 3, "3 requests queued")
    with caplog.at_level(logging.ERROR, logger="cellserve.cells"):
        held.release()
        responses = [future.result() for future in futures]
    for response in responses:
        assert (response.status_code, response.text) == (500, "Error ValueError: no batch today \n")
    errors = [r for r in caplog.records if r.name == "cellserve.cells"]
    assert len(errors) == 1
    assert "POST /raise (batch of 3)" in errors[0].getMessage()


def test_metrics_count_batches_and_the_requests_they_answered(http: httpx.Client) -> None:
    def samples() -> dict[str, float]:
        text = http.get("/_cellserve/metrics").text
        return {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("cellserve_batch_size_")
            and 'route="POST /double"' in line
            and "_bucket" not in line
        }

    before = samples()
    assert http.post("/double", json={"n": 1}).status_code == 200
    after = samples()
    assert after["cellserve_batch_size_count"] == before.get("cellserve_batch_size_count", 0) + 1
    assert after["cellserve_batch_size_sum"] == before.get("cellserve_batch_size_sum", 0) + 1


def test_a_timeout_or_a_crash_answers_the_whole_batch_and_the_pool_recovers(
    server: ServerThread, http: httpx.Client, held: Held
) -> None:
    slow = [held.threads.submit(http.get, "/slow") for _ in range(3)]
    wait_until(lambda: batcher(server, "GET /slow").waiting == 3, "3 slow requests queued")
    held.release()
    for future in slow:
        response = future.result()
        assert response.status_code == 504, response.text
    assert http.post("/double", json={"n": 2}).json() == {"n": 4, "batch": 1}

    (held.file.parent / "second").mkdir()
    second = Held(http, held.file.parent / "second", held.threads)
    crash = [held.threads.submit(http.get, "/crash") for _ in range(3)]
    wait_until(lambda: batcher(server, "GET /crash").waiting == 3, "3 crashing requests queued")
    second.release()
    for future in crash:
        response = future.result()
        assert response.status_code == 503, response.text
        assert "died" in response.json()["message"]
    wait_until(lambda: http.get("/_cellserve/health").json()["kernels"] == {"idle": 1}, "restart")
    assert http.post("/double", json={"n": 3}).json() == {"n": 6, "batch": 1}


# -- per request and per batch: access lines, metrics, error lines ----------------------------

NB = "batched.ipynb"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    text = http.get("/_cellserve/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def access_lines(caplog: pytest.LogCaptureFixture, request_ids: list[str]) -> list[str]:
    """The access lines of `request_ids` as the text log writes them, once all are written
    (a line is written just after its response is sent)."""

    def lines() -> list[str]:
        formatter = TextFormatter()
        records = [r for r in caplog.records if r.name == "cellserve.access"]
        return [formatter.format(r) for r in records if r.request.request_id in request_ids]

    wait_until(lambda: len(lines()) >= len(request_ids), "every access line was written")
    return lines()


def assert_one_line_each(lines: list[str], request_ids: list[str], route: str, status: int) -> None:
    """One access line per request id, for `route` (``"POST /double"``), naming its kernel."""
    shape = re.compile(
        rf"^\S+ \S+ INFO cellserve\.access: {route} {status} [\d.]+ ms \d+ B"
        r" kernel=\w+ request_id=(?P<id>\S+)$"
    )
    matches = [shape.match(line) for line in lines]
    assert all(matches), lines
    assert sorted(m["id"] for m in matches if m) == sorted(request_ids)


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """cellserve's WARNING and ERROR records so far."""
    return [
        r for r in caplog.records if r.name.startswith("cellserve") and r.levelno >= logging.WARNING
    ]


def send_with_ids(
    held: Held, route: str, count: int
) -> tuple[list[str], list[Future[httpx.Response]]]:
    """`count` requests to `route` (``"POST /double"``) queued behind the held kernel, each
    with its own X-Request-ID; their ids and responses."""
    method, path = route.split(" ")
    ids = [f"{path.strip('/')}-{n}-{uuid.uuid4().hex[:8]}" for n in range(count)]
    futures = [
        held.threads.submit(
            held.http.request,
            method,
            path,
            json={"n": n} if method == "POST" else None,
            headers={"X-Request-ID": request_id},
        )
        for n, request_id in enumerate(ids)
    ]
    return ids, futures


def test_every_batched_request_leaves_one_access_line_and_counts_once(
    server: ServerThread, http: httpx.Client, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    before = scrape(http)
    ids, futures = send_with_ids(held, "POST /double", 10)
    wait_until(lambda: batcher(server, "POST /double").waiting == 2, "10 requests queued")
    held.release()
    responses = [future.result() for future in futures]
    assert sorted(r.json()["batch"] for r in responses) == [2] * 2 + [8] * 8  # two batches
    assert [r.headers["x-request-id"] for r in responses] == ids

    assert_one_line_each(access_lines(caplog, ids), ids, "POST /double", 200)
    after = scrape(http)
    ok = {"notebook": NB, "route": "POST /double", "method": "POST", "status": "200"}
    assert grew(before, after, "cellserve_requests_total", **ok) == 10
    batches = {"notebook": NB, "route": "POST /double"}
    assert grew(before, after, "cellserve_batch_size_count", **batches) == 2
    assert grew(before, after, "cellserve_batch_size_sum", **batches) == 10
    assert grew(before, after, "cellserve_batch_size_bucket", le="2.0", **batches) == 1
    assert grew(before, after, "cellserve_batch_size_bucket", le="8.0", **batches) == 2


@pytest.mark.parametrize(
    ("path", "logger", "error"),
    [
        (
            "/short",
            "cellserve.batching",
            f"{NB} POST /short is batched: its cell answered a batch of 3 request(s) with 2 "
            "answer(s); every request of the batch gets this error",
        ),
        (
            "/raise",
            "cellserve.cells",
            f"{NB} POST /raise (batch of 3): the cell raised ValueError: no batch today",
        ),
        (
            "/not_array",
            "cellserve.batching",
            f"{NB} POST /not_array is batched: its cell must print one JSON array with an "
            "answer for each request, and printed something else",  # not the requests it echoed
        ),
        (
            "/too_large",
            "cellserve.batching",
            f"{NB} POST /too_large: the output of a batch of 3 passed the response size limit "
            "and every request of the batch was answered 500; print less or raise "
            "--max-response-size, or lower the batch's max_size",
        ),
    ],
    ids=["wrong length", "raises", "not an array", "too large"],
)
def test_a_failed_batch_leaves_an_access_line_per_request_and_one_error_line(
    server: ServerThread,
    http: httpx.Client,
    held: Held,
    caplog: pytest.LogCaptureFixture,
    path: str,
    logger: str,
    error: str,
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    before = scrape(http)
    ids, futures = send_with_ids(held, f"POST {path}", 3)
    wait_until(lambda: batcher(server, f"POST {path}").waiting == 3, "3 requests queued")
    held.release()
    assert [future.result().status_code for future in futures] == [500] * 3

    assert_one_line_each(access_lines(caplog, ids), ids, f"POST {path}", 500)
    errors = [(r.name, r.levelname, r.getMessage()) for r in problems(caplog)]
    assert errors == [(logger, "ERROR", error)]  # one per batch
    after = scrape(http)
    failed = {"notebook": NB, "route": f"POST {path}", "method": "POST", "status": "500"}
    assert grew(before, after, "cellserve_requests_total", **failed) == 3
    batches = {"notebook": NB, "route": f"POST {path}"}
    assert grew(before, after, "cellserve_batch_size_count", **batches) == 1
    assert grew(before, after, "cellserve_batch_size_sum", **batches) == 3


def test_an_unusable_answer_fails_its_request_only_and_one_line_names_its_index(
    server: ServerThread, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    own_status = batcher(server, "POST /own_status")
    futures = []
    for count, status in enumerate([201, "s3cret", 202], start=1):  # queued in this order
        futures.append(held.post("/own_status", {"status": status}))
        wait_until(lambda count=count: own_status.waiting == count, f"{count} queued")
    held.release()
    responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [201, 500, 202]
    assert "s3cret" in responses[1].json()["message"]  # the client sees what was wrong
    lines = [(r.name, r.levelname, r.getMessage()) for r in problems(caplog)]
    assert lines == [
        (
            "cellserve.batching",
            "ERROR",
            f"{NB} POST /own_status: the answer at index 1 of a batch of 3 cannot be sent "
            "(`$response`: status must be an integer HTTP status from 200 to 599), so its "
            "request was answered 500; fix what the cell prints",
        )
    ]  # the log does not: it is request data


def test_a_timed_out_batch_counts_one_timeout_and_every_request(
    server: ServerThread, http: httpx.Client, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    before = scrape(http)
    ids, futures = send_with_ids(held, "GET /slow", 3)
    wait_until(lambda: batcher(server, "GET /slow").waiting == 3, "3 slow requests queued")
    held.release()
    assert [future.result().status_code for future in futures] == [504] * 3

    assert_one_line_each(access_lines(caplog, ids), ids, "GET /slow", 504)
    [line] = [r.getMessage() for r in problems(caplog)]  # one per batch
    assert line == f"504: {NB} GET /slow: the cell ran longer than 1.0 s and was interrupted"
    after = scrape(http)
    timed_out = {"notebook": NB, "route": "GET /slow", "method": "GET", "status": "504"}
    assert grew(before, after, "cellserve_requests_total", **timed_out) == 3  # per request
    for name in ("cellserve_request_timeouts_total", "cellserve_kernel_interrupts_total"):
        assert grew(before, after, name, notebook=NB) == 1, name  # per batch
    batches = {"notebook": NB, "route": "GET /slow"}
    assert grew(before, after, "cellserve_batch_size_count", **batches) == 1
    assert grew(before, after, "cellserve_batch_size_sum", **batches) == 3
    assert http.post("/double", json={"n": 2}).json() == {"n": 4, "batch": 1}


def test_batches_run_in_execute_mode_too(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "execute.ipynb", [SEED, ROUTES[1]])
    app = app_from_notebook(path, execution="execute", reload=False)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        assert http.post("/double", json={"n": 5}).json() == {"n": 10, "batch": 1}
