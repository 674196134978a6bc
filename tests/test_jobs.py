"""Job routes on real kernels behind a real server; the job table's bookkeeping alone.

The server has one kernel, a token and a base URL, so every job URL is checked through
both. Cells wait on gate files the tests create, never on the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from openapi_spec_validator import validate
from starlette.responses import Response

from cellserve import NotebookError, app_from_notebook
from cellserve.jobs import Job, JobState, JobTable
from cellserve.notebook import parse_notebook_text
from tests.servers import ServerThread, notebook_text, write_notebook

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GATED = (
    "import json, os, time\n"
    "def wait_for(path):\n"
    "    while not os.path.exists(path):\n"
    "        time.sleep(0.02)\n"
)
TRAIN = (
    "# POST /train\n"
    "# cellserve: job, timeout=120\n"
    "body = json.loads(REQUEST)['body']\n"
    "print('epoch 1', flush=True)\n"
    "wait_for(body['gate'])\n"
    "print('model', body['name'])\n"
)
TRAIN_INFO = (
    "# ResponseInfo POST /train\nprint(json.dumps({'status': 201, 'headers': {'X-Model': 'v1'}}))\n"
)
FOREVER = (
    "# GET /forever\n# cellserve: job\nprint('looping', flush=True)\nwhile True: time.sleep(0.05)\n"
)
BROKEN = "# GET /broken\n# cellserve: job\n1 / 0\n"


def _cells(quick: str = "hi") -> list[str]:
    return [GATED, TRAIN, TRAIN_INFO, FOREVER, BROKEN, f"# GET /quick\nprint('{quick}')"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    path = write_notebook(tmp_path_factory.mktemp("jobs") / "jobs.ipynb", _cells())
    app = app_from_notebook(path, auth_token=TOKEN, base_url="/api/", kernels=1)
    with ServerThread(app) as running:
        yield running, path


@pytest.fixture
def client(server: tuple[ServerThread, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, headers=AUTH, timeout=60) as http:
        yield http


def _until(client: httpx.Client, location: str, done: Callable[[dict[str, Any]], bool]) -> Any:
    """The job's description once `done` holds for it (polled, with a generous deadline)."""
    deadline = time.monotonic() + 90
    while True:
        job = client.get(location).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the expected state: {job}"
        time.sleep(0.05)


def test_job_answers_202_shows_progress_and_keeps_the_routes_answer(
    client: httpx.Client, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    accepted = client.post("/api/train", json={"gate": str(gate), "name": "forest"})
    assert accepted.status_code == 202
    location = accepted.headers["location"]
    assert location.startswith("/api/_cellserve/jobs/")
    assert accepted.json()["state"] in ("queued", "running")  # a kernel may be free already

    running = _until(client, location, lambda job: "epoch 1" in job["progress"])
    assert running["state"] == "running" and "result" not in running
    assert client.get(location + "/result").status_code == 202
    assert httpx.get(server_url(client) + location).status_code == 401  # behind the token

    gate.touch()
    done = _until(client, location, lambda job: job["state"] == "done")
    assert done["route"] == "POST /train"
    assert done["result"]["status"] == 201
    assert done["result"]["headers"]["x-model"] == "v1"
    # As for any route, the body is everything the cell printed.
    assert done["result"]["body"] == done["progress"] == "epoch 1\nmodel forest\n"

    result = client.get(location + "/result")
    assert result.status_code == 201
    assert result.headers["x-model"] == "v1"
    assert result.headers["content-type"] == "text/plain"  # what the route itself answers
    assert result.text == "epoch 1\nmodel forest\n"

    assert client.delete(location).json()["state"] == "done"  # forgets a finished job
    assert client.get(location).status_code == 404


def server_url(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def test_delete_interrupts_a_running_job_and_frees_its_kernel(client: httpx.Client) -> None:
    location = client.get("/api/forever").headers["location"]
    running = _until(client, location, lambda job: "looping" in job["progress"])
    assert running["state"] == "running" and running["started"] >= running["created"]
    waiting = client.get("/api/broken").headers["location"]  # the only kernel is busy
    assert client.get(waiting).json()["state"] == "queued"

    cancelled = client.delete(location)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert client.get(location).json()["state"] == "cancelled"
    assert client.get(location + "/result").status_code == 409
    # The queued job got the kernel once the loop was interrupted.
    assert _until(client, waiting, lambda job: job["state"] == "done")["result"]["status"] == 500
    # The server's only kernel was interrupted, not left looping: it answers at once.
    assert client.get("/api/quick").text.startswith(("hi", "edited"))


def test_a_failing_job_keeps_the_cells_error_as_its_result(client: httpx.Client) -> None:
    location = client.get("/api/broken").headers["location"]
    done = _until(client, location, lambda job: job["state"] == "done")
    assert done["result"]["status"] == 500
    assert done["result"]["body"].startswith("Error ZeroDivisionError")


def test_a_job_survives_a_reload_of_other_routes(
    client: httpx.Client, server: tuple[ServerThread, Path], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    location = client.post("/api/train", json={"gate": str(gate), "name": "kept"}).headers[
        "location"
    ]
    _until(client, location, lambda job: "epoch 1" in job["progress"])
    path = server[1]
    path.write_text(notebook_text(_cells(quick="edited")), encoding="utf-8")
    reload = client.post("/api/_cellserve/reload").json()
    assert reload["change"] == "routes" and reload["error"] is None

    gate.touch()
    done = _until(client, location, lambda job: job["state"] == "done")
    assert done["result"]["status"] == 201
    assert done["result"]["body"] == "epoch 1\nmodel kept\n"
    assert client.get("/api/quick").text == "edited\n"


def test_a_job_outlives_the_server_timeout_when_a_reload_retires_its_kernels(
    tmp_path: Path,
) -> None:
    """The retired pool waits for the job's own timeout (120 s), not the server's (1 s)."""
    path = write_notebook(tmp_path / "jobs.ipynb", [GATED, TRAIN])
    gate = tmp_path / "gate"
    app = app_from_notebook(path, timeout=1, queue_timeout=1, shutdown_grace=1, kernels=1)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        location = client.post("/train", json={"gate": str(gate), "name": "kept"}).headers[
            "location"
        ]
        _until(client, location, lambda job: "epoch 1" in job["progress"])
        write_notebook(path, ["VERSION = 2\n" + GATED, TRAIN])
        reload = client.post("/_cellserve/reload").json()
        assert reload["change"] == "kernels" and reload["error"] is None
        # Past the server's timeout + queue timeout + shutdown grace, when the old pool, its
        # wait over, would have stopped the job's kernel.
        time.sleep(4)
        gate.touch()
        done = _until(client, location, lambda job: job["state"] == "done")
        assert done["result"]["status"] == 200
        assert done["result"]["body"] == "epoch 1\nmodel kept\n"


def test_openapi_documents_the_202_and_the_job_endpoints(client: httpx.Client) -> None:
    spec = client.get("/api/openapi.json").json()
    validate(spec)
    train = spec["paths"]["/train"]["post"]["responses"]
    assert "202" in train and "Location" in train["202"]["headers"]
    assert "201" not in train  # the cell's own status arrives inside the job
    jobs = spec["paths"]["/_cellserve/jobs/{job_id}"]
    assert {"get", "delete"} <= set(jobs)
    assert "get" in spec["paths"]["/_cellserve/jobs/{job_id}/result"]
    assert "202" not in spec["paths"]["/quick"]["get"]["responses"]


def test_health_counts_jobs(client: httpx.Client) -> None:
    health = client.get("/api/_cellserve/health").json()
    assert set(health["jobs"]) == {"queued", "running", "done", "cancelled"}


# -- the directive ---------------------------------------------------------------------------


def test_job_directive_is_parsed_and_cannot_be_combined_with_stream() -> None:
    api = parse_notebook_text(notebook_text([TRAIN]), name="nb.ipynb")
    assert api.endpoints[0].options.job
    assert api.endpoints[0].options.timeout == 120
    with pytest.raises(NotebookError, match="`stream` and `job` exclude each other"):
        parse_notebook_text(
            notebook_text(["# GET /x\n# cellserve: job, stream\nprint(1)"]), name="nb.ipynb"
        )


# -- the table alone (no kernel) -------------------------------------------------------------


def _nothing_held() -> Any:
    return _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.anyio
async def test_table_keeps_at_most_max_jobs_and_makes_room_from_finished_ones() -> None:
    table = JobTable(ttl=3600, max_jobs=2)
    release = anyio.Event()

    async def blocked(_: Job) -> Response:
        await release.wait()
        return Response("late")

    async def quick(_: Job) -> Response:
        return Response("done", 200)

    async with anyio.create_task_group() as tg:
        await tg.start(table.run)
        first = await table.submit("GET /a", quick, _nothing_held)
        second = await table.submit("GET /b", blocked, _nothing_held)
        with anyio.fail_after(10):
            await first.ended.wait()
        third = await table.submit("GET /c", blocked, _nothing_held)  # first makes room
        assert table.get(first.id) is None
        assert table.get(second.id) is second and table.get(third.id) is third
        with pytest.raises(Exception, match="2 jobs are running"):
            await table.submit("GET /d", blocked, _nothing_held)
        release.set()
        with anyio.fail_after(10):
            await third.ended.wait()
        assert third.result is not None and third.result.body == b"late"
        table.close()


@pytest.mark.anyio
async def test_table_forgets_finished_jobs_after_the_ttl_and_cancels_on_close() -> None:
    table = JobTable(ttl=0.01, max_jobs=10)

    async def quick(_: Job) -> Response:
        return Response("done")

    async def forever(_: Job) -> Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def crashes(_: Job) -> Response:
        raise RuntimeError("bug in the work")

    async with anyio.create_task_group() as tg:
        await tg.start(table.run)
        finished = await table.submit("GET /a", quick, _nothing_held)
        crashed = await table.submit("GET /c", crashes, _nothing_held)
        running = await table.submit("GET /b", forever, _nothing_held)
        with anyio.fail_after(10):
            await crashed.ended.wait()
            while table.get(finished.id) is not None:
                await anyio.sleep(0.02)
        assert crashed.result is not None and crashed.result.status == 500
        table.close()
    assert running.state is JobState.CANCELLED


def test_job_urls_carry_the_notebooks_prefix_in_a_multi_notebook_app(tmp_path: Path) -> None:
    from cellserve import app_from_notebooks
    from cellserve.testing import notebook_client

    path = write_notebook(tmp_path / "quick.ipynb", ["# GET /now\n# cellserve: job\nprint('ok')"])
    with notebook_client(app_from_notebooks({"nb": path})) as client:
        accepted = client.get("/nb/now")
        assert accepted.status_code == 202
        location = accepted.headers["location"]
        assert location.startswith("/nb/_cellserve/jobs/")
        deadline = time.monotonic() + 90
        while (job := client.get(location).json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["result"]["body"] == "ok\n"
        assert client.get(location + "/result").text == "ok\n"
        spec = client.get("/openapi.json").json()
        assert "/nb/_cellserve/jobs/{job_id}" in spec["paths"]
