"""Declared contracts and broken cells, served for real: answered before any kernel is used."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cellserve import app_from_notebook
from tests.servers import ServerThread, write_notebook


def items(minimum: int) -> tuple[str, str]:
    return (
        "markdown",
        f"Look an item up.\n\n```yaml\npath:\n  id: {{type: integer, minimum: {minimum}}}\n"
        "query:\n  kind: {enum: [book, film], default: book}\n```",
    )


def cells(broken_route: str = "print(1)", minimum: int = 1) -> list[str | tuple[str, str]]:
    return [
        "import json, os, time",
        "# GET /slow\n"
        "deadline = time.monotonic() + 60\n"
        "while not os.path.exists('release') and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print('released')",
        items(minimum),
        "# GET /items/:id\nr = json.loads(REQUEST)\nprint(r['path']['id'], r['args']['kind'][0])",
        "# GET /typo\nprint('before'\n",
        f"# GET /fine\n{broken_route}",
        "# GET /boom\nx = 1\n1 / 0",
        (
            "markdown",
            "```yaml\nbody: {schema: {items: {type: string}, "
            "additionalProperties: {type: string}}}\n```",
        ),
        "# POST /tags\nprint(1)",
    ]


@pytest.fixture(scope="module")
def notebook_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_notebook(tmp_path_factory.mktemp("contract") / "shop.ipynb", cells())


@pytest.fixture(scope="module")
def server(notebook_path: Path) -> Iterator[ServerThread]:
    with ServerThread(app_from_notebook(notebook_path, reload=False, kernels=1)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_declared_parameters_reach_the_cell_with_defaults(client: httpx.Client) -> None:
    assert client.get("/items/7").text == "7 book\n"
    assert client.get("/items/7", params={"kind": "film"}).text == "7 film\n"


def test_a_bad_request_is_a_422_while_the_only_kernel_is_busy(
    client: httpx.Client, server: ServerThread, notebook_path: Path
) -> None:
    slow: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: slow.append(httpx.get(server.url + "/slow", timeout=90))
    )
    worker.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as poll:
            while poll.get("/_cellserve/health").json()["kernels"].get("busy") != 1:
                assert worker.is_alive(), "the slow request ended early"
                time.sleep(0.05)
        # The one kernel is held by /slow: an answer now cannot have used a kernel.
        bad_path = client.get("/items/abc")
        bad_query = client.get("/items/0", params={"kind": "song"})
        assert worker.is_alive()
    finally:
        (notebook_path.parent / "release").touch()
        worker.join(timeout=90)
    assert slow[0].text == "released\n"

    assert bad_path.status_code == 422
    assert bad_path.json() == {
        "reason": "Unprocessable Entity",
        "message": "the request does not match the declaration of GET /items/:id: 1 problem",
        "problems": [{"in": "path", "at": "id", "message": "'abc' is not of type 'integer'"}],
    }
    assert bad_query.json()["problems"] == [
        {"in": "path", "at": "id", "message": "0 is less than the minimum of 1"},
        {"in": "query", "at": "kind", "message": "'song' is not one of ['book', 'film']"},
    ]


def test_hostile_values_get_a_bounded_422_not_a_500(client: httpx.Client) -> None:
    huge = client.get("/items/" + "1" * 5000)  # past Python's int conversion limit
    assert huge.status_code == 422
    assert huge.json()["problems"][0]["message"].endswith("is not of type 'integer'")
    many = client.post("/tags", json=[1] * 10_000)
    assert many.status_code == 422
    assert many.json()["message"] == (
        "the request does not match the declaration of POST /tags: more than 50 problems; "
        "the first 50 are listed"
    )
    assert len(many.json()["problems"]) == 50


def test_a_lone_surrogate_in_a_body_key_is_named_in_a_422_not_a_500(
    client: httpx.Client,
) -> None:
    answer = client.post(
        "/tags", content=b'{"\\ud800": 1}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["problems"] == [
        {"in": "body", "at": "/\ufffd", "message": "1 is not of type 'string'"}
    ]


def test_a_syntax_error_is_kernel_gateways_500_naming_the_route(client: httpx.Client) -> None:
    assert client.get("/_cellserve/health").json()["route_errors"] == [
        "shop.ipynb cell 4, line 2: `GET /typo`: SyntaxError: '(' was never closed"
    ]
    response = client.get("/typo")
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "Error SyntaxError: '(' was never closed (GET /typo, cell 4, line 2) \n"


def test_a_cell_error_traceback_names_the_route_not_a_file(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cellserve.cells"):
        assert client.get("/boom").text == "Error ZeroDivisionError: division by zero \n"
    (record,) = [r for r in caplog.records if r.name == "cellserve.cells"]
    traceback = record.traceback  # type: ignore[attr-defined]
    assert 'File "<GET /boom>", line 3, in <module>' in traceback
    assert "1 / 0" in traceback
    assert ".py" not in traceback


def test_a_reload_that_breaks_a_route_keeps_the_old_version(
    client: httpx.Client, notebook_path: Path
) -> None:
    write_notebook(notebook_path, cells(broken_route="print('new'"))
    result = client.post("/_cellserve/reload")
    assert result.status_code == 422
    error = client.get("/_cellserve/health").json()["last_reload_error"]
    assert error.startswith("shop.ipynb cell 5, line 2: `GET /fine`: SyntaxError: ")
    assert "the previous version keeps serving" in error
    assert client.get("/fine").text == "1\n"
    # The syntax error the served version already had does not block a fix elsewhere.
    write_notebook(notebook_path, cells(broken_route="print(2)"))
    assert client.post("/_cellserve/reload").status_code == 200
    assert client.get("/fine").text == "2\n"
    assert client.get("/_cellserve/health").json()["last_reload_error"] is None


def test_a_changed_declaration_applies_on_reload(client: httpx.Client, notebook_path: Path) -> None:
    assert client.get("/items/3").status_code == 200
    write_notebook(notebook_path, cells(broken_route="print(2)", minimum=5))
    result = client.post("/_cellserve/reload").json()
    assert result["change"] == "docs"  # no code changed: same kernels, new declaration
    problems = client.get("/items/3").json()["problems"]
    assert problems == [{"in": "path", "at": "id", "message": "3 is less than the minimum of 5"}]
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/items/{id}"]["get"]["parameters"][0]["schema"]["minimum"] == 5
