"""response.py: what a cell produced → status, headers and body (Kernel Gateway §5-7)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.responses import Response

from cellserve import app_from_notebook
from cellserve.cells import CellError, CellOutcome, CellOutput
from cellserve.exceptions import ExecutionTimeout, Unavailable
from cellserve.logs import TextFormatter
from cellserve.response import RICH_ORDER, build_response, error_response, failure_response
from tests.servers import ServerThread, write_notebook

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
PNG_B64 = base64.b64encode(PNG).decode("ascii") + "\n"  # Jupyter's bundles end with a newline
ZERO = CellError("ZeroDivisionError", "division by zero", "Traceback ...")


def respond(
    cell: CellOutput, info: CellOutput | None = None, accept: str | None = None
) -> Response:
    return build_response(CellOutcome(cell, info), accept, notebook="api.ipynb", label="GET /x")


def info(value: Any) -> CellOutput:
    """A ResponseInfo cell that printed `value` as JSON."""
    return CellOutput(stdout=json.dumps(value) + "\n")


def json_body(response: Response) -> Any:
    assert response.headers["content-type"] == "application/json"
    return json.loads(bytes(response.body))


# -- precedence -------------------------------------------------------------------------------


def test_error_is_500_plain_text_with_kernel_gateways_exact_body() -> None:
    response = respond(CellOutput(stdout="lost\n", result={"text/plain": "1"}, error=ZERO))
    assert response.status_code == 500
    assert response.body == b"Error ZeroDivisionError: division by zero \n"
    assert response.headers["content-type"] == "text/plain"


def test_error_wins_over_response_info() -> None:
    response = respond(CellOutput(error=ZERO), info({"status": 201}))
    assert response.status_code == 500


def test_stdout_wins_over_result_and_displays() -> None:
    cell = CellOutput(
        stdout="hello world\n", result={"text/plain": "2"}, displays=({"image/png": PNG_B64},)
    )
    response = respond(cell, accept="image/png")
    assert (response.status_code, response.body) == (200, b"hello world\n")
    assert response.headers["content-type"] == "text/plain"


@pytest.mark.parametrize(
    "accept", [None, "", "*/*", "text/html,application/xhtml+xml,*/*;q=0.8", "application/xml"]
)
def test_result_without_a_matching_accept_is_the_whole_bundle_as_json(accept: str | None) -> None:
    response = respond(CellOutput(result={"text/plain": "2"}), accept=accept)
    assert response.status_code == 200
    assert response.body == b'{"text/plain": "2"}'
    assert response.headers["content-type"] == "text/plain"


def test_result_bundle_keeps_every_type_without_accept() -> None:
    bundle = {"text/plain": "Badge()", "text/html": "<b>badge</b>"}
    assert json.loads(bytes(respond(CellOutput(result=bundle)).body)) == bundle


def test_accept_html_gets_the_html() -> None:
    bundle = {"text/plain": "Badge()", "text/html": "<b>badge</b>"}
    response = respond(CellOutput(result=bundle), accept="text/html")
    assert response.body == b"<b>badge</b>"
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def test_accept_png_gets_decoded_bytes() -> None:
    bundle = {"text/plain": "<Figure>", "image/png": PNG_B64}
    response = respond(CellOutput(result=bundle), accept="image/png")
    assert response.body == PNG
    assert response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("text/plain;q=0.5, text/html", "text/html"),
        ("text/html;q=0.1, application/json;q=0.9", "application/json"),
        ("image/*", "image/png"),
        ("TEXT/HTML", "text/html"),
        ("text/html;q=0, text/plain", "text/plain"),
    ],
)
def test_accept_quality_order_and_wildcards(accept: str, chosen: str) -> None:
    bundle = {"text/plain": "p", "text/html": "<p>", "application/json": {"a": 1}, "image/png": ""}
    response = respond(CellOutput(result=bundle), accept=accept)
    assert response.headers["content-type"].split(";")[0] == chosen


def test_json_result_is_sent_as_json() -> None:
    response = respond(
        CellOutput(result={"application/json": {"a": [1]}}), accept="application/json"
    )
    assert json.loads(bytes(response.body)) == {"a": [1]}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("bundle", "body", "content_type"),
    [
        ({"text/plain": "<Figure>", "image/png": PNG_B64}, PNG, "image/png"),
        ({"text/plain": "t", "text/html": "<i>h</i>"}, b"<i>h</i>", "text/html; charset=utf-8"),
        ({"text/plain": "t", "image/svg+xml": "<svg/>"}, b"<svg/>", "image/svg+xml"),
        ({"text/plain": "t", "application/json": {"a": 1}}, b'{"a": 1}', "application/json"),
        ({"text/plain": "t", "application/x-unknown": "?"}, b"t", "text/plain; charset=utf-8"),
    ],
)
def test_display_only_sends_the_richest_type(
    bundle: dict[str, Any], body: bytes, content_type: str
) -> None:
    response = respond(CellOutput(displays=({"text/plain": "older"}, bundle)))
    assert response.status_code == 200
    assert response.body == body
    assert response.headers["content-type"] == content_type


def test_display_honours_accept() -> None:
    bundle = {"text/plain": "<Figure>", "image/png": PNG_B64}
    response = respond(CellOutput(displays=(bundle,)), accept="text/plain")
    assert response.body == b"<Figure>"


def test_display_with_no_known_type_is_empty() -> None:
    response = respond(CellOutput(displays=({"application/vnd.custom": "x"},)))
    assert (response.status_code, response.body) == (200, b"")


def test_nothing_is_an_empty_200() -> None:
    response = respond(CellOutput())
    assert (response.status_code, response.body) == (200, b"")
    assert response.headers["content-type"] == "text/plain"


def test_rich_order_prefers_images_and_ends_with_plain_text() -> None:
    assert RICH_ORDER[0] == "image/png"
    assert RICH_ORDER[-1] == "text/plain"
    assert RICH_ORDER.index("text/html") < RICH_ORDER.index("text/plain")


def test_truncated_stdout_is_a_500_json_naming_the_route() -> None:
    response = respond(CellOutput(stdout="x" * 10, truncated=True))
    assert response.status_code == 500
    body = json_body(response)
    assert body["reason"] == "Internal Server Error"
    assert "GET /x" in body["message"]


# -- ResponseInfo -----------------------------------------------------------------------------


def test_response_info_sets_status_and_headers() -> None:
    response = respond(
        CellOutput(stdout='{"id": 1}'),
        info({"status": 201, "headers": {"Location": "/x/1", "X-Count": 3}}),
    )
    assert response.status_code == 201
    assert response.body == b'{"id": 1}'
    assert response.headers["location"] == "/x/1"
    assert response.headers["x-count"] == "3"


def test_response_info_content_type_replaces_text_plain_whatever_its_case() -> None:
    response = respond(
        CellOutput(stdout='{"hello":"world"}'),
        info({"headers": {"content-type": "application/json"}}),
    )
    assert response.status_code == 200
    assert response.headers.getlist("content-type") == ["application/json"]


def test_response_info_list_value_repeats_the_header() -> None:
    response = respond(
        CellOutput(stdout="ok"), info({"headers": {"Set-Cookie": ["a=1; Path=/", "b=2"]}})
    )
    assert response.headers.getlist("set-cookie") == ["a=1; Path=/", "b=2"]


def test_response_info_etag_as_kernel_gateways_test() -> None:
    response = respond(
        CellOutput(stdout='{"etag": true}'),
        info({"headers": {"Content-Type": "application/json", "Etag": "1234567890"}}),
    )
    assert response.headers["etag"] == "1234567890"
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_drop_the_body(status: int) -> None:
    response = respond(CellOutput(stdout="printed anyway\n"), info({"status": status}))
    assert (response.status_code, response.body) == (status, b"")


@pytest.mark.parametrize(
    ("stdout", "fragment"),
    [
        ("not json\n", "must print one JSON object"),
        ("", "nothing"),
        ("[1, 2]", "not list"),
        ('{"status": "201"}', "status must be an integer"),
        ('{"status": true}', "status must be an integer"),
        ('{"status": 600}', "status must be an integer"),
        ('{"headers": ["X-A"]}', "headers must be a JSON object"),
    ],
)
def test_unusable_response_info_is_a_500_json_reason(stdout: str, fragment: str) -> None:
    response = respond(CellOutput(stdout="body"), CellOutput(stdout=stdout))
    assert response.status_code == 500
    body = json_body(response)
    assert body["reason"] == "Internal Server Error"
    assert body["message"].startswith("api.ipynb ResponseInfo GET /x: ")
    assert fragment in body["message"]


def test_response_info_error_is_500_plain_text() -> None:
    response = respond(CellOutput(stdout="ok"), CellOutput(error=CellError("KeyError", "'a'")))
    assert response.status_code == 500
    assert response.body == b"Error KeyError: 'a' \n"
    assert response.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("status", [100, 101, 199])
def test_informational_status_is_rejected(status: int) -> None:
    response = respond(CellOutput(stdout="body"), info({"status": status}))
    assert response.status_code == 500
    assert "status" in json_body(response)["message"]


def test_header_value_with_newline_is_rejected() -> None:
    response = respond(CellOutput(stdout="body"), info({"headers": {"X-A": "a\r\nInjected: 1"}}))
    assert response.status_code == 500
    assert "X-A" in json_body(response)["message"]


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection"])
def test_framing_headers_are_the_servers(name: str) -> None:
    response = respond(CellOutput(stdout="body"), info({"headers": {name: "5"}}))
    assert response.status_code == 500
    assert "set by the server" in json_body(response)["message"]


# -- error_response ---------------------------------------------------------------------------


def test_error_response_has_kernel_gateways_shape() -> None:
    response = error_response(404, "no route for /nope", {"X-Why": "because"})
    assert response.status_code == 404
    assert json_body(response) == {"reason": "Not Found", "message": "no route for /nope"}
    assert response.headers["x-why"] == "because"


@pytest.mark.parametrize(
    "value",
    ["a\x01b", "\x1b[31m", "a\x7f", "a\x0bb", "a\x0cb", "caf\u00e9\u2603", "\ud800", "a\x00"],
)
def test_header_value_outside_rfc_9110_is_a_500_json_naming_the_route(value: str) -> None:
    response = respond(CellOutput(stdout="body"), info({"headers": {"X-A": value}}))
    assert response.status_code == 500
    message = json_body(response)["message"]
    assert message.startswith("api.ipynb ResponseInfo GET /x: header 'X-A'")
    assert "RFC 9110" in message


@pytest.mark.parametrize("name", ["X A", "X:A", "", "X\u00e9", "X\r\nY"])
def test_header_name_that_is_not_a_token_is_a_500_json(name: str) -> None:
    response = respond(CellOutput(stdout="body"), info({"headers": {name: "v"}}))
    assert response.status_code == 500
    assert "RFC 9110" in json_body(response)["message"]


def test_header_values_keep_tabs_latin1_and_lose_surrounding_spaces() -> None:
    response = respond(CellOutput(stdout="body"), info({"headers": {"X-A": " a\tb caf\u00e9 "}}))
    assert response.status_code == 200
    assert response.raw_headers[-1] == (b"x-a", "a\tb caf\u00e9".encode("latin-1"))


@pytest.mark.parametrize(
    "cell",
    [
        CellOutput(stdout="\ud800x\n"),
        CellOutput(result={"text/html": "\ud800x"}),
        CellOutput(displays=({"text/plain": "\ud800x"},)),
        CellOutput(error=CellError("ValueError", "\ud800x")),
    ],
)
def test_lone_surrogates_are_sent_as_replacement_characters(cell: CellOutput) -> None:
    response = respond(cell, accept="text/html")
    assert "\ufffdx" in response.body.decode("utf-8")


def test_surrogate_pairs_are_joined() -> None:
    assert respond(CellOutput(stdout="\ud83d\ude00")).body == "😀".encode()


def test_pool_failures_become_json_errors_with_their_status() -> None:
    busy = failure_response(Unavailable("api.ipynb GET /x: all kernels are busy", 7))
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "7"
    assert json_body(busy) == {
        "reason": "Service Unavailable",
        "message": "api.ipynb GET /x: all kernels are busy",
    }
    slow = failure_response(ExecutionTimeout("api.ipynb GET /x: the cell ran longer than 1 s"))
    assert slow.status_code == 504
    assert "retry-after" not in slow.headers
    assert json_body(slow)["reason"] == "Gateway Timeout"


# -- on a real server: the operator gets one ERROR line per 500, never the request's data -----

LIMIT = 1000
SECRET = "s3cret-from-the-request"
ARG = "json.loads(REQUEST)['args']['secret'][0]"

CELLS = [
    "import json",
    f"# GET /big\nprint({ARG} * {LIMIT})",
    "# GET /not_json\nprint('body')",
    f"# ResponseInfo GET /not_json\nprint('not JSON: ' + {ARG})",
    "# GET /bad_header\nprint('body')",
    "# ResponseInfo GET /bad_header\n"
    f"print(json.dumps({{'headers': {{'X-Echo': {ARG} + '\\x01'}}}}))",
    "# GET /info_raises\nprint('body')",
    "# ResponseInfo GET /info_raises\n{}['missing']",
    f"# GET /big_stream\n# cellserve: stream\nprint({ARG} * {LIMIT})",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    path = write_notebook(tmp_path_factory.mktemp("response") / "api.ipynb", CELLS)
    app = app_from_notebook(path, kernels=1, reload=False, max_response_size=LIMIT)
    with ServerThread(app) as running:
        yield running


def problem_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """cellserve's WARNING and ERROR records, checked for the request's data as the text log
    writes them (traceback included)."""
    records = [
        r for r in caplog.records if r.name.startswith("cellserve") and r.levelno >= logging.WARNING
    ]
    for record in records:
        assert SECRET not in TextFormatter().format(record)
    return [(r.name, r.levelname, r.getMessage()) for r in records]


@pytest.mark.parametrize(
    ("path", "logger", "line"),
    [
        (
            "/big",
            "cellserve.response",
            "api.ipynb GET /big: the cell's output passed the response size limit and the "
            "request was answered 500; print less or raise --max-response-size",
        ),
        (
            "/not_json",
            "cellserve.response",
            'api.ipynb ResponseInfo GET /not_json: must print one JSON object like {"status": '
            "201}, printed something else, so the request was answered 500; fix the "
            "ResponseInfo cell",
        ),
        (
            "/bad_header",
            "cellserve.response",
            "api.ipynb ResponseInfo GET /bad_header: a header value is not a valid HTTP field "
            "value (RFC 9110: visible ASCII, spaces, tabs and Latin-1 letters only), so the "
            "request was answered 500; fix the ResponseInfo cell",
        ),
        (
            "/info_raises",
            "cellserve.cells",
            "api.ipynb ResponseInfo GET /info_raises: the cell raised KeyError: 'missing'",
        ),
    ],
    ids=["too large", "ResponseInfo not JSON", "ResponseInfo bad header", "ResponseInfo raises"],
)
def test_a_500_the_notebook_caused_leaves_one_error_line_without_request_data(
    server: ServerThread, caplog: pytest.LogCaptureFixture, path: str, logger: str, line: str
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    response = httpx.get(server.url + path, params={"secret": SECRET}, timeout=60)
    assert response.status_code == 500
    # The line is written before the response is sent.
    assert problem_lines(caplog) == [(logger, "ERROR", line)]


def test_the_client_may_see_what_the_cell_printed_the_log_may_not(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    response = httpx.get(server.url + "/not_json", params={"secret": SECRET}, timeout=60)
    assert SECRET in response.json()["message"]
    [(_, _, line)] = problem_lines(caplog)
    assert "printed something else" in line


def test_a_stream_cut_at_the_size_limit_leaves_one_error_line(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellserve")
    response = httpx.get(
        server.url + "/big_stream",
        params={"secret": SECRET},
        headers={"Accept": "text/event-stream"},
        timeout=60,
    )
    assert response.status_code == 200
    assert "event: error" in response.text
    assert problem_lines(caplog) == [
        (
            "cellserve.streaming",
            "ERROR",
            "api.ipynb GET /big_stream: the stream's output passed the response size limit and "
            "was cut; print less or raise --max-response-size",
        )
    ]
