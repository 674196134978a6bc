"""The notebook as served right now, and how it follows the file as it is edited.

A ``Generation`` is one consistent version of the API: the parsed notebook, its route table
and the kernel pool that serves it. A request picks the current generation once and is
served entirely by it. A reload builds the next generation aside and swaps it in with one
assignment, doing the least work the change needs:

* nothing changed, or only outputs/metadata/markdown → new docs, same routes and kernels;
* only endpoint or ResponseInfo cells changed → new route table, same (still seeded) kernels;
* a seed cell or the kernel changed → a new pool, seeded before the swap; the old pool
  finishes what it holds and is then shut down.

Any failure (half-written file, bad annotation, seed error) keeps the old generation serving
and is recorded in ``last_error`` for the health endpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from cellserve.exceptions import CellserveError, NotebookError, SeedError
from cellserve.kernels import KernelConfig
from cellserve.notebook import Endpoint, NotebookApi, parse_notebook_text
from cellserve.pool import KernelPool, PoolLimits
from cellserve.routing import RouteTable
from cellserve.settings import Settings

logger = logging.getLogger("cellserve.reload")

RESERVED_PREFIXES = ("/_cellserve", "/_api")


class Change(StrEnum):
    NONE = "none"
    DOCS = "docs"
    ROUTES = "routes"
    KERNELS = "kernels"


@dataclass(frozen=True, eq=False)
class Generation:
    """One version of the API. Reloads that change no seed cell share the pool."""

    number: int
    api: NotebookApi
    routes: RouteTable
    pool: KernelPool


@dataclass(frozen=True)
class ReloadResult:
    change: Change
    generation: int
    seconds: float
    error: str | None = None
    details: str = ""


def classify(old: NotebookApi, new: NotebookApi) -> Change:
    """The smallest kind of reload that makes `new` live after `old`."""
    if old.kernel_identity() != new.kernel_identity():
        return Change.KERNELS
    if _route_code(old) != _route_code(new):
        return Change.ROUTES
    if old != new:
        return Change.DOCS
    return Change.NONE


def describe_change(old: NotebookApi, new: NotebookApi) -> str:
    """What differs, for the reload log: routes added/removed/edited, seed cells, kernel."""
    parts = []
    if (old.kernel_name, old.language) != (new.kernel_name, new.language):
        parts.append(f"kernel {old.kernel_name} → {new.kernel_name}")
    if old.seeds != new.seeds:
        before = {s.source for s in old.seeds}
        changed = [str(s.number) for s in new.seeds if s.source not in before]
        parts.append("seed cells changed" + (f" ({', '.join(changed)})" if changed else ""))
    old_code = {e.label: e for e in old.endpoints}
    new_code = {e.label: e for e in new.endpoints}
    added = [label for label in new_code if label not in old_code]
    removed = [label for label in old_code if label not in new_code]
    edited = [
        label
        for label in new_code
        if label in old_code and _route_code_of(old_code[label]) != _route_code_of(new_code[label])
    ]
    for sign, labels in (("+", added), ("-", removed), ("~", edited)):
        parts.extend(f"{sign}{label}" for label in labels)
    return ", ".join(parts) or "docs, outputs or metadata only"


def _route_code_of(endpoint: Endpoint) -> tuple[object, ...]:
    return (endpoint.source, endpoint.response_info, endpoint.options)


def _route_code(api: NotebookApi) -> tuple[object, ...]:
    return tuple((e.label, *_route_code_of(e)) for e in api.endpoints)


def check_reserved(api: NotebookApi) -> None:
    for endpoint in api.endpoints:
        path = endpoint.path.raw
        for prefix in RESERVED_PREFIXES:
            if path == prefix or path.startswith(prefix + "/"):
                raise CellserveError(
                    f"{api.name} cells {list(endpoint.cell_numbers)}: `{endpoint.label}` is under "
                    f"{prefix}/, which cellserve reserves for its own endpoints; rename the route"
                )


class NotebookService:
    """Owns the current generation of one notebook and replaces it on reload."""

    def __init__(self, path: Path, settings: Settings, *, label: str | None = None) -> None:
        self.path = path
        self.settings = settings
        self.label = label or path.name
        self.last_error: str | None = None
        self.last_reload: ReloadResult | None = None
        self._current: Generation | None = None
        self._text: str | None = None
        self._lock = anyio.Lock()
        self._stop = anyio.Event()
        self._tg: TaskGroup | None = None
        self._numbers = 0

    @property
    def current(self) -> Generation:
        if self._current is None:
            raise CellserveError(f"{self.label} is not started")
        return self._current

    @property
    def started(self) -> bool:
        return self._current is not None

    @contextmanager
    def serving(self) -> Iterator[Generation]:
        """Pin the current generation (and so its pool) for one request."""
        generation = self.current
        generation.pool.pin()
        try:
            yield generation
        finally:
            generation.pool.unpin()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the notebook, start its kernels, report started, then serve and watch."""
        api = self._load()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            pool = self._new_pool(api)
            await tg.start(pool.run)
            self._current = self._generation(api, pool)
            for warning in api.warnings:
                logger.warning("%s", warning)
            logger.info(
                "%s: serving %s",
                self.label,
                ", ".join(e.label for e in self.current.routes.endpoints),
            )
            if self.settings.reload:
                tg.start_soon(self._watch)
            task_status.started()
            await self._stop.wait()
            with anyio.CancelScope(shield=True):
                # Close first: the pool lets running requests finish within its grace.
                await self.current.pool.close()
            tg.cancel_scope.cancel()

    def stop(self) -> None:
        self._stop.set()

    def _load(self) -> NotebookApi:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NotebookError(f"cannot read notebook {self.path}: {exc}") from exc
        self._text = text
        return self._parse(text)

    def _parse(self, text: str) -> NotebookApi:
        api = parse_notebook_text(
            text,
            name=self.path.name,
            kernel_name=self.settings.kernel_name,
            comment_prefix=self.settings.comment_prefix,
        )
        check_reserved(api)
        return api

    def _new_pool(self, api: NotebookApi) -> KernelPool:
        s = self.settings
        config = KernelConfig(
            kernel_name=api.kernel_name,
            language=api.language,
            cwd=self.path.resolve().parent,
            fast=s.execution == "fast",
            max_output_chars=s.max_response_size,
            startup_timeout=s.startup_timeout,
            seed_timeout=s.seed_timeout,
        )
        limits = PoolLimits(
            size=s.kernels,
            max_queue=s.max_queue,
            queue_timeout=s.queue_timeout,
            timeout=s.timeout,
            interrupt_grace=s.interrupt_grace,
            shutdown_grace=s.shutdown_grace,
        )
        return KernelPool(config, api.seeds, limits, generation=self._numbers + 1, label=self.label)

    def _generation(self, api: NotebookApi, pool: KernelPool) -> Generation:
        self._numbers += 1
        return Generation(self._numbers, api, RouteTable(api.endpoints), pool)

    # -- reload ---------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadResult:
        """Re-read the notebook and apply the smallest change; never raises for bad input."""
        async with self._lock:
            started = time.monotonic()
            old = self.current
            try:
                text = self.path.read_text(encoding="utf-8")
                if text == self._text:
                    return self._record(Change.NONE, started, trigger, "")
                api = self._parse(text)
                change = classify(old.api, api)
                details = describe_change(old.api, api)
                if change is Change.KERNELS:
                    pool = self._new_pool(api)
                    assert self._tg is not None
                    await self._tg.start(pool.run)
                else:
                    pool = old.pool
                self._current = self._generation(api, pool)
                self._text = text
            except (CellserveError, OSError, UnicodeDecodeError) as exc:
                return self._record_failure(exc, started, trigger)
            if change is Change.KERNELS:
                assert self._tg is not None
                self._tg.start_soon(self._retire, old)
            return self._record(change, started, trigger, details)

    def _record(self, change: Change, started: float, trigger: str, details: str) -> ReloadResult:
        seconds = time.monotonic() - started
        result = ReloadResult(change, self.current.number, seconds, details=details)
        self.last_error = None
        if change is not Change.NONE:
            self.last_reload = result
            how = {
                Change.DOCS: "docs updated, kernels untouched",
                Change.ROUTES: "route table swapped, kernels kept",
                Change.KERNELS: "new kernels seeded and swapped in",
            }[change]
            logger.info(
                "%s reloaded (%s): %s; %s change applied as generation %d (%s) in %.2f s",
                self.label,
                trigger,
                details,
                change.value,
                result.generation,
                how,
                seconds,
            )
        return result

    def _record_failure(self, exc: BaseException, started: float, trigger: str) -> ReloadResult:
        message = str(exc)
        if isinstance(exc, SeedError) and exc.traceback:
            logger.error("%s reload failed (%s): %s\n%s", self.label, trigger, exc, exc.traceback)
        else:
            logger.error("%s reload failed (%s): %s", self.label, trigger, message)
        self.last_error = message
        return ReloadResult(Change.NONE, self.current.number, time.monotonic() - started, message)

    async def _retire(self, generation: Generation) -> None:
        """Let every request on `generation`'s pool finish (whichever generation it pinned, as
        route-only reloads share pools), then stop its kernels."""
        limit = (self.settings.timeout or 3600) + self.settings.queue_timeout
        with anyio.move_on_after(limit):
            await generation.pool.wait_unpinned()
        await generation.pool.close()
        logger.info("%s: generation %d retired", self.label, generation.number)

    async def _watch(self) -> None:
        from watchfiles import awatch

        target = self.path.resolve()

        def is_notebook(_change: object, path: str) -> bool:
            return Path(path) == target

        debounce_ms = int(self.settings.reload_debounce * 1000)
        async for _changes in awatch(
            target.parent,
            watch_filter=is_notebook,
            debounce=debounce_ms,
            step=50,
            stop_event=self._stop,
            recursive=False,
        ):
            await self.reload("file changed")


async def reload_on_sighup(services: Sequence[NotebookService], stop: anyio.Event) -> None:
    """Reload every one of `services` on SIGHUP, until `stop` is set.

    One receiver per process: a second handler for the same signal would replace the first.
    Signals reach only the main thread, so elsewhere this just waits for `stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        await stop.wait()
        return
    async with anyio.create_task_group() as tg:

        async def cancel_when_stopped() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_when_stopped)
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                for service in services:
                    await service.reload("SIGHUP")
