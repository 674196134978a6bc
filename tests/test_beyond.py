"""Beyond Kernel Gateway: rich responses, uploads, streaming, several notebooks, other kernels."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cellserve import app_from_notebook, app_from_notebooks
from tests.servers import ServerThread, serving, write_notebook

RICH_CELLS: list[str | tuple[str, str]] = [
    "import base64, hashlib, json, time\n"
    "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
    "import matplotlib.pyplot as plt\n"
    "from IPython.display import HTML, JSON, display\n"
    "RUNS = 0",
    "# GET /plot\nfig, ax = plt.subplots(figsize=(3, 2), dpi=100)\nax.plot([1, 2, 3])\n"
    "display(fig)\nplt.close(fig)",
    "# GET /badge\nclass Badge:\n    def _repr_html_(self):\n        return '<b>badge</b>'\n"
    "    def _repr_json_(self):\n        return {'badge': True}\nBadge()",
    "# GET /html\ndisplay(HTML('<p>hi</p>'))",
    "# GET /value\n1 + 1",
    "# POST /upload\nreq = json.loads(REQUEST)\n"
    "print(json.dumps([{'name': f['name'], 'filename': f['filename'],"
    " 'type': f['content_type'], 'sha': hashlib.sha256(base64.b64decode(f['content'])).hexdigest()}"
    " for f in req['files']] + [req['body']]))",
    "# POST /binary\nreq = json.loads(REQUEST)\n"
    "print(req.get('body_encoding'), hashlib.sha256(base64.b64decode(req['body'])).hexdigest())",
    "# GET /progress\n# cellserve: stream\nfor i in range(3):\n    print(f'step {i}', flush=True)\n"
    "    time.sleep(0.4)\nprint('done')",
    "# GET /forever\n# cellserve: stream\nRUNS += 1\nprint('started', flush=True)\n"
    "while True:\n    time.sleep(0.05)",
    "# GET /runs\nprint(RUNS)",
]


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory):
    path = write_notebook(tmp_path_factory.mktemp("nb") / "rich.ipynb", RICH_CELLS)
    with ServerThread(app_from_notebook(path, timeout=20)) as server:
        yield server


def test_matplotlib_figure_comes_back_as_png(rich: ServerThread) -> None:
    from PIL import Image

    response = httpx.get(rich.url + "/plot", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size[0] > 100 and image.size[1] > 50


def test_accept_chooses_among_the_bundle(rich: ServerThread) -> None:
    html = httpx.get(rich.url + "/badge", headers={"Accept": "text/html"})
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert html.text == "<b>badge</b>"
    as_json = httpx.get(rich.url + "/badge", headers={"Accept": "application/json"})
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json() == {"badge": True}
    text = httpx.get(rich.url + "/value", headers={"Accept": "text/plain"})
    assert text.text == "2"


def test_without_accept_execute_result_keeps_kernel_gateways_answer(rich: ServerThread) -> None:
    response = httpx.get(rich.url + "/value", headers={"Accept": "*/*"})
    assert response.headers["content-type"] == "text/plain"
    assert response.text == '{"text/plain": "2"}'
    badge = httpx.get(rich.url + "/badge", headers={"Accept": "*/*"})
    assert json.loads(badge.text)["text/html"] == "<b>badge</b>"


def test_display_only_cell_answers_its_richest_type(rich: ServerThread) -> None:
    response = httpx.get(rich.url + "/html", headers={"Accept": "*/*"})
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == "<p>hi</p>"


def test_file_upload_reaches_the_cell_intact(rich: ServerThread) -> None:
    payload = bytes(range(256)) * 40
    response = httpx.post(
        rich.url + "/upload",
        files={"data": ("blob.bin", payload, "application/octet-stream")},
        data={"note": "hello"},
    )
    assert response.status_code == 200
    upload, fields = json.loads(response.text)[0], json.loads(response.text)[1]
    assert upload == {
        "name": "data",
        "filename": "blob.bin",
        "type": "application/octet-stream",
        "sha": hashlib.sha256(payload).hexdigest(),
    }
    assert fields == {"note": ["hello"]}


def test_binary_body_arrives_base64_encoded(rich: ServerThread) -> None:
    payload = b"\x00\xff\xfe binary \x80"
    for content_type in ("application/octet-stream", "text/plain"):
        response = httpx.post(
            rich.url + "/binary", content=payload, headers={"Content-Type": content_type}
        )
        assert response.text == f"base64 {hashlib.sha256(payload).hexdigest()}\n"


def test_streaming_sends_chunks_before_the_cell_ends(rich: ServerThread) -> None:
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream("GET", rich.url + "/progress", timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            arrivals.append((time.monotonic() - started, chunk))
    text = "".join(chunk for _, chunk in arrivals)
    assert text == "step 0\nstep 1\nstep 2\ndone\n"
    first_step = next(t for t, chunk in arrivals if "step 0" in chunk)
    assert first_step < arrivals[-1][0]  # the first line came while the cell still ran


def test_server_sent_events(rich: ServerThread) -> None:
    response = httpx.get(
        rich.url + "/progress", headers={"Accept": "text/event-stream"}, timeout=30
    )
    assert response.headers["content-type"] == "text/event-stream"
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0] == "data: step 0"
    assert events[-1] == "event: end\ndata: "


def test_client_disconnect_interrupts_a_streaming_cell(rich: ServerThread) -> None:
    with httpx.stream("GET", rich.url + "/forever", timeout=30) as response:
        first = next(response.iter_text())
        assert first.startswith("started")
    # The kernel was interrupted, so it is free again well before the 20 s timeout.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = httpx.get(rich.url + "/runs", timeout=15)
        if runs.status_code == 200:
            break
    assert runs.text == "1\n"


@pytest.mark.anyio
async def test_two_notebooks_side_by_side(tmp_path: Path) -> None:
    first = write_notebook(
        tmp_path / "first.ipynb", ["N = 0", "# POST /bump\nN += 1\nprint(N)", "# GET /n\nprint(N)"]
    )
    second = write_notebook(tmp_path / "second.ipynb", ["N = 100", "# GET /n\nprint(N)"])
    app = app_from_notebooks({"one": first, "two": second})
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.post("/one/bump")).text == "1\n"
        assert (await client.get("/one/n")).text == "1\n"
        assert (await client.get("/two/n")).text == "100\n"
        assert (await client.get("/n")).status_code == 404
        health = (await client.get("/_cellserve/health")).json()
        assert set(health["notebooks"]) == {"one", "two"}
        assert health["status"] == "ok"
        spec = (await client.get("/openapi.json")).json()
        assert {"/one/bump", "/one/n", "/two/n"} == set(spec["paths"])
        docs = await client.get("/docs")
        assert "/one/_cellserve/openapi.json" in docs.text
        assert "/two/_cellserve/openapi.json" in docs.text


@pytest.fixture
def bash_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "jupyter"
    subprocess.run(
        [sys.executable, "-m", "bash_kernel.install", "--prefix", str(prefix)],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


@pytest.mark.anyio
@pytest.mark.usefixtures("bash_kernel")
async def test_bash_kernel_endpoint(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "shell.ipynb",
        [
            "GREETING=hello",
            "# GET /hello/:name\n"
            "name=$(python3 -c 'import json,sys; "
            'print(json.loads(sys.argv[1])["path"]["name"])\''
            ' "$REQUEST")\n'
            'echo "$GREETING $name"',
            '# POST /echo\necho "$REQUEST"',
        ],
        kernel="bash",
        language="bash",
    )
    app = app_from_notebook(path)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.get("/hello/world")
        assert response.status_code == 200
        assert response.text.strip() == "hello world"
        tricky = 'it\'s $(whoami) `id` "quoted"'
        echoed = await client.post("/echo", content=tricky)
        assert json.loads(echoed.text)["body"] == tricky
