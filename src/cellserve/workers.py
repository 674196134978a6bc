"""``cellserve serve --workers N``: N server processes sharing one listening socket.

This is hypercorn's worker model: the parent binds the socket, starts N workers with
multiprocessing's *spawn* context and hands each one the socket, and the operating system
spreads connections among the processes accepting on it. Each worker builds its own app, so
it has its own kernels (N times ``--kernels`` in all), its own queue and its own reload watcher.
``/_cellserve/health`` names the worker that answered by its ``pid``. A worker accepts
connections only once its kernels are seeded: a starting worker would take requests from the
shared socket that it cannot serve yet.

The parent only supervises:

* SIGINT or SIGTERM sets the shared stop event; every worker then drains (``shutdown.py``:
  ``/ready`` answers 503 from that moment), stops, finishing its requests within the
  shutdown grace, and stops its kernels; the parent waits for them. Workers ignore SIGINT,
  so Ctrl-C in a terminal, which reaches the whole process group, stops them through the
  parent, once. A second signal cuts every worker's drain delay short (a shared event). A
  worker also drains on its own SIGTERM, and when its parent disappears.
* SIGHUP is passed on to every worker: each reloads its notebooks.
* Metrics: the workers share a private ``PROMETHEUS_MULTIPROC_DIR``, so that
  ``/_cellserve/metrics`` on any worker reports the sum over all of them.
* A worker that exits by itself (a seed error at start-up, a crash) stops the others, and
  the parent exits with that worker's status: restarting belongs to whatever runs cellserve
  (systemd, Kubernetes), which then restarts the whole server cleanly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any

from cellserve.metrics import MULTIPROCESS_ENV
from cellserve.settings import Settings
from cellserve.shutdown import Drain, DrainMiddleware, stop_after_drain

logger = logging.getLogger("cellserve.workers")

_KERNEL_STOP_SECONDS = 30


def serve_workers(
    build: Callable[[], Any],
    config: Any,
    settings: Settings,
    prepare: Callable[[], object],
) -> int:
    """Serve the app that `build` makes from `settings.workers` processes; their exit status.

    `build` and `prepare` run in each worker and must be picklable (module-level functions
    or partials of them); `prepare` runs first, e.g. to configure logging. `config` is the
    hypercorn ``Config`` every worker serves with.
    """
    with _metrics_directory():
        return _supervise(build, config, settings, prepare)


@contextmanager
def _metrics_directory() -> Iterator[None]:
    """A private, empty ``PROMETHEUS_MULTIPROC_DIR`` for the workers, removed afterwards.

    Workers read it when they import prometheus_client, so it is set before they start;
    then a scrape of ``/_cellserve/metrics`` on any worker sums all of them. A directory the
    operator set is used as it is, and kept.
    """
    if os.environ.get(MULTIPROCESS_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="cellserve-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _supervise(
    build: Callable[[], Any],
    config: Any,
    settings: Settings,
    prepare: Callable[[], object],
) -> int:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    hurry = context.Event()
    sockets = config.create_sockets()
    workers: list[BaseProcess] = []
    stopping = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        if stopping:  # a second signal: the workers cut their drain delay short
            hurry.set()
        else:
            logger.info("stopping %d workers: finishing requests, then kernels", len(workers))
        stopping = True
        stop.set()

    def pass_on(signum: int, _: FrameType | None) -> None:
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signum)

    # Workers inherit SIGINT ignored from the moment they exist (not only once their code
    # runs), so Ctrl-C during their start-up does not kill them half-way.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for index in range(settings.workers):
            worker = context.Process(
                target=_worker,
                name=f"cellserve-worker-{index}",
                kwargs={
                    "build": build,
                    "prepare": prepare,
                    "config": config,
                    "sockets": sockets,
                    "stop": stop,
                    "hurry": hurry,
                    "delay": settings.drain_delay,
                },
            )
            worker.start()
            workers.append(worker)
    finally:
        signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGHUP, pass_on)
    logger.info("started %d workers: %s", len(workers), ", ".join(str(w.pid) for w in workers))

    status = 0
    running = list(workers)
    while running and not stopping:
        wait([worker.sentinel for worker in running], timeout=1.0)
        for exited in [w for w in running if w.exitcode is not None]:
            running.remove(exited)
            _forget(exited)
            status = status or (exited.exitcode or 0)
            if not stopping:
                logger.error(
                    "worker %s exited with %s; stopping the others", exited.pid, exited.exitcode
                )
                stopping = True
                stop.set()
    status = _wait_or_kill(running, settings) or status
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.close()
    return status


def _wait_or_kill(running: list[BaseProcess], settings: Settings) -> int:
    """Wait for stopping workers; kill those still running past every grace period."""
    deadline = settings.drain_delay + settings.shutdown_grace * 2 + _KERNEL_STOP_SECONDS
    status = 0
    for worker in running:
        worker.join(deadline)
        if worker.exitcode is None:
            logger.error("worker %s did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.join()
        _forget(worker)
        status = status or (worker.exitcode or 0)
    return status


def _forget(worker: BaseProcess) -> None:
    """Drop a stopped worker's live gauges from the metrics the others report."""
    from prometheus_client.multiprocess import mark_process_dead

    if worker.pid is not None:
        mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _worker(
    *,
    build: Callable[[], Any],
    prepare: Callable[[], object],
    config: Any,
    sockets: Any,
    stop: Event,
    hurry: Event,
    delay: float,
) -> None:
    """One worker process: build the app, serve it on the shared sockets until told to stop."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import LifespanFailureError, wrap_app

    from cellserve.cli import _last_line, _run

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare()
    drain = Drain(shared=stop.is_set)
    built = build()
    built.state.cellserve_server.accept_when_ready = True
    app: Any = DrainMiddleware(built, drain)  # hypercorn's ASGI type is not Starlette's
    parent = os.getppid()

    def stop_requested() -> bool:
        return stop.is_set() or os.getppid() != parent

    def until_stopped() -> Awaitable[None]:
        signals = (signal.SIGTERM,)
        return stop_after_drain(
            drain, delay, signals, stop_requested=stop_requested, hurry_requested=hurry.is_set
        )

    try:
        wrapped = wrap_app(app, config.wsgi_max_body_size, None)
        _run(worker_serve(wrapped, config, sockets=sockets, shutdown_trigger=until_stopped))
    except LifespanFailureError as exc:
        reason = _last_line(str(exc))
        print(f"cellserve: worker {os.getpid()}: start-up failed: {reason}", file=sys.stderr)
        raise SystemExit(1) from None
