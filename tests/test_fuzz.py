"""Property-based tests of the pure stages that meet untrusted input (hypothesis).

Each property holds for *every* input: ``REQUEST`` building either gives faithful JSON or a
400 reason, routing never fails on any path, a ResponseInfo cell either yields headers an
HTTP/1.1 implementation accepts or a 500 JSON naming the route, and the literals that carry
``REQUEST`` into non-Python kernels give their interpreter exactly the text sent.
"""

from __future__ import annotations

import ast
import base64
import encodings.aliases
import json
import shutil
import subprocess
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cellserve.cells import CellError, CellOutcome, CellOutput
from cellserve.kernels import request_assignment
from cellserve.notebook import parse_notebook_text
from cellserve.request import BadRequest, RequestParts, build_request_json
from cellserve.response import build_response
from cellserve.routing import MethodNotAllowed, RouteMatch, RouteTable
from tests.servers import notebook_text

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- REQUEST building -------------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHARSETS = sorted({*encodings.aliases.aliases.values(), "utf-8", "latin-1", "bogus", ""})
MEDIA_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=b",
    "multipart/form-data",
    "application/octet-stream",
    "text/plain",
    "text/csv",
    "image/png",
    "",
]

header_names = st.text(_TCHAR, min_size=1, max_size=20).map(lambda s: s.lower().encode())
header_values = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127).strip(b" \t")
)
content_types = st.builds(
    lambda media, charset: f"{media}; charset={charset}" if charset else media,
    st.sampled_from(MEDIA_TYPES),
    st.one_of(st.none(), st.sampled_from(CHARSETS), st.text(max_size=12)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    ),
    st.integers(0, 400).map(lambda n: b"[" * n + b"]" * n),
)
tokens = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-._~+/=", min_size=8, max_size=24)
path_params = st.dictionaries(st.text(_TCHAR, min_size=1, max_size=8), st.text(max_size=20))


def _request_value(parts: RequestParts, token: str | None = None) -> dict[str, Any] | None:
    """The parsed REQUEST, or None for a 400. Any other exception fails the property."""
    try:
        text = build_request_json(parts, token=token)
    except BadRequest as exc:
        assert str(exc)  # a reason for the client
        return None
    assert text.isascii()  # every language's literal can carry it
    value = json.loads(text)
    assert isinstance(value, dict)
    assert {"body", "args", "path", "headers"} <= set(value)
    return value


@FUZZ
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    content_type=content_types,
    query=st.binary(max_size=80),
    body=bodies,
    path=path_params,
)
@example(headers=[], content_type="text/plain; charset=base64", query=b"", body=b"x", path={})
@example(headers=[], content_type="application/json", query=b"", body=b"[" * 99_999, path={})
@example(headers=[], content_type="application/json", query=b"", body=b"9" * 5000, path={})
def test_request_is_faithful_json_or_a_400(
    headers: list[tuple[bytes, bytes]],
    content_type: str,
    query: bytes,
    body: bytes,
    path: dict[str, str],
) -> None:
    raw_headers = [*headers, (b"content-type", content_type.encode("latin-1", "replace"))]
    value = _request_value(RequestParts(raw_headers, query, body, path))
    if value is None:
        return
    assert value["path"] == path
    media = content_type.split(";")[0]
    if media == "application/octet-stream" and body:
        assert value["body_encoding"] == "base64"
        assert base64.b64decode(value["body"]) == body


@FUZZ
@given(text=st.text(), charset=st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
def test_text_bodies_arrive_exactly_as_sent(text: str, charset: str) -> None:
    try:
        body = text.encode(charset)
    except UnicodeEncodeError:
        return
    parts = RequestParts([(b"content-type", f"text/plain; charset={charset}".encode())], b"", body)
    value = _request_value(parts)
    assert value is not None
    assert value["body"] == text


@FUZZ
@given(
    token=tokens,
    headers=st.lists(st.tuples(header_names, header_values), max_size=4),
    where=st.sampled_from(["referer", "x-original-uri", "cookie", "x-anything", "authorization"]),
    form=st.sampled_from(["{t}", "/docs?token={t}", "/x?a=1&token={t}&b=2", "token={t}", "{q}"]),
)
def test_the_servers_token_never_reaches_request(
    token: str, headers: list[tuple[bytes, bytes]], where: str, form: str
) -> None:
    from urllib.parse import quote

    leaked = form.format(t=token, q=quote(token, safe="")).encode()
    raw_headers = [*headers, (where.encode(), leaked)]
    query = b"token=" + quote(token, safe="").encode()
    value = _request_value(RequestParts(raw_headers, query, b""), token=token)
    assert value is not None
    seen = json.dumps([value["headers"], value["args"]], ensure_ascii=False)
    assert token not in seen
    assert quote(token, safe="") not in seen


# -- routing ----------------------------------------------------------------------------------

ROUTES = RouteTable(
    parse_notebook_text(
        notebook_text(
            [
                "# GET /hello\nprint(1)",
                "# POST /hello\nprint(1)",
                "# GET /price/:zip\nprint(1)",
                "# GET /a/:b/c/:d\nprint(1)",
                "# PUT /v1.0/items/:id\nprint(1)",
            ]
        ),
        name="fuzz.ipynb",
    ).endpoints
)
raw_segments = st.lists(
    st.one_of(
        st.sampled_from(["hello", "price", "a", "c", "v1.0", "items", "", "%2F", "%FF", "%"]),
        st.text(max_size=6),
        st.binary(max_size=4).map(lambda b: "".join(f"%{c:02X}" for c in b)),
    ),
    max_size=5,
)


@FUZZ
@given(segments=raw_segments, verb=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"]))
def test_routing_any_path_is_a_match_a_405_a_404_or_undecodable(
    segments: list[str], verb: str
) -> None:
    try:
        found = ROUTES.match(segments, verb)
    except UnicodeDecodeError:
        return  # answered 400 by the endpoint
    assert found is None or isinstance(found, RouteMatch | MethodNotAllowed)
    if isinstance(found, RouteMatch):
        assert found.endpoint.verb == verb
        assert all(value for value in found.params.values())
    if isinstance(found, MethodNotAllowed):
        assert verb not in found.allowed


# -- ResponseInfo -----------------------------------------------------------------------------

header_value_inputs = st.one_of(
    st.text(max_size=12), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()
)
response_infos = st.fixed_dictionaries(
    {},
    optional={
        "status": st.one_of(st.integers(-5, 700), st.text(max_size=3), st.none()),
        "headers": st.dictionaries(
            st.text(max_size=10),
            st.one_of(header_value_inputs, st.lists(header_value_inputs, max_size=3)),
            max_size=4,
        ),
    },
)


@FUZZ
@given(info=response_infos, stdout=st.text(max_size=30))
def test_response_info_gives_valid_http_or_a_500_json_naming_the_route(
    info: dict[str, Any], stdout: str
) -> None:
    response = build_response(
        CellOutcome(CellOutput(stdout=stdout), CellOutput(stdout=json.dumps(info))),
        None,
        notebook="fuzz.ipynb",
        label="GET /fuzz",
    )
    if response.status_code == 500 and bytes(response.body).startswith(b'{"reason"'):
        assert json.loads(bytes(response.body))["message"].startswith(
            "fuzz.ipynb ResponseInfo GET /fuzz: "
        )
        return
    # h11, the HTTP/1.1 implementation under hypercorn, is the judge of what may go out.
    h11.Response(status_code=response.status_code, headers=response.raw_headers)


@FUZZ
@given(text=st.text(), ename=st.text(max_size=10))
def test_any_cell_output_becomes_a_utf8_response(text: str, ename: str) -> None:
    for cell in (
        CellOutput(stdout=text),
        CellOutput(result={"text/plain": text}),
        CellOutput(displays=({"text/html": text},)),
        CellOutput(error=CellError(ename, text)),
    ):
        response = build_response(
            CellOutcome(cell), "text/html", notebook="fuzz.ipynb", label="GET /fuzz"
        )
        bytes(response.body).decode("utf-8")


# -- literals for kernels without the fast path ----------------------------------------------

request_texts = json_values.map(json.dumps) | st.text().map(json.dumps)


@FUZZ
@given(request=request_texts)
def test_generic_literal_is_the_same_string_in_python_and_json(request: str) -> None:
    literal = request_assignment("julia", request).removeprefix("REQUEST = ")
    assert ast.literal_eval(literal) == request
    assert json.loads(literal) == request
    assert not any(sigil in literal for sigil in "$@`#")


@pytest.mark.parametrize(
    ("language", "interpreter", "show"),
    [
        ("bash", ["bash", "-c"], '\nprintf %s "$REQUEST"'),
        ("perl", ["perl", "-e"], "print $REQUEST;"),
    ],
)
@settings(max_examples=60, deadline=None)
@given(request=request_texts)
def test_shell_literals_give_the_interpreter_exactly_the_text_sent(
    language: str, interpreter: list[str], show: str, request: str
) -> None:
    if shutil.which(interpreter[0]) is None:
        pytest.skip(f"{interpreter[0]} is not installed")
    script = request_assignment(language, request) + show
    result = subprocess.run([*interpreter, script], capture_output=True, check=True, timeout=30)
    assert result.stdout.decode("utf-8") == request


# -- end to end: random requests against a real server ---------------------------------------

E2E_TOKEN = "fuzz-t0ken"
E2E_CELLS: list[str | tuple[str, str]] = [
    "import json",
    "# GET /hello\nprint('hello')",
    "# POST /echo\nprint(REQUEST)",
    "# PUT /items/:id\nprint(json.loads(REQUEST)['path']['id'])",
    "# GET /price/:zip\nprint(json.loads(REQUEST)['path']['zip'])",
    "# ResponseInfo GET /price/:zip\n"
    "v = json.loads(REQUEST)['args'].get('h', ['x'])[0]\n"
    "print(json.dumps({'status': 201, 'headers': {'X-Echo': v}}))",
    "# POST /fail\n1 / 0",
    "# GET /big\n'x' * 5000",
    "# GET /stream\n# cellserve: stream\nprint(len(REQUEST), flush=True)",
]
E2E_ROUTES = [
    ("GET", "/hello"),
    ("POST", "/echo"),
    ("PUT", "/items/{}"),
    ("GET", "/price/{}"),
    ("POST", "/fail"),
    ("GET", "/big"),
    ("GET", "/stream"),
    ("GET", "/{}"),
]
DOCUMENTED = {200, 201, 400, 401, 404, 405, 413, 422, 500, 503, 504}
JUNK = ["", "a", "%2F", "%FF", "%C3%A9", "..", "%00", "x" * 300, "%E2%98%83", "a%20b", ";x"]


def _random_request(rng: Any) -> dict[str, Any]:
    """One request: any verb, path, query, headers, credentials and body."""
    verb, template = rng.choice(E2E_ROUTES)
    if rng.random() < 0.3:
        verb = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    method = verb
    path = template.format(rng.choice(JUNK) or "1")
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    auth = rng.random()
    if auth < 0.6:
        headers["Authorization"] = f"Bearer {E2E_TOKEN}"
    elif auth < 0.75:
        params["token"] = E2E_TOKEN
    elif auth < 0.85:
        headers["Authorization"] = rng.choice(["Bearer nope", "token x", "Basic eDp5", "Bearer"])
    if rng.random() < 0.5:
        params["h"] = rng.choice(["ok", "a\x01b", "\x1b[2J", "snow\u2603", " x ", ""])
    if rng.random() < 0.7:
        media = rng.choice(MEDIA_TYPES)
        charset = rng.choice([*CHARSETS, None, None, None])
        headers["Content-Type"] = f"{media}; charset={charset}" if charset else media
    if rng.random() < 0.3:
        headers["Accept"] = rng.choice(["text/html", "*/*", "text/event-stream", "image/*;q=0"])
    if rng.random() < 0.2:
        headers["Referer"] = f"http://x/docs?token={E2E_TOKEN}"
    body_kind = rng.random()
    content: bytes | Any
    if body_kind < 0.3:
        content = b""
    elif body_kind < 0.5:
        content = rng.randbytes(rng.randint(1, 400))
    elif body_kind < 0.65:
        content = json.dumps({"name": rng.choice(["\ud800x", "é", "x" * 50])}).encode()
    elif body_kind < 0.75:
        depth = rng.choice([10, 300, 5000])
        content = b"[" * depth + b"]" * depth
    elif body_kind < 0.85:
        content = b"a=&" * rng.randint(1, 40_000)  # past the 100 kB limit at the top
    elif body_kind < 0.92:
        content = b"9" * rng.choice([10, 5000])
    else:
        size = rng.randint(1, 200_000)
        content = iter([b"z" * size])  # chunked, no Content-Length
    return {"method": method, "url": path, "params": params, "headers": headers, "content": content}


@pytest.fixture(scope="module")
def e2e_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from cellserve import app_from_notebook
    from tests.servers import ServerThread, write_notebook

    path = write_notebook(tmp_path_factory.mktemp("fuzz") / "fuzz.ipynb", E2E_CELLS)
    app = app_from_notebook(
        path, auth_token=E2E_TOKEN, max_body_size=100_000, max_response_size=2000, timeout=20
    )
    with ServerThread(app) as server:
        yield server


def test_random_requests_get_documented_statuses_and_the_server_lives(e2e_server: Any) -> None:
    """A bounded random loop (2,000 requests from four clients at once, at most 90 s): every
    answer has a documented status, errors have a reason, nothing hangs, the token is never
    echoed, and the server is healthy at the end."""
    import os
    import random
    import time
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    seed = int(os.environ.get("CELLSERVE_FUZZ_SEED", random.randrange(2**32)))
    deadline = time.monotonic() + 90

    def client_loop(client_number: int) -> Counter[int]:
        rng = random.Random(seed + client_number)
        seen: Counter[int] = Counter()
        with httpx.Client(base_url=e2e_server.url, timeout=30) as client:
            for number in range(500):
                if time.monotonic() > deadline:
                    break
                request = _random_request(rng)
                where = (
                    f"seed {seed}, client {client_number}, request {number}: "
                    f"{request['method']} {request['url']}"
                )
                try:
                    response = client.request(**request)
                except httpx.RemoteProtocolError:
                    # Only a cut stream may end early, and this server's stream stays small.
                    pytest.fail(f"{where}: the connection broke")
                seen[response.status_code] += 1
                _check_answer(response, request["method"], where)
        return seen

    with ThreadPoolExecutor(4) as pool:
        seen = sum(pool.map(client_loop, range(4)), Counter[int]())
    with httpx.Client(base_url=e2e_server.url, timeout=30) as client:
        health = client.get("/_cellserve/health", params={"token": E2E_TOKEN})
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert client.get("/hello", params={"token": E2E_TOKEN}).text == "hello\n"
    assert {200, 400, 401, 404} <= set(seen), (seed, seen)


def _check_answer(response: Any, method: str, where: str) -> None:
    assert response.status_code in DOCUMENTED, f"{where}: {response.status_code}"
    if response.status_code >= 400 and method != "HEAD":
        if response.headers.get("content-type") == "application/json":
            reason = response.json()
            assert reason["reason"] and reason["message"], where
        else:  # a cell's own exception, in Kernel Gateway's words
            assert response.status_code == 500, where
            assert response.text.startswith("Error ZeroDivisionError"), where
    assert E2E_TOKEN not in response.text, where
