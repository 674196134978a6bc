"""Start-up as an operator meets it: listening at once, progress while seeding, concurrent
notebooks, failures as one line with the right exit status, signals while seeding.

Slow seeds are simulated with a *gate*: the seed cell waits until the test creates a file.
That proves "still seeding" without guessing durations, and keeps the tests fast.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import CELLSERVE, HYPERCORN, Process, assert_gone, kernel_pids, run_quick
from tests.servers import free_port, write_notebook


def gated_seed(gate: Path, pid_file: Path) -> str:
    """A seed cell that records its kernel's pid, then waits (up to 120 s) for `gate`."""
    return (
        "import os, time\n"
        # Written whole, then renamed: the test reads the pid as soon as the file exists.
        f"with open({str(pid_file)!r} + '.tmp', 'w') as f: f.write(str(os.getpid()))\n"
        f"os.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\n"
        "print('waiting for the gate')\n"
        "deadline = time.monotonic() + 120\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('gate open')"
    )


def wait_for(condition, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def test_listens_at_once_and_shows_progress_until_seeded(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """Health answers while the seed cell is provably still running, so hypercorn's lifespan
    start-up finished before seeding: its start-up timeout cannot cut a slow seed short."""
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    path = notebook([gated_seed(gate, pid_file), "x = 1", "# GET /x\nprint(x)"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload", "--seed-output"]
    launched = time.monotonic()
    server = Process(args, tmp_path / "log")
    processes.append(server)

    wait_for(lambda: get(url + "/_cellserve/health") is not None, "health never answered")
    listening_after = time.monotonic() - launched
    wait_for(pid_file.exists, "the seed cell never started")
    health = httpx.get(url + "/_cellserve/health", timeout=5).json()
    assert health["status"] == "starting"
    assert health["starting_seconds"] >= 0
    [kernel] = health["stats"]["kernels"]
    assert (kernel["state"], kernel["seed_cell"], kernel["seed_cells"]) == ("seeding", 1, 2)
    assert kernel["state_seconds"] >= 0
    assert health["kernels"] == {"seeding": 1}
    assert httpx.get(url + "/_cellserve/ready", timeout=5).status_code == 503
    early = httpx.get(url + "/x", timeout=5)
    assert early.status_code == 503
    assert early.headers["retry-after"].isdigit()
    assert "api.ipynb is starting" in early.json()["message"]
    assert not gate.exists()  # all of the above happened while seeding

    gate.touch()
    server.wait_ready(url)
    assert httpx.get(url + "/x", timeout=30).text == "1\n"
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0

    log = server.output
    assert "listening on " + url in log
    assert "seed cell 1 (1 of 2) running" in log
    assert "seed cell 1 printed: gate open" in log  # --seed-output
    assert "seed cell 2 done in " in log
    assert "serving GET /x" in log
    assert "ready in " in log and f": {url}/ (docs: {url}/docs)" in log
    assert "Traceback" not in log
    print(f"health answered {listening_after:.2f} s after launch")


def test_plain_hypercorn_listens_first_past_its_startup_timeout(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """``hypercorn module:app`` with a 1 s lifespan start-up timeout serves a notebook whose
    seed runs longer than that."""
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    path = notebook([gated_seed(gate, pid_file), "# GET /x\nprint(1)"])
    config = tmp_path / "hypercorn.toml"
    config.write_text("startup_timeout = 1\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    target = f"cellserve:app_from_notebook('{path}')"
    args = [HYPERCORN, "-c", str(config), target, "--bind", f"127.0.0.1:{port}"]
    server = Process(args, tmp_path / "log")
    processes.append(server)
    wait_for(pid_file.exists, "the seed cell never started")
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # past the 1 s start-up timeout, still seeding
        assert httpx.get(url + "/_cellserve/ready", timeout=5).status_code == 503
        time.sleep(0.1)
    assert server.popen.poll() is None, server.output
    gate.touch()
    server.wait_ready(url)
    assert httpx.get(url + "/x", timeout=30).text == "1\n"
    pids = kernel_pids(url)
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert_gone(pids)


def test_missing_notebook_under_plain_hypercorn_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "absent.ipynb"
    target = f"cellserve:app_from_notebook('{path}')"
    result = run_quick([HYPERCORN, target, "--bind", f"127.0.0.1:{free_port()}"], timeout=60)
    assert result.returncode != 0
    failures = [line for line in result.stderr.splitlines() if "start-up failed" in line]
    assert failures == [
        f"cellserve: start-up failed: cannot read notebook {path}: "
        f"[Errno 2] No such file or directory: '{path}'"
    ]
    assert "Traceback" not in result.stderr


def test_bad_setting_under_plain_hypercorn_exits_non_zero(notebook) -> None:
    """Raised while hypercorn's worker imports the app (hypercorn alone: traceback, exit 0)."""
    path = notebook(["# GET /x\nprint(1)"])
    for target in (
        f"cellserve:app_from_notebook('{path}')",
        f"cellserve:app_from_notebooks(['{path}'])",
    ):
        args = [HYPERCORN, target, "--bind", f"127.0.0.1:{free_port()}"]
        result = run_quick(args, timeout=60, env={"CELLSERVE_KERNELS": "0"})
        assert result.returncode != 0
        failures = [line for line in result.stderr.splitlines() if "start-up failed" in line]
        assert failures == ["cellserve: start-up failed: kernels must be at least 1, got 0"]
        assert "Traceback" not in result.stderr


def test_two_notebooks_seed_concurrently(tmp_path: Path, processes: list[Process]) -> None:
    """Each seed waits for the other's to have started: sequential seeding would deadlock
    (and fail at the 60 s barrier), so both being ready proves they seed at the same time."""

    def barrier_seed(mine: str, other: str) -> str:
        return (
            "import os, time\n"
            f"open({str(tmp_path / mine)!r}, 'w').close()\n"
            "deadline = time.monotonic() + 60\n"
            f"while not os.path.exists({str(tmp_path / other)!r}):\n"
            "    assert time.monotonic() < deadline, 'the other notebook never started seeding'\n"
            "    time.sleep(0.05)\n"
            "time.sleep(2)"
        )

    first = write_notebook(tmp_path / "first.ipynb", [barrier_seed("a", "b"), "# GET /n\nprint(1)"])
    second = write_notebook(
        tmp_path / "second.ipynb", [barrier_seed("b", "a"), "# GET /n\nprint(2)"]
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(first), str(second), "--port", str(port), "--no-reload"]
    launched = time.monotonic()
    server = Process(args, tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    ready_after = time.monotonic() - launched
    assert httpx.get(url + "/first/n", timeout=30).text == "1\n"
    assert httpx.get(url + "/second/n", timeout=30).text == "2\n"
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    print(f"two notebooks with 2 s seeds ready {ready_after:.1f} s after launch")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_seeding_exits_quietly_with_no_kernel_left(
    notebook, tmp_path: Path, processes: list[Process], signum: int
) -> None:
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    path = notebook([gated_seed(gate, pid_file), "# GET /x\nprint(1)"])
    args = [CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"]
    server = Process(args, tmp_path / "log")
    processes.append(server)
    wait_for(pid_file.exists, "the seed cell never started")
    kernel = int(pid_file.read_text())
    server.popen.send_signal(signum)
    assert server.wait(timeout=30) == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    assert_gone([kernel])
    assert "Traceback" not in server.output
    assert "ERROR" not in server.output


def test_seed_timeout_is_one_line(notebook, tmp_path: Path) -> None:
    path = notebook(["import time\ntime.sleep(60)", "# GET /x\nprint(1)"])
    args = [CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"]
    result = subprocess_run(args, {"CELLSERVE_SEED_TIMEOUT": "1"})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "cellserve: start-up failed: api.ipynb: seed cell 1 ran longer than 1.0 s"
    )
    assert "Traceback" not in result.stderr


def subprocess_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )


def test_live_progress_on_a_terminal(notebook, tmp_path: Path) -> None:
    """With stderr on a terminal, a table of the kernels' seed progress is drawn (and the
    log lines still print); redirected output, as in every other test, gets lines only."""
    gate, pid_file = tmp_path / "gate", tmp_path / "pid"
    path = notebook([gated_seed(gate, pid_file), "# GET /x\nprint(1)"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    controller, terminal = pty.openpty()
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"]
    server = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=os.environ.copy()
    )
    os.close(terminal)
    seen = bytearray()

    def read_available() -> None:
        while select.select([controller], [], [], 0.05)[0]:
            try:
                seen.extend(os.read(controller, 65536))
            except OSError:
                return

    try:
        wait_for(
            lambda: (read_available(), b"seed cell" in seen and b"seeding" in seen)[1],
            "no live table was drawn",
        )
        gate.touch()
        wait_for(lambda: (read_available(), b"ready in " in seen)[1], "never ready")
        assert httpx.get(url + "/x", timeout=30).text == "1\n"
    finally:
        server.send_signal(signal.SIGTERM)
        # Keep reading while it stops: a terminal nobody reads blocks the server's writes.
        wait_for(lambda: (read_available(), server.poll() is not None)[1], "never stopped")
        read_available()
        os.close(controller)
    text = seen.decode(errors="replace")
    assert "notebook" in text and "kernel" in text  # the table's header
    assert "seed cell 1 (1 of 1) running" in text  # the log lines, above it
    assert server.returncode == 0, text[-2000:]


def test_test_client_waits_for_seeding_and_raises_a_seed_error(notebook) -> None:
    """In-process (Starlette's TestClient: no ``asgi`` key in the lifespan scope) the lifespan
    waits for seeding, and a seed error is raised in the test, never ending the process."""
    from starlette.testclient import TestClient

    from cellserve import SeedError, app_from_notebook

    with TestClient(app_from_notebook(notebook(["x = 41", "# GET /x\nprint(x + 1)"]))) as client:
        assert client.get("/x").text == "42\n"  # no 503: seeded before the block runs
    broken = app_from_notebook(notebook(["1 / 0", "# GET /x\nprint(1)"], name="broken.ipynb"))
    with (
        pytest.raises(SeedError, match="seed cell 1 raised ZeroDivisionError"),
        TestClient(broken),
    ):
        pytest.fail("started although its seed cell raises")


def test_the_ready_lines_docs_url_is_served(notebook) -> None:
    """The ``ready in …`` line names ``hooks.docs_path``: with ``docs=False`` only
    cellserve's own docs page exists."""
    from starlette.testclient import TestClient

    from cellserve import app_from_notebook

    path = notebook(["# GET /x\nprint(1)"])
    for docs, answers in ((True, "/docs"), (False, "/_cellserve/docs")):
        app = app_from_notebook(path, docs=docs)
        assert app.state.cellserve_server.docs_path == answers
        with TestClient(app) as client:
            assert client.get(answers).status_code == 200
            assert client.get("/docs").status_code == (200 if docs else 404)
