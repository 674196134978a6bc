"""Access log, request ids and cell errors, read back the way an operator's tools read them:
text lines by a regex, JSON lines by ``json.loads``. One real server for the module."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cellserve import app_from_notebook
from cellserve.logs import JsonFormatter, TextFormatter, ensure_logging, request_id_from
from tests.servers import ServerThread, write_notebook

CELLS = [
    "import json\nVALUE = 42",
    "# GET /value\nprint(VALUE)",
    "# POST /value\nprint(json.loads(REQUEST)['body'])",
    "# GET /boom\ndef explode():\n    return 1 / 0\nexplode()",
    "# GET /boom-stream\n# cellserve: stream\nprint('partial', flush=True)\n1 / 0",
    "# GET /slow-stream\n# cellserve: stream timeout=1\nimport time\ntime.sleep(30)",
]

ACCESS_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cellserve\.access: "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<ms>[\d.]+) ms (?P<bytes>\d+) B"
    r"(?: kernel=(?P<kernel>\w+))? request_id=(?P<request_id>\S+)$"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = write_notebook(tmp_path_factory.mktemp("logs") / "api.ipynb", CELLS)
    with ServerThread(app_from_notebook(path)) as running:
        yield running


class Captured:
    """Everything cellserve logs while the test runs, formatted by one of its formatters."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    formatter = TextFormatter() if request.param == "text" else JsonFormatter()
    capture = Captured(formatter)
    package = logging.getLogger("cellserve")
    level = package.level
    package.setLevel(logging.INFO)
    package.addHandler(capture.handler)
    yield capture
    package.removeHandler(capture.handler)
    package.setLevel(level)


def wait_for_lines(captured: Captured, needle: str, count: int, timeout: float = 10) -> None:
    """The access line is written once the response is sent, so a moment after the client
    has it: wait until `needle` appears `count` times."""
    deadline = time.monotonic() + timeout
    while captured.text.count(needle) < count:
        assert time.monotonic() < deadline, f"{count} x {needle!r} never logged:\n{captured.text}"
        time.sleep(0.01)


def access_entries(captured: Captured) -> list[dict[str, object]]:
    """The access lines, parsed; any line that does not parse fails the test."""
    entries: list[dict[str, object]] = []
    if isinstance(captured.handler.formatter, JsonFormatter):
        for line in captured.text.splitlines():
            entry = json.loads(line)
            assert {"timestamp", "level", "logger", "message"} <= entry.keys()
            if entry["logger"] == "cellserve.access":
                entries.append(entry)
        return entries
    for line in captured.text.splitlines():
        if " cellserve.access: " in line:
            match = ACCESS_LINE.match(line)
            assert match, f"access line does not parse: {line!r}"
            fields = match.groupdict()
            entries.append({**fields, "status": int(fields["status"])})
    return entries


def test_each_request_leaves_one_access_line(server: ServerThread, captured: Captured) -> None:
    sent = {
        "ok-1": ("GET", "/value", None, 200),
        "ok-2": ("POST", "/value", {"a": 1}, 200),
        "missing-3": ("GET", "/nowhere", None, 404),
        "method-4": ("DELETE", "/value", None, 405),
        "health-5": ("GET", "/_cellserve/health", None, 200),
    }
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for request_id, (method, path, body, status) in sent.items():
            response = client.request(method, path, json=body, headers={"X-Request-ID": request_id})
            assert response.status_code == status
            assert response.headers["x-request-id"] == request_id

    wait_for_lines(captured, "health-5", 1)
    entries = [e for e in access_entries(captured) if e["request_id"] in sent]
    assert sorted(str(e["request_id"]) for e in entries) == sorted(sent)
    for entry in entries:
        method, path, _, status = sent[str(entry["request_id"])]
        assert (entry["method"], entry["path"], entry["status"]) == (method, path, status)
        assert float(str(entry.get("duration_ms", entry.get("ms")))) >= 0
        assert int(str(entry["bytes"])) > 0
    by_id = {e["request_id"]: e for e in entries}
    assert by_id["ok-1"]["kernel"], "a request run by a kernel names it"
    assert by_id["missing-3"].get("kernel") is None


def test_malformed_request_id_is_replaced(server: ServerThread, captured: Captured) -> None:
    response = httpx.get(
        server.url + "/value", headers={"X-Request-ID": "has spaces\tand tabs"}, timeout=30
    )
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    wait_for_lines(captured, "cellserve.access", 1)
    assert [e["request_id"] for e in access_entries(captured)] == [generated]


def test_raising_cell_logs_one_error_with_traceback_and_request_id(
    server: ServerThread, captured: Captured
) -> None:
    response = httpx.get(server.url + "/boom", timeout=30)
    assert response.status_code == 500
    assert response.text == "Error ZeroDivisionError: division by zero \n"  # Kernel Gateway's
    request_id = response.headers["x-request-id"]
    wait_for_lines(captured, "cellserve.access", 1)

    if isinstance(captured.handler.formatter, JsonFormatter):
        records = [json.loads(line) for line in captured.text.splitlines()]
        errors = [r for r in records if r["level"] == "ERROR"]
        assert len(errors) == 1, records
        error = errors[0]
        assert error["request_id"] == request_id
        assert error["notebook"] == "api.ipynb"
        assert error["route"] == "GET /boom"
        assert error["kernel"]
        assert "ZeroDivisionError" in error["message"]
        traceback = error["traceback"]
    else:
        text = captured.text
        assert text.count(" ERROR ") == 1, text
        error_line, traceback = text.split(" ERROR ", 1)[1].split("\n", 1)
        assert "api.ipynb GET /boom: the cell raised ZeroDivisionError" in error_line
        assert f"request_id={request_id}" in error_line
        assert "kernel=" in error_line
    assert "explode()" in traceback  # the cell's own frames
    assert "\x1b[" not in traceback


def test_failed_streams_are_logged_once_each(server: ServerThread, captured: Captured) -> None:
    """A streaming route fails after its 200 is sent, so the log is the operator's only
    record: a raising cell is one ERROR, a timeout one WARNING, as on plain routes."""
    sse = {"Accept": "text/event-stream"}
    with httpx.Client(base_url=server.url, timeout=30, headers=sse) as client:
        raised = client.get("/boom-stream")
        timed_out = client.get("/slow-stream")
    for response in (raised, timed_out):
        assert response.status_code == 200
        assert "event: error" in response.text
    wait_for_lines(captured, "cellserve.access", 2)
    levels = (" ERROR ", " WARNING ", '"level": "ERROR"', '"level": "WARNING"')
    problems = [line for line in captured.text.splitlines() if any(x in line for x in levels)]
    assert len(problems) == 2, captured.text
    raised_line, timeout_line = problems
    assert "api.ipynb GET /boom-stream: the cell raised ZeroDivisionError" in raised_line
    assert "504: api.ipynb GET /slow-stream: the cell ran longer than 1.0 s" in timeout_line


def test_request_id_rules() -> None:
    assert request_id_from(b"trace-01:abc/def=") == "trace-01:abc/def="
    for bad in (b"", b"a b", b'"quoted"', b"x" * 129, "é".encode(), b"line\nbreak"):
        generated = request_id_from(bad)
        assert re.fullmatch(r"[0-9a-f]{32}", generated), bad
    assert request_id_from(None) != request_id_from(None)


def test_json_lines_carry_exception_and_no_request_outside_one() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("cellserve.test")
    log.addHandler(handler)
    try:
        try:
            raise ValueError("bad value")
        except ValueError:
            log.error("it failed: %s", "here", exc_info=True)
    finally:
        log.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "it failed: here"
    assert entry["level"] == "ERROR"
    assert "ValueError: bad value" in entry["exception"]
    assert "request_id" not in entry


def test_query_string_is_not_logged(server: ServerThread, captured: Captured) -> None:
    """Tokens may ride in ``?token=``: the access line names the path only."""
    httpx.get(server.url + "/value", params={"token": "secret-value"}, timeout=30)
    wait_for_lines(captured, "cellserve.access", 1)
    assert "secret-value" not in captured.text
    assert [e["path"] for e in access_entries(captured)] == ["/value"]


def test_a_path_cannot_forge_a_log_line(server: ServerThread, captured: Captured) -> None:
    """The server decodes ``%0A`` to a newline; the access line percent-encodes it again."""
    forged = "/x%0A2026-12-01 00:00:00,000 ERROR cellserve.pool: forged%20line"
    assert httpx.get(server.url + forged, timeout=30).status_code == 404
    wait_for_lines(captured, "cellserve.access", 1)
    assert len(captured.text.splitlines()) == 1, captured.text
    assert [e["path"] for e in access_entries(captured)] == [
        "/x%0A2026-12-01%2000:00:00,000%20ERROR%20cellserve.pool:%20forged%20line"
    ]


def test_execute_mode_traceback_quotes_no_request_data(tmp_path: Path, captured: Captured) -> None:
    """The logged traceback shows the cell's own lines, never the bound REQUEST literal."""
    cells = ["import json", "# POST /boom\nbody = json.loads(REQUEST)['body']\n1 / 0"]
    path = write_notebook(tmp_path / "api.ipynb", cells)
    with ServerThread(app_from_notebook(path, execution="execute")) as running:
        response = httpx.post(running.url + "/boom", json={"secret": "hunter2"}, timeout=30)
        assert response.status_code == 500
        wait_for_lines(captured, "cellserve.access", 1)
    assert "ZeroDivisionError" in captured.text
    assert "1 / 0" in captured.text  # the cell's own frame is there...
    assert "hunter2" not in captured.text  # ...but not the request it was given
    assert "REQUEST = " not in captured.text


@pytest.mark.parametrize(
    ("variable", "expected"), [("json", JsonFormatter), ("xml", TextFormatter)]
)
def test_unconfigured_logging_gets_cellserve_lines_in_the_chosen_format(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    expected: type[logging.Formatter],
) -> None:
    """``hypercorn module:app`` with no logging set up: cellserve adds its own handler; an
    unknown CELLSERVE_LOG_FORMAT is one warning, not a traceback in the server's lifespan."""
    package = logging.getLogger("cellserve")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(package, "handlers", [])
    monkeypatch.setattr(package, "level", logging.NOTSET)
    monkeypatch.setenv("CELLSERVE_LOG_FORMAT", variable)
    ensure_logging()
    (handler,) = package.handlers
    assert type(handler.formatter) is expected
    warned = capsys.readouterr().err
    if variable == "xml":
        assert "CELLSERVE_LOG_FORMAT='xml' is not 'text' or 'json'" in warned
    else:
        assert warned == ""


def test_python_warnings_become_log_records_in_the_chosen_format() -> None:
    """In JSON mode every stderr line must parse, a library's warning included."""
    code = (
        "from cellserve.logs import configure_logging\n"
        "configure_logging('info', 'json')\n"
        "import warnings\n"
        "warnings.warn('something old', DeprecationWarning, stacklevel=1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=60
    )
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["logger"], entry["level"]) == ("py.warnings", "WARNING")
    assert "DeprecationWarning: something old" in entry["message"]
