"""What a kernel process writes to its own file descriptors 1 and 2 becomes cellserve log
records naming the notebook and kernel, in the server's log format."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import pytest

from cellserve.cells import CellCall
from cellserve.kernel_output import MAX_LINE_BYTES, KernelOutput
from cellserve.kernels import Kernel, KernelConfig
from cellserve.notebook import SeedCell
from tests.processes import CELLSERVE, Process
from tests.servers import free_port


def _pipes() -> set[str]:
    """This process's open pipe descriptors, as ``fd -> pipe:[inode]`` strings."""
    pipes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            pipes.add(f"{fd}->{target}")
    return pipes


def test_kernel_stderr_is_one_json_log_line_naming_the_kernel(
    notebook, processes: list[Process], tmp_path: Path
) -> None:
    """``cellserve serve --log-format json``: a seed cell's write to fd 2, and a kernel's last
    words before it dies, are JSON records naming the kernel; every line of the server's
    output parses."""
    path = notebook(
        [
            'import os\nos.write(2, b"hello from fd 2\\n")\nos.write(1, b"hello from fd 1\\n")',
            '# GET /die\nimport os\nos.write(2, b"last words\\n")\nos._exit(3)',
            "# GET /ping\nprint('pong')",
        ]
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [CELLSERVE, "serve", str(path), "--port", str(port), "--no-reload"]
    server = Process([*args, "--log-format", "json"], tmp_path / "log")
    processes.append(server)
    server.wait_ready(url)
    assert httpx.get(url + "/die", timeout=60).status_code >= 500
    until = time.monotonic() + 60
    while "last words" not in server.output:
        assert time.monotonic() < until, server.output
        time.sleep(0.1)
    server.wait_ready(url)  # a new kernel serves
    assert httpx.get(url + "/ping", timeout=60).text == "pong\n"
    server.popen.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0

    entries = [json.loads(line) for line in server.output.splitlines()]  # every line parses
    output = [e for e in entries if e["logger"] == "cellserve.kernels.output"]
    by_message = {e["message"].rsplit(": ", 1)[-1]: e for e in output}
    hello = by_message["hello from fd 2"]
    assert hello["level"] == "WARNING"
    assert hello["message"].startswith("api.ipynb kernel ")
    assert by_message["hello from fd 1"]["level"] == "INFO"
    assert by_message["last words"]["level"] == "WARNING"
    started = [e["message"] for e in entries if "seed cell 1 (1 of 1) running" in e["message"]]
    kernel_ids = {message.split()[2].rstrip(":") for message in started}
    assert hello["message"].split()[2] in kernel_ids


@pytest.mark.anyio
async def test_a_flood_never_stalls_the_kernel_and_shutdown_closes_the_pipes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Megabytes on fd 1 (more than a pipe holds) with one overlong line: the seed finishes,
    the long line is cut, and after shutdown no pipe of ours is left open."""
    before = _pipes()
    config = KernelConfig(kernel_name="python3", language="python", cwd=tmp_path, label="flood")
    caplog.set_level(logging.INFO, logger="cellserve.kernels.output")
    kernel = await Kernel.start(config)
    try:
        seed = (
            "import os\n"
            "for _ in range(20000):\n"
            "    os.write(1, b'x' * 100 + b'\\n')\n"
            f"os.write(1, b'y' * {MAX_LINE_BYTES * 4} + b'\\n')\n"
            "os.write(2, b'done\\n')\n"
        )
        with anyio.fail_after(120):
            await kernel.seed([SeedCell(1, seed)])
            while not any(r.getMessage().endswith("stderr: done") for r in caplog.records):
                await anyio.sleep(0.05)
        outcome = await kernel.finish(kernel.begin(CellCall("print(1)", "{}")), timeout=60)
        assert outcome.cell.stdout == "1\n"
    finally:
        await kernel.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.name == "cellserve.kernels.output"]
    assert sum(line.endswith("x" * 100) for line in lines) == 20000
    (long,) = [line for line in lines if "yyy" in line]
    assert long.startswith(f"flood kernel {kernel.id} stdout: ")
    assert long.endswith(f"{'y' * 10} [{MAX_LINE_BYTES * 3} more bytes dropped]")
    assert _pipes() <= before


@pytest.mark.parametrize(
    ("provisioner", "piped"), [("local-provisioner", True), ("some-remote-provisioner", False)]
)
def test_only_a_local_provisioner_is_handed_the_pipes(provisioner: str, piped: bool) -> None:
    """A provisioner that is not the local one (or a subclass) may not accept ``stdout=``."""
    spec = SimpleNamespace(metadata={"kernel_provisioner": {"provisioner_name": provisioner}})
    before = _pipes()
    output = KernelOutput.for_manager(SimpleNamespace(parent=None, kernel_spec=spec))
    assert set(output.launch_arguments()) == ({"stdout", "stderr"} if piped else set())
    output.close()
    assert _pipes() <= before
