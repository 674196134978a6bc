"""Test helpers: notebooks on disk and hypercorn servers on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import nbformat
from hypercorn.asyncio import serve
from hypercorn.config import Config

from cellserve.startup import ServerHooks

T = TypeVar("T")

Cell = str | tuple[str, str]


def notebook_text(cells: Sequence[Cell], metadata: Mapping[str, Any] | None = None) -> str:
    """Notebook JSON: cells are code sources, or ``("markdown", text)`` / ``("raw", text)``."""
    notebook = nbformat.v4.new_notebook()
    if metadata is None:
        metadata = {
            "kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"},
            "language_info": {"name": "python"},
        }
    notebook.metadata.update(metadata)
    for cell in cells:
        if isinstance(cell, tuple):
            kind, text = cell
            maker = (
                nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_raw_cell
            )
            notebook.cells.append(maker(text))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(cell))
    return str(nbformat.writes(notebook))


def write_notebook(
    path: Path, cells: Sequence[Cell], *, kernel: str = "python3", language: str = "python"
) -> Path:
    """Write a notebook for `kernel` / `language` to `path`."""
    metadata = {
        "kernelspec": {"name": kernel, "language": language, "display_name": kernel},
        "language_info": {"name": language},
    }
    path.write_text(notebook_text(cells, metadata), encoding="utf-8")
    return path


def free_port() -> int:
    """A port that was free a moment ago (for subprocess servers that bind it themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bound_socket() -> tuple[int, int]:
    """A loopback socket bound now, handed to hypercorn by fd: no race for the port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    return sock.detach(), port


def _config(fd: int) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.graceful_timeout = 5
    return config


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve `app` with hypercorn in this event loop; yield its base URL once seeded."""
    fd, port = _bound_socket()
    stop = anyio.Event()
    hooks = _server_hooks(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, _config(fd), shutdown_trigger=stop.wait))
        url = f"http://127.0.0.1:{port}"
        await _wait_until_listening(port)
        with anyio.fail_after(120):
            while hooks is not None and not hooks.ready:
                if hooks.failures:
                    raise RuntimeError(f"the app failed to start: {hooks.failures[0]}")
                await anyio.sleep(0.02)
        try:
            yield url
        finally:
            stop.set()


async def _wait_until_listening(port: int, timeout: float = 120.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
            else:
                await stream.aclose()
                return


class _TestHooks(ServerHooks):
    """A failed start is kept for the test to report, instead of ending the process."""

    def __init__(self) -> None:
        super().__init__(on_failure=self._record)
        self.failures: list[BaseException] = []

    def _record(self, error: BaseException) -> None:
        self.failures.append(error)


def _server_hooks(app: Any) -> _TestHooks | None:
    """Install test hooks on a cellserve app served by a test (None for other apps)."""
    state = getattr(app, "state", None)
    if state is None or not isinstance(getattr(state, "cellserve_server", None), ServerHooks):
        return None
    hooks = _TestHooks()
    state.cellserve_server = hooks
    return hooks


class ServerThread:
    """A hypercorn server for `app` in a thread of its own, for sync tests sharing a server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hooks = _server_hooks(app)
        self._fd, self.port = _bound_socket()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.app, _config(self._fd), shutdown_trigger=self._stop.wait)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self._error!r}")
            if self.hooks is not None and self.hooks.failures:
                raise RuntimeError(f"the app failed to start: {self.hooks.failures[0]}")
            try:
                httpx.get(self.url + "/_cellserve/health", timeout=1)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if self.hooks is None or self.hooks.ready:
                return self
            time.sleep(0.02)
        raise TimeoutError("server did not start")

    def run_in_loop(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run `coroutine` on the server's event loop (where its kernels live); its result."""
        assert self._loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
