"""The notebook as served right now: its current generation, boot, reloads, retirement.

A ``Generation`` is one consistent version of the API: the parsed notebook, its route table
and the kernel pool that serves it. A request pins the current generation once
(``NotebookService.serving``) and is served entirely by it. A reload builds the next
generation aside and swaps it in with one assignment; how much it rebuilds is decided by
``reload.classify``. A new pool is seeded before the swap, and the old one finishes the
requests pinned to it before it is shut down.

Any failure (half-written file, bad annotation, seed error) keeps the old generation serving
and is recorded in ``last_error`` for the health endpoint.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from cellserve.exceptions import CellserveError, NotebookError, SeedError
from cellserve.kernels import Kernel, KernelConfig
from cellserve.metrics import record_reload
from cellserve.notebook import NotebookApi, parse_notebook_text
from cellserve.pool import KernelPool, PoolLimits
from cellserve.reload import (
    Change,
    ReloadResult,
    check_new_syntax_errors,
    classify,
    describe_change,
    watch_file,
)
from cellserve.routing import RouteTable, check_reserved
from cellserve.settings import Settings

logger = logging.getLogger("cellserve.service")

_UNBOUNDED_WAIT = 3600.0
"""Seconds a retiring pool waits for a request on a route with no timeout."""


@dataclass(frozen=True, eq=False)
class Generation:
    """One version of the API. Reloads that change no seed cell share the pool."""

    number: int
    api: NotebookApi
    routes: RouteTable
    pool: KernelPool


class _Pins:
    """How many requests hold each pool; generations may share a pool, so pins count pools."""

    def __init__(self) -> None:
        self._counts: Counter[KernelPool] = Counter()
        self._released = anyio.Event()

    def pin(self, pool: KernelPool) -> None:
        self._counts[pool] += 1

    def unpin(self, pool: KernelPool) -> None:
        self._counts[pool] -= 1
        if not self._counts[pool]:
            del self._counts[pool]
            self._released.set()
            self._released = anyio.Event()

    async def wait_unpinned(self, pool: KernelPool) -> None:
        """Until no request holds `pool`: the moment a retired pool may close."""
        while self._counts[pool]:
            await self._released.wait()


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
        self._pins = _Pins()
        self.starting: KernelPool | None = None
        """The pool being started and seeded, until the first generation is served."""

    @property
    def current(self) -> Generation:
        if self._current is None:
            raise CellserveError(f"{self.label} is not started")
        return self._current

    @property
    def started(self) -> bool:
        return self._current is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextmanager
    def serving(self) -> Iterator[Generation]:
        """Pin the current generation (and so its pool) for one request."""
        generation = self.current
        with self.holding(generation):
            yield generation

    @contextmanager
    def holding(self, generation: Generation) -> Iterator[None]:
        """Keep `generation`'s pool open until the block ends (e.g. a job outliving its
        request)."""
        self._pins.pin(generation.pool)
        try:
            yield
        finally:
            self._pins.unpin(generation.pool)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the notebook, start its kernels, report started, then serve and watch."""
        text = await self._read()
        api = self._parse(text)
        self._text = text
        if self._stop.is_set():
            return
        async with anyio.create_task_group() as tg:
            self._tg = tg
            pool = self._new_pool(api)
            self.starting = pool
            try:
                await tg.start(pool.run)
            finally:
                self.starting = None
            self._current = self._generation(api, pool)
            for warning in api.warnings:
                logger.warning("%s", warning)
            for error in api.syntax_errors:
                logger.warning("%s; it answers 500 until fixed", error.describe(api.name))
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
        """Stop serving; while still starting, stop seeding at once (no kernel is kept)."""
        self._stop.set()
        if self._current is None and self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _read(self) -> str:
        try:
            return await anyio.Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NotebookError(f"cannot read notebook {self.path}: {exc}") from exc

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
            transport=s.transport,
            memory_limit=s.kernel_memory_limit,
            label=self.label,
            seed_output=s.seed_output,
        )
        limits = PoolLimits(
            size=s.kernels,
            max_queue=s.max_queue,
            queue_timeout=s.queue_timeout,
            timeout=s.timeout,
            interrupt_grace=s.interrupt_grace,
            shutdown_grace=s.shutdown_grace,
            pipeline_depth=s.pipeline_depth,
        )
        return KernelPool(
            api.seeds,
            limits,
            partial(Kernel.start, config),
            generation=self._numbers + 1,
            label=self.label,
        )

    def _generation(self, api: NotebookApi, pool: KernelPool) -> Generation:
        self._numbers += 1
        return Generation(self._numbers, api, RouteTable(api.endpoints), pool)

    # -- reload ---------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadResult:
        """Re-read the notebook and apply the smallest change; never raises for bad input."""
        if not self.started:
            return ReloadResult(Change.NONE, 0, 0.0, f"{self.label} is still starting")
        async with self._lock:
            started = time.monotonic()
            old = self.current
            change = Change.NONE
            try:
                text = await self._read()
                if text == self._text:
                    return self._record(Change.NONE, started, trigger, "")
                api = self._parse(text)
                check_new_syntax_errors(old.api, api)
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
            except CellserveError as exc:
                return self._record_failure(exc, change, started, trigger)
            if change is Change.KERNELS:
                assert self._tg is not None
                self._tg.start_soon(self._retire, old)
            return self._record(change, started, trigger, details)

    def _record(self, change: Change, started: float, trigger: str, details: str) -> ReloadResult:
        seconds = time.monotonic() - started
        result = ReloadResult(change, self.current.number, seconds, details=details)
        record_reload(self.label, change.value, "applied")
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

    def _record_failure(
        self, exc: CellserveError, change: Change, started: float, trigger: str
    ) -> ReloadResult:
        record_reload(self.label, change.value, "failed")
        message = str(exc)
        # A seed cell's traceback goes with the line as cell errors' do (logs.log_cell_error):
        # after it in text, as the record's "traceback" field in JSON.
        traceback = exc.traceback if isinstance(exc, SeedError) else ""
        logger.error(
            "%s reload failed (%s): %s",
            self.label,
            trigger,
            message,
            extra={"traceback": traceback or None},
        )
        self.last_error = message
        return ReloadResult(Change.NONE, self.current.number, time.monotonic() - started, message)

    async def _retire(self, generation: Generation) -> None:
        """Let every request on `generation`'s pool finish (whichever generation it pinned, as
        route-only reloads share pools), then stop its kernels. A request may run as long as its
        route's timeout (a job's ``timeout=3600``), not only the server-wide one."""
        timeouts = [e.options.timeout or self.settings.timeout for e in generation.api.endpoints]
        longest = max((t or _UNBOUNDED_WAIT for t in timeouts), default=_UNBOUNDED_WAIT)
        limit = longest + self.settings.queue_timeout
        with anyio.move_on_after(limit):
            await self._pins.wait_unpinned(generation.pool)
        await generation.pool.close()
        logger.info("%s: generation %d retired", self.label, generation.number)

    async def _watch(self) -> None:
        await watch_file(
            self.path,
            lambda: self.reload("file changed"),
            debounce=self.settings.reload_debounce,
            stop=self._stop,
        )
