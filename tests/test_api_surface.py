"""Auth, CORS, limits and Kernel Gateway's extra endpoints, over a real server."""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from cellserve import Settings, app_from_notebook
from tests.servers import ServerThread, write_notebook

TOKEN = "s3cret-token"
CELLS: list[str | tuple[str, str]] = [
    "import json",
    ("markdown", "Say hello\n\nGreets whoever asks."),
    "# GET /hello\nprint('hello world')",
    "# GET /request\nprint(REQUEST)",
    "# POST /size\nprint(len(json.loads(REQUEST)['body']))",
    "# GET /flood\nprint('x' * 5000)",
    "# GET /price/:zip\nprint(json.loads(REQUEST)['path']['zip'])",
    "# ResponseInfo GET /price/:zip\nprint(json.dumps({'status': 201}))",
]


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("public")
    (folder / "index.html").write_text("<h1>static</h1>")
    return folder


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, static_dir: Path):
    path = write_notebook(tmp_path_factory.mktemp("nb") / "secured.ipynb", CELLS)
    app = app_from_notebook(
        path,
        auth_token=TOKEN,
        allow_origin="https://good.example",
        allow_headers="Authorization,Content-Type",
        expose_headers="X-Custom",
        max_body_size=1000,
        max_response_size=1000,
        static_path=static_dir,
        allow_notebook_download=True,
    )
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory):
    path = write_notebook(tmp_path_factory.mktemp("nb") / "plain.ipynb", CELLS)
    with ServerThread(app_from_notebook(path)) as server:
        yield server


ROUTE_KINDS = [
    ("GET", "/hello"),
    ("GET", "/no/such/route"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/_cellserve/health"),
    ("POST", "/_cellserve/reload"),
    ("GET", "/_api/spec/swagger.json"),
    ("GET", "/_api/source"),
    ("GET", "/public/index.html"),
    ("GET", "/_cellserve/docs/assets/swagger-ui.css"),
]


@pytest.mark.parametrize(("method", "path"), ROUTE_KINDS)
def test_every_route_needs_the_token(secured: ServerThread, method: str, path: str) -> None:
    missing = httpx.request(method, secured.url + path)
    assert missing.status_code == 401
    assert missing.json()["reason"] == "Unauthorized"
    wrong = httpx.request(method, secured.url + path, headers={"Authorization": "token nope"})
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"Authorization": f"token {TOKEN}"}, {}),
        ({"Authorization": f"Bearer {TOKEN}"}, {}),
        ({}, {"token": TOKEN}),
    ],
    ids=["token-header", "bearer-header", "query"],
)
def test_token_forms_are_accepted(secured: ServerThread, headers, params) -> None:
    response = httpx.get(secured.url + "/hello", headers=headers, params=params)
    assert response.status_code == 200
    assert response.text == "hello world\n"


def test_token_never_reaches_the_notebook(secured: ServerThread) -> None:
    for kwargs in (
        {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        {"params": {"token": TOKEN, "a": "1"}},
    ):
        response = httpx.get(secured.url + "/request", **kwargs)
        assert response.status_code == 200
        assert TOKEN not in response.text
        request = json.loads(response.text)
        assert "Authorization" not in request["headers"]
        assert "token" not in request["args"]


def test_preflight_needs_no_token_and_honours_cors(secured: ServerThread) -> None:
    allowed = httpx.options(
        secured.url + "/hello",
        headers={"Origin": "https://good.example", "Access-Control-Request-Method": "GET"},
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://good.example"
    denied = httpx.options(
        secured.url + "/hello",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers


def test_plain_options_is_not_a_way_around_the_token(secured: ServerThread) -> None:
    for path in ("/hello", "/openapi.json", "/docs"):
        assert httpx.options(secured.url + path).status_code == 401


def test_cors_headers_on_simple_requests(secured: ServerThread) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = httpx.get(secured.url + "/hello", headers={**auth, "Origin": "https://good.example"})
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    assert good.headers["access-control-expose-headers"] == "X-Custom"
    evil = httpx.get(secured.url + "/hello", headers={**auth, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


def test_large_body_is_refused_with_413(secured: ServerThread) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    declared = httpx.post(secured.url + "/size", headers=auth, content=b"x" * 5000)
    assert declared.status_code == 413
    # Python's own phrase: "Request Entity Too Large" up to 3.12, "Content Too Large" after.
    assert declared.json()["reason"] == HTTPStatus(413).phrase

    def chunks():
        for _ in range(10):
            yield b"y" * 500

    streamed = httpx.post(secured.url + "/size", headers=auth, content=chunks())
    assert streamed.status_code == 413
    small = httpx.post(secured.url + "/size", headers=auth, json="abc")
    assert small.text == "3\n"


def test_huge_output_is_a_500_json_and_the_kernel_goes_on(secured: ServerThread) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.get(secured.url + "/flood", headers=auth)
    assert response.status_code == 500
    assert "response size limit" in response.json()["message"]
    assert httpx.get(secured.url + "/hello", headers=auth).text == "hello world\n"


def test_kernel_gateway_extras_when_enabled(secured: ServerThread, static_dir: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    source = httpx.get(secured.url + "/_api/source", headers=auth)
    assert source.status_code == 200
    assert {"cells", "metadata", "nbformat", "nbformat_minor"} <= set(source.json())
    static = httpx.get(secured.url + "/public/index.html", headers=auth)
    assert static.status_code == 200
    assert static.headers["content-type"].startswith("text/html")
    assert static.text == "<h1>static</h1>"


def test_kernel_gateway_extras_off_by_default(plain: ServerThread) -> None:
    for path in ("/_api/source", "/public/index.html"):
        response = httpx.get(plain.url + path)
        assert response.status_code == 404
        assert response.json()["reason"] == "Not Found"
    swagger = httpx.get(plain.url + "/_api/spec/swagger.json").json()
    assert swagger["swagger"] == "2.0"
    assert swagger["info"]["title"] == "plain"
    assert set(swagger["paths"]) == {"/hello", "/request", "/size", "/flood", "/price/:zip"}


def test_openapi_document_is_valid_and_describes_the_notebook(plain: ServerThread) -> None:
    document = httpx.get(plain.url + "/openapi.json").json()
    validate(document)
    hello = document["paths"]["/hello"]["get"]
    assert hello["summary"] == "Say hello"
    assert hello["description"].startswith("Greets whoever asks.")
    price = document["paths"]["/price/{zip}"]["get"]
    assert price["parameters"] == [
        {"name": "zip", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert "201" in price["responses"]
    assert {"404", "500", "503", "504"} <= set(price["responses"])
    post = document["paths"]["/size"]["post"]
    assert "application/json" in post["requestBody"]["content"]
    assert "413" in post["responses"]


def test_docs_page_is_served_offline(plain: ServerThread) -> None:
    page = httpx.get(plain.url + "/docs")
    assert page.status_code == 200
    assert "swagger-ui-bundle.js" in page.text
    assert "://" not in page.text  # no CDN: every asset comes from this server
    asset = httpx.get(plain.url + "/_cellserve/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.content) > 100_000


def test_kernel_gateway_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "KG_PORT": "9999",
        "KG_IP": "0.0.0.0",
        "KG_BASE_URL": "/kg",
        "KG_PRESPAWN_COUNT": "3",
        "KG_AUTH_TOKEN": "t",
        "KG_ALLOW_ORIGIN": "*",
        "KG_ALLOW_CREDENTIALS": "true",
        "KG_MAX_AGE": "30",
        "KG_ALLOW_NOTEBOOK_DOWNLOAD": "True",
        "KG_STATIC_PATH": "/srv/public",
        "KG_FORCE_KERNEL_NAME": "python3",
        "CELLSERVE_TIMEOUT": "5",
    }
    settings = Settings.load(env)
    assert (settings.port, settings.host, settings.base_url, settings.kernels) == (
        9999,
        "0.0.0.0",
        "/kg",
        3,
    )
    assert settings.auth_token == "t"
    assert settings.allow_origin == "*"
    assert settings.allow_credentials is True
    assert settings.max_age == 30
    assert settings.allow_notebook_download is True
    assert settings.static_path == Path("/srv/public")
    assert settings.kernel_name == "python3"
    assert settings.timeout == 5.0
    assert Settings.load({**env, "CELLSERVE_PORT": "1234"}).port == 1234


def test_auth_token_from_the_environment_protects_the_app(
    notebook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KG_AUTH_TOKEN", "from-env")
    with ServerThread(
        app_from_notebook(notebook(["# GET /x\nimport os\nprint(os.environ.get('KG_AUTH_TOKEN'))"]))
    ) as server:
        assert httpx.get(server.url + "/x").status_code == 401
        # The token is not handed to notebook code through the kernel's environment either.
        assert httpx.get(server.url + "/x", params={"token": "from-env"}).text == "None\n"


PER_RESPONSE = {"date", "x-request-id"}


def test_preflights_look_the_same_for_every_path(secured: ServerThread) -> None:
    """With CORS configured, its middleware answers every preflight before auth and routing,
    so a preflight without the token cannot tell which routes exist."""
    for origin in ("https://good.example", "https://evil.example"):
        headers = {"Origin": origin, "Access-Control-Request-Method": "GET"}
        answers = [
            httpx.options(secured.url + path, headers=headers)
            for path in ("/hello", "/price/1", "/no/such/route", "/_cellserve/health")
        ]
        seen = {
            (
                a.status_code,
                a.text,
                tuple(sorted(h for h in a.headers.items() if h[0] not in PER_RESPONSE)),
            )
            for a in answers
        }
        assert len(seen) == 1
