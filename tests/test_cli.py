"""``cellserve serve`` and plain ``hypercorn`` as real processes: start-up, errors, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.processes import (
    CELLSERVE,
    HYPERCORN,
    Process,
    assert_gone,
    is_running,
    kernel_pids,
    run_quick,
)
from tests.servers import free_port

API_CELLS = ["x = 1", "# GET /x\nprint(x)", "# POST /echo\nprint(REQUEST)"]


def test_serve_logs_routes_and_sigterm_leaves_no_kernel(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    path = notebook(API_CELLS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "cellserve.cli", "serve", str(path)]
    server = Process([*args, "--port", str(port), "--no-reload"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)

    response = httpx.get(url + "/x", timeout=30)
    assert response.status_code == 200
    assert response.text == "1\n"
    assert httpx.post(url + "/echo", json={"a": 1}, timeout=30).json()["body"] == {"a": 1}
    log = server.output
    assert "GET /x" in log
    assert "POST /echo" in log
    assert url in log

    pids = kernel_pids(url)
    assert all(is_running(pid) for pid in pids)
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert_gone(pids)
    assert "Traceback" not in server.output


def test_kernel_gateway_environment_variables(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """KG users' settings keep working: KG_SEED_URI names the notebook, KG_PORT the port."""
    path = notebook(API_CELLS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"KG_SEED_URI": str(path), "KG_PORT": str(port)}
    server = Process([CELLSERVE, "serve"], tmp_path / "log", env)
    processes.append(server)
    server.wait_ready(url)
    assert httpx.get(url + "/x", timeout=30).text == "1\n"
    pids = kernel_pids(url)
    server.popen.send_signal(signal.SIGINT)
    assert server.wait(timeout=30) == 0
    assert_gone(pids)


def test_sigterm_with_a_request_in_flight(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """KG 3.0.1 ignores SIGTERM in some states; cellserve answers, exits and stops kernels."""
    path = notebook(["import time", "# GET /sleep\ntime.sleep(600)", "# GET /x\nprint(1)"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"]
    server = Process(args, tmp_path / "log", {"CELLSERVE_SHUTDOWN_GRACE": "1"})
    processes.append(server)
    server.wait_ready(url)
    pids = kernel_pids(url)
    answers: list[httpx.Response | Exception] = []

    def in_flight() -> None:
        try:
            answers.append(httpx.get(url + "/sleep", timeout=120))
        except httpx.HTTPError as exc:
            answers.append(exc)

    thread = threading.Thread(target=in_flight)
    thread.start()
    deadline = time.monotonic() + 60
    while httpx.get(url + "/_cellserve/health", timeout=10).json()["kernels"] != {"busy": 1}:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert_gone(pids)
    # The client is told (a 5xx or a closed connection), not left waiting for ever.
    assert len(answers) == 1
    answer = answers[0]
    assert isinstance(answer, httpx.HTTPError) or answer.status_code >= 500


def test_seed_cell_error_exits_quickly_naming_the_cell(notebook, tmp_path: Path) -> None:
    pid_file = tmp_path / "kernel.pid"
    record_pid = f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))"
    path = notebook([record_pid, "y = 2", "1 / 0", "# GET /x\nprint(y)"])
    result = run_quick([CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"])
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "cellserve: start-up failed: api.ipynb: seed cell 3 raised ZeroDivisionError: "
        "division by zero"
    )
    assert "Traceback" not in result.stderr  # the cell's traceback: --log-level debug
    assert " ERROR " not in result.stderr  # said once, by that last line
    assert_gone([int(pid_file.read_text())])

    debug = run_quick([*result.args, "--log-level", "debug"])
    assert debug.returncode == 1
    assert "ZeroDivisionError" in debug.stderr.split("start-up failed")[0]  # traceback shown


def test_notebook_without_endpoints_exits_with_message(notebook) -> None:
    path = notebook(["x = 1", ("markdown", "# GET /not_code")], name="plain.ipynb")
    result = run_quick([CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"])
    assert result.returncode != 0
    assert "plain.ipynb" in result.stderr
    assert "no endpoints" in result.stderr
    assert "# GET /hello" in result.stderr  # says how to declare one


def test_invalid_notebook_json_exits_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [', encoding="utf-8")
    result = run_quick([CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"])
    assert result.returncode != 0
    assert "broken.ipynb" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_notebook_exits_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.ipynb"
    result = run_quick([CELLSERVE, "serve", str(path), "--port", str(free_port()), "--no-reload"])
    assert result.returncode != 0
    assert "absent.ipynb" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_environment_variables() -> None:
    result = run_quick([CELLSERVE, "serve", "--help"])
    assert result.returncode == 0
    for name in ("KG_PORT", "CELLSERVE_PORT", "KG_SEED_URI", "KG_AUTH_TOKEN", "CELLSERVE_TIMEOUT"):
        assert name in result.stdout


def test_plain_hypercorn_serves_the_app_factory(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    path = notebook(API_CELLS)
    assert "'" not in str(path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    target = f"cellserve:app_from_notebook('{path}')"
    server = Process([HYPERCORN, target, "--bind", f"127.0.0.1:{port}"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    response = httpx.get(url + "/x", timeout=30)
    assert response.status_code == 200
    assert response.text == "1\n"
    pids = kernel_pids(url)
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert_gone(pids)


def test_several_notebooks_each_under_its_stem(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    first = notebook(["N = 1", "# GET /n\nprint(N)"], name="first.ipynb")
    second = notebook(["N = 2", "# GET /n\nprint(N)"], name="second.ipynb")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "cellserve.cli", "serve", str(first), str(second)]
    server = Process([*args, "--port", str(port), "--no-reload"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    assert httpx.get(url + "/first/n").text == "1\n"
    assert httpx.get(url + "/second/n").text == "2\n"

    # One SIGHUP reloads every notebook.
    notebook(["N = 1", "# GET /n\nprint(N + 10)"], name="first.ipynb")
    notebook(["N = 2", "# GET /n\nprint(N + 20)"], name="second.ipynb")
    server.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while httpx.get(url + "/first/n").text != "11\n" or httpx.get(url + "/second/n").text != "22\n":
        assert time.monotonic() < deadline, "SIGHUP did not reload both notebooks"
        time.sleep(0.1)
    health = httpx.get(url + "/_cellserve/health").json()
    pids = [k["pid"] for nb in health["notebooks"].values() for k in nb["stats"]["kernels"]]
    assert len(pids) == 2
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    assert_gone(pids)


# -- operating: version, options, port, log format, kernel transport ---------------------------


def test_version() -> None:
    result = run_quick([CELLSERVE, "--version"])
    assert result.returncode == 0
    assert re.fullmatch(r"cellserve \d+\.\d+\.\d+\S*\n", result.stdout)


def test_bad_option_value_is_one_line(notebook) -> None:
    path = notebook(API_CELLS)
    for bad in (
        ["--log-level", "verbose"],
        ["--log-format", "xml"],
        ["--port", "http"],
        ["--static-path", "/nonexistent/public"],
    ):
        result = run_quick([CELLSERVE, "serve", str(path), *bad])
        assert result.returncode == 2, bad
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert bad[0] in lines[0]
        assert repr(bad[1]) in lines[0] or bad[1] in lines[0]


def test_bad_log_setting_from_the_environment_is_one_line(notebook) -> None:
    path = notebook(API_CELLS)
    for variable, value in (("CELLSERVE_LOG_LEVEL", "verbose"), ("CELLSERVE_LOG_FORMAT", "xml")):
        result = run_quick([CELLSERVE, "serve", str(path)], env={variable: value})
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert repr(value) in lines[0] and variable in lines[0]


def test_port_in_use_fails_at_once_without_starting_a_kernel(notebook, tmp_path: Path) -> None:
    marker = tmp_path / "seeded"
    path = notebook([f"open({str(marker)!r}, 'w').close()", "# GET /x\nprint(1)"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # run_quick's timeout bounds it; the marker proves no kernel was started first.
        result = run_quick([CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"])
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0]
    assert "already in use" in lines[0]
    assert not marker.exists(), "a kernel ran the seed cell although the port was taken"


def test_json_logs_and_private_ipc_kernels(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """Every stderr line is a JSON object; kernels talk over IPC, so ipykernel has no
    'running over TCP without encryption' to warn about; the connection file is private."""
    path = notebook(API_CELLS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"]
    server = Process([*args, "--log-format", "json"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    response = httpx.get(url + "/x", headers={"X-Request-ID": "cli-json-1"}, timeout=30)
    assert response.status_code == 200
    [kernel_pid] = kernel_pids(url)
    connection_file = next(
        arg for arg in psutil.Process(kernel_pid).cmdline() if arg.endswith(".json")
    )
    info = json.loads(Path(connection_file).read_text())
    assert info["transport"] == "ipc"
    assert os.stat(connection_file).st_mode & 0o077 == 0
    assert os.stat(Path(connection_file).parent).st_mode & 0o077 == 0
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0

    entries = [json.loads(line) for line in server.output.splitlines()]
    access = [e for e in entries if e["logger"] == "cellserve.access"]
    [line] = [e for e in access if e["request_id"] == "cli-json-1"]
    assert (line["method"], line["path"], line["status"], line["bytes"]) == ("GET", "/x", 200, 2)
    assert line["kernel"] and line["duration_ms"] >= 0
    assert "without encryption" not in server.output
    assert not Path(connection_file).exists()  # cleaned up with the kernel


def test_tcp_transport_can_be_chosen(notebook, tmp_path: Path, processes: list[Process]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(notebook(API_CELLS)), "--port", str(port), "--no-reload"]
    server = Process([*args, "--transport", "tcp"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    assert httpx.get(url + "/x", timeout=30).text == "1\n"
    [kernel_pid] = kernel_pids(url)
    connection_file = next(
        arg for arg in psutil.Process(kernel_pid).cmdline() if arg.endswith(".json")
    )
    info = json.loads(Path(connection_file).read_text())
    assert (info["transport"], info["ip"]) == ("tcp", "127.0.0.1")
    assert os.stat(connection_file).st_mode & 0o077 == 0
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0


def test_the_command_skips_jsonschemas_slow_iri_backend_and_a_host_app_keeps_it() -> None:
    """The ``cellserve`` command (argv[0]) marks ``rfc3987_syntax`` absent before nbformat
    imports jsonschema (lean_start.py); a process that merely imports cellserve is left as is."""
    probe = (
        "import importlib.util, sys; installed = importlib.util.find_spec('rfc3987_syntax'); "
        "sys.argv[0] = {argv0!r}; import cellserve; "
        "print(installed is not None, repr(sys.modules.get('rfc3987_syntax', 'not imported')))"
    )

    def imported_as(argv0: str) -> tuple[bool, str]:
        result = subprocess.run(
            [sys.executable, "-c", probe.format(argv0=argv0)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        installed, module = result.stdout.strip().split(" ", 1)
        return installed == "True", module

    assert imported_as("/venv/bin/cellserve")[1] == "None"
    installed, module = imported_as("/srv/app.py")
    if installed:
        assert module.startswith("<module 'rfc3987_syntax'"), module
    else:
        assert module == "'not imported'", module


def test_the_server_raises_its_open_files_limit_for_itself_and_its_kernels(
    notebook, tmp_path: Path, processes: list[Process]
) -> None:
    """Started with a soft limit of 64 descriptors under the test's hard limit, the server and
    the kernels it starts may open as many as the hard limit (a kernel holds about 15 in the
    server)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    path = notebook(API_CELLS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"]
    limited = "import os, resource, sys; "
    limited += f"resource.setrlimit(resource.RLIMIT_NOFILE, (64, {hard})); "
    limited += "os.execv(sys.argv[1], sys.argv[1:])"
    server = Process([sys.executable, "-c", limited, *serve], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    (kernel,) = kernel_pids(url)
    for pid in (server.popen.pid, kernel):
        assert psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
