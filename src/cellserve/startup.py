"""Running notebooks for a server: listen first, seed in the background, fail as one line.

Under a server (``cellserve serve``, ``hypercorn module:app``) the lifespan returns at once,
so the server accepts connections before any kernel exists: health shows the progress,
``/ready`` is 503 and notebook routes answer 503 with ``Retry-After`` until seeded. Start-up
is then bounded by ``seed_timeout`` alone, never by the server's lifespan timeout. Every
notebook starts concurrently. If one cannot start (missing file, bad annotation, seed
error, seed timeout), every kernel is stopped and the server is told to exit non-zero.

A host composing ``cellserve.lifespan(app)`` instead waits for every notebook and gets the
first start-up error raised, as before.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from cellserve.exceptions import CellserveError
from cellserve.logs import ensure_logging
from cellserve.metrics import track_pools
from cellserve.pool import KernelPool
from cellserve.reload import reload_on_sighup
from cellserve.service import NotebookService

logger = logging.getLogger("cellserve.startup")

METRICS_INTERVAL = 1.0
"""Seconds between updates of the kernel and queue gauges (also updated at each scrape)."""


class Notebook(Protocol):
    """One notebook's state as this module needs it (``app.CellserveApp``)."""

    service: NotebookService
    start_error: BaseException | None

    async def run(self, started: anyio.Event) -> None: ...

    def stop(self) -> None: ...

    def pools(self) -> list[tuple[str, int, KernelPool]]: ...


def report_failed_start(error: BaseException) -> None:
    """The default when a notebook cannot start under a server (kernels already stopped).

    In a process started by hypercorn's or cellserve's command line (or a worker they
    spawned): one line, then exit status 1 (a server cannot be told from inside its app to
    exit with a failure once its lifespan has started). Embedded in someone else's process
    (their code calls ``hypercorn.asyncio.serve``), the process is not ours to end: the
    error is logged once, and health, ``/ready`` (503) and the notebook's routes (503) say
    what failed.
    """
    command = _server_command()
    if command is None:
        logger.error("start-up failed: %s", error)
        return
    print(f"cellserve: start-up failed: {error}", file=sys.stderr, flush=True)
    logging.shutdown()
    if command == "hypercorn":
        _end_hypercorn_master()
    os._exit(1)


@contextmanager
def failing_start_under_hypercorn() -> Iterator[None]:
    """Around building an app: a bad option (``CELLSERVE_KERNELS=0``...) raises here, where
    hypercorn's worker imports the app, and hypercorn would print a traceback and exit 0.
    Under hypercorn's command line it ends the process as a failed start does (one line, exit
    1); elsewhere the error is raised to the caller."""
    try:
        yield
    except CellserveError as exc:
        if _server_command() == "hypercorn":
            report_failed_start(exc)
        raise


def _server_command() -> str | None:
    """``hypercorn`` or ``cellserve`` when this process runs that command line, or is a
    worker it spawned (whose parent's main module is re-imported as ``__mp_main__``)."""
    for name in ("__main__", "__mp_main__"):
        main = sys.modules.get(name)
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None else ""
        path = Path(getattr(main, "__file__", None) or "")
        for command in ("hypercorn", "cellserve"):
            if path.name == command or module in (f"{command}.__main__", f"{command}.cli"):
                return command
    return None


def _end_hypercorn_master() -> None:
    """End the hypercorn master process, if this is one of its spawned workers.

    hypercorn's ``run()`` (0.17, 0.18) exits 0 when its workers exit with an error at once
    (always so with one worker): it drops the exited workers, then re-reads the exit codes of
    those left, of which there are none. So a failed start would look like success to
    systemd or Kubernetes. The worker therefore stops its sibling workers (as hypercorn
    itself would, with SIGTERM) and its resource tracker, then kills the master, whose exit
    status is then 137. (Linux: the process tree is read from /proc.)
    """
    if multiprocessing.parent_process() is None:
        return
    master = os.getppid()
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        for child in map(int, children):
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if child == os.getpid():
                continue
            if b"--multiprocessing-fork" in command:
                os.kill(child, signal.SIGTERM)
            elif b"resource_tracker" in command:
                os.kill(child, signal.SIGKILL)
    except (OSError, ValueError):
        pass
    os.kill(master, signal.SIGKILL)


@dataclass
class ServerHooks:
    """How the server running the app wants start-up reported (``app.state.cellserve_server``).

    ``cellserve serve`` replaces `on_failure` (to stop hypercorn and exit 1 itself) and sets
    `url` (the address it bound, for the "ready" line).
    """

    url: str | None = None
    docs_path: str = "/docs"
    """Where the docs page is below `url` (``/_cellserve/docs`` when ``docs=False``)."""
    on_failure: Callable[[BaseException], None] = field(default=report_failed_start)
    ready: bool = False
    """Every notebook has started (a signal before that is an interrupted start)."""
    listen_first: bool = True
    """Set per lifespan by `ServerDetector`: false for an in-process test client."""
    accept_when_ready: bool = False
    """Set by ``cellserve serve --workers``: workers share one socket, so a worker must not
    accept connections (its lifespan must not return) before its notebooks are seeded."""


class ServerDetector:
    """Tells a server's lifespan from an in-process test client's, for `ServerHooks`.

    A server (hypercorn, uvicorn) names the ASGI version in the lifespan scope, as the spec
    asks, and accepts connections on its own: the app listens first. Starlette's
    ``TestClient`` sends no ``asgi`` key, and its users expect the app seeded once
    ``with TestClient(app)`` returns: the lifespan then waits for seeding.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            hooks = getattr(scope["app"].state, "cellserve_server", None)
            if isinstance(hooks, ServerHooks):
                hooks.listen_first = "asgi" in scope and not hooks.accept_when_ready
        await self.app(scope, receive, send)


@asynccontextmanager
async def running(
    notebooks: Sequence[Notebook], *, server: ServerHooks | None = None
) -> AsyncIterator[None]:
    """Run every notebook, one SIGHUP receiver reloading them all, and the metrics updates.

    With `server` (and `server.listen_first`), yield at once and report a failed start
    through it; otherwise yield once every notebook has started, or raise the first
    start-up error.
    """
    if server is not None and not server.listen_first:
        server = None
    if server is not None:
        ensure_logging()
    stop = anyio.Event()
    failed = anyio.Event()
    started = [anyio.Event() for _ in notebooks]
    finished = [anyio.Event() for _ in notebooks]
    try:
        async with anyio.create_task_group() as tg:
            for notebook, up, done in zip(notebooks, started, finished, strict=True):
                tg.start_soon(_run, notebook, up, done, failed)
            tg.start_soon(reload_on_sighup, [n.service for n in notebooks], stop)
            tg.start_soon(_update_metrics, notebooks, stop)
            if server is None:
                await _until_started(started, failed)
                if failed.is_set():
                    raise _first_error(notebooks)
            else:
                tg.start_soon(_report_start, notebooks, started, finished, failed, stop, server)
            try:
                yield
            finally:
                stop.set()
                for notebook in notebooks:
                    notebook.stop()
    except BaseExceptionGroup as group:
        raise sole_error(group) from None


async def _run(
    notebook: Notebook, started: anyio.Event, done: anyio.Event, failed: anyio.Event
) -> None:
    try:
        await notebook.run(started)
    finally:
        done.set()
    if notebook.start_error is not None:
        failed.set()


async def _until_started(started: Sequence[anyio.Event], failed: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:

        async def cancel_on_failure() -> None:
            await failed.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_failure)
        for event in started:
            await event.wait()
        tg.cancel_scope.cancel()


async def _report_start(
    notebooks: Sequence[Notebook],
    started: Sequence[anyio.Event],
    finished: Sequence[anyio.Event],
    failed: anyio.Event,
    stop: anyio.Event,
    server: ServerHooks,
) -> None:
    """Say when everything is ready; on a failed start, stop every kernel, then tell `server`."""
    began = time.monotonic()
    async with anyio.create_task_group() as tg:

        async def announce_ready() -> None:
            for event in started:
                await event.wait()
            where = f": {server.url}/ (docs: {server.url}{server.docs_path})" if server.url else ""
            server.ready = True
            logger.info("ready in %.1f s%s", time.monotonic() - began, where)
            tg.cancel_scope.cancel()

        async def end_when_stopped() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(announce_ready)
        tg.start_soon(end_when_stopped)
        await failed.wait()
        tg.cancel_scope.cancel()
    if not failed.is_set():
        return
    error = _first_error(notebooks)
    logger.debug("start-up failed", exc_info=error)
    label = next(n.service.label for n in notebooks if n.start_error is error)
    if label not in str(error):
        error = StartupFailed(f"{label}: {error}")
    for notebook in notebooks:
        notebook.stop()
    for done in finished:
        await done.wait()
    server.on_failure(error)


async def _update_metrics(notebooks: Sequence[Notebook], stop: anyio.Event) -> None:
    """Keep the gauges current in this process (a multiprocess scrape reads every worker's)."""
    while not stop.is_set():
        track_pools(pool for notebook in notebooks for pool in notebook.pools())
        with anyio.move_on_after(METRICS_INTERVAL):
            await stop.wait()


class StartupFailed(CellserveError):
    """A notebook could not start; the message names it."""


def _first_error(notebooks: Sequence[Notebook]) -> BaseException:
    errors = [n.start_error for n in notebooks if n.start_error is not None]
    assert errors, "called only once a notebook failed"
    return errors[0]


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested single-error groups, else the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
