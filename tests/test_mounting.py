"""cellserve inside a host Starlette app (Mount), and under a base URL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import cellserve
from cellserve import app_from_notebook
from tests.servers import ServerThread, serving

CELLS = [
    "import json\nimport os\ncounter = 0",
    "# GET /x\nprint(1)",
    '# GET /hello/:name\nprint("hello " + json.loads(REQUEST)["path"]["name"])',
    "# POST /count\ncounter += 1\nprint(counter)",
    "# GET /pid\nprint(os.getpid())",
]


async def host_page(_: Request) -> PlainTextResponse:
    return PlainTextResponse("host")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stopped(pid: int, timeout: float = 30.0) -> bool:
    """True once `pid` has ended; waits (a guard for slow machines, not a threshold)."""
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not running(pid)


async def check_mounted(client: httpx.AsyncClient) -> int:
    """Assertions shared by both mounting styles; returns the kernel's pid."""
    response = await client.get("/model/x")
    assert response.status_code == 200
    assert response.text == "1\n"
    assert (await client.get("/model/hello/a%2Fb")).text == "hello a/b\n"
    assert (await client.get("/model/hello/Jos%C3%A9")).text == "hello José\n"
    assert (await client.post("/model/count")).text == "1\n"
    assert (await client.post("/model/count")).text == "2\n"
    assert (await client.get("/")).text == "host"

    for outside in ("/x", "/hello/a", "/count"):
        assert (await client.get(outside)).status_code == 404
    missing = await client.get("/model/nope")
    assert missing.status_code == 404
    assert missing.json()["reason"] == "Not Found"
    assert (await client.post("/model/x")).status_code == 405

    spec = (await client.get("/model/_api/spec/swagger.json")).json()
    assert set(spec["paths"]) == {"/x", "/hello/:name", "/count", "/pid"}
    return int((await client.get("/model/pid")).text)


@pytest.mark.anyio
async def test_mounted_with_composed_lifespan(notebook) -> None:
    model = app_from_notebook(notebook(CELLS))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with cellserve.lifespan(model):
            yield

    host = Starlette(routes=[Route("/", host_page), Mount("/model", app=model)], lifespan=lifespan)
    async with serving(host) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        # The lifespan started the kernel before the server accepted connections.
        health = (await client.get("/model/_cellserve/health")).json()
        assert health["status"] == "ok"
        pid = await check_mounted(client)
        assert running(pid)
    assert stopped(pid)


def test_mounted_without_lifespan_asks_for_one(notebook) -> None:
    model = app_from_notebook(notebook(CELLS))
    host = Starlette(routes=[Route("/", host_page), Mount("/model", app=model)])
    with ServerThread(host) as server:
        response = httpx.get(server.url + "/model/x", timeout=60)
        assert response.status_code == 503
        assert "cellserve.lifespan(app)" in response.json()["message"]
        assert "start_on_first_request=True" in response.json()["message"]
        assert httpx.get(server.url + "/", timeout=60).text == "host"


def test_mounted_without_lifespan_starts_on_first_request_when_asked(notebook) -> None:
    model = app_from_notebook(notebook(CELLS), start_on_first_request=True)
    host = Starlette(routes=[Route("/", host_page), Mount("/model", app=model)])
    with ServerThread(host) as server:
        health = httpx.get(server.url + "/model/_cellserve/health", timeout=60).json()
        assert health["status"] == "starting"

        async def check() -> int:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                # Concurrent first requests share one start.
                first = [client.get("/model/x") for _ in range(5)]
                assert [r.text for r in await asyncio.gather(*first)] == ["1\n"] * 5
                return await check_mounted(client)

        pid = anyio.run(check)
        assert running(pid)
        health = httpx.get(server.url + "/model/_cellserve/health", timeout=60).json()
        assert health["status"] == "ok"
        assert len(health["stats"]["kernels"]) == 1
    # Stopping the host's event loop stops the lazily started kernel too.
    assert stopped(pid)


def serve_broken_lazily(notebook, requests: int = 2) -> list[httpx.Response]:
    """Mount a notebook whose seed cell raises, without lifespan; GET /model/x `requests` times."""
    model = app_from_notebook(
        notebook(["1 / 0", "# GET /x\nprint(1)"], name="broken.ipynb"), start_on_first_request=True
    )
    host = Starlette(routes=[Route("/", host_page), Mount("/model", app=model)])
    with ServerThread(host) as server:
        responses = [httpx.get(server.url + "/model/x", timeout=60) for _ in range(requests)]
        assert httpx.get(server.url + "/", timeout=60).text == "host"
    return responses


def test_mounted_without_lifespan_seed_error_is_a_503(notebook) -> None:
    # The first request and the next one both get a clean 503, and the host keeps serving.
    for response in serve_broken_lazily(notebook):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.json()["reason"] == "Service Unavailable"


def test_mounted_without_lifespan_seed_error_names_the_cell(notebook) -> None:
    (response,) = serve_broken_lazily(notebook, requests=1)
    message = response.json()["message"]
    assert "broken.ipynb" in message
    assert "cell 1" in message
    assert "ZeroDivisionError" in message


@pytest.mark.anyio
async def test_base_url(notebook) -> None:
    app = app_from_notebook(notebook(['# GET /hello\nprint("hello world")']), base_url="/fake/path")
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        response = await client.get("/fake/path/hello")
        assert response.status_code == 200
        assert response.text == "hello world\n"

        response = await client.get("/hello")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        assert response.json()["reason"] == "Not Found"

        assert (await client.get("/fake/path/nope")).json()["reason"] == "Not Found"
        spec = await client.get("/fake/path/_api/spec/swagger.json")
        assert spec.status_code == 200
        assert set(spec.json()["paths"]) == {"/hello"}
        assert (await client.get("/_api/spec/swagger.json")).status_code == 404
        assert (await client.get("/fake/path/_cellserve/ready")).status_code == 200
        docs = (await client.get("/fake/path/docs")).text
        assert 'src="/fake/path/_cellserve/docs/assets/swagger-ui-bundle.js"' in docs
        assert '"/fake/path/_cellserve/openapi.json"' in docs
        assets = await client.get("/fake/path/_cellserve/docs/assets/swagger-ui-bundle.js")
        assert assets.status_code == 200
        openapi = (await client.get("/fake/path/openapi.json")).json()
        assert openapi["servers"] == [{"url": "/fake/path"}]


def test_base_url_with_trailing_slash(notebook) -> None:
    """`/fake/path/` means the same prefix; the prefix alone is not an endpoint."""
    app = app_from_notebook(notebook(['# GET /hello\nprint("hi")']), base_url="/fake/path/")
    with ServerThread(app) as server:
        assert httpx.get(server.url + "/fake/path/hello", timeout=60).text == "hi\n"
        prefix_only = httpx.get(server.url + "/fake/path", timeout=60, follow_redirects=True)
        assert prefix_only.status_code == 404
        assert httpx.get(server.url + "/fake/pathhello", timeout=60).status_code == 404
