"""A pool of seeded kernels that runs requests: the async shell around ``PoolBook``.

Every decision — which kernel takes which request, when a kernel must be interrupted or
replaced, when the closing pool is quiet — is made by the synchronous ``PoolBook``
(scheduler.py). This module reports events to it and carries out the effects it returns.
Carrying out is synchronous too (send a call, wake a task), so a request cancelled at any
point leaves the books consistent; the slow work on a kernel (interrupt, shut down, start,
seed, liveness checks) is done by the kernel's *slot task*, owned by the pool's task group.

A request holds a kernel through a lease::

    async with pool.lease(call, disconnected=client_gone) as lease:   # 503 decided here
        outcome = await lease.run(timeout=30)                          # 504 / 503 here

Every failure leaving the pool is an ``Unavailable`` or ``ExecutionTimeout`` whose message
names the notebook and the route. Kernels are identical only right after seeding: state
changed by a request stays on the kernel that ran it, as in Kernel Gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from cellserve.cells import CellCall, CellOutcome, PendingCall, StdoutSink
from cellserve.exceptions import (
    CellserveError,
    ExecutionTimeout,
    KernelDied,
    KernelError,
    KernelOutOfMemory,
    RequestFailed,
    SeedError,
    Unavailable,
)
from cellserve.logs import note_kernel
from cellserve.notebook import SeedCell
from cellserve.scheduler import (
    Assign,
    Effect,
    Ending,
    Interrupt,
    KernelState,
    PoolBook,
    Quiet,
    Refusal,
    Refuse,
    Retire,
    RetryStart,
)

logger = logging.getLogger("cellserve.pool")


class KernelHandle(Protocol):
    """What the pool needs of a kernel: ``kernels.Kernel``, or a fake in unit tests."""

    @property
    def id(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    async def seed(
        self, seeds: Sequence[SeedCell], on_cell: Callable[[int, int], None] | None = None
    ) -> None: ...

    def begin(self, call: CellCall) -> PendingCall:
        """Send `call` now if the kernel can take it without waiting (never blocks). An open
        batch (``call.seal``) is sealed here: the one place a call goes to a kernel."""
        ...

    def can_pipeline(self, call: CellCall) -> bool:
        """Whether `call` may be sent while another such call still runs (the kernel runs
        them in order and tells their answers apart)."""
        ...

    @property
    def calls_held(self) -> int:
        """Calls sent and not yet answered, counting those whose requester left: the kernel
        still runs them, so they keep their place in the pipeline."""
        ...

    async def finish(
        self, pending: PendingCall, *, timeout: float | None, on_stdout: StdoutSink | None = None
    ) -> CellOutcome:
        """The call's outcome; TimeoutError past `timeout`, KernelError if the kernel fails."""
        ...

    async def interrupt(self, grace: float) -> bool:
        """Interrupt the running cell; True once the kernel answers again within `grace`."""
        ...

    async def is_alive(self) -> bool: ...

    async def shutdown(self) -> None:
        """Stop the kernel for good; safe to call twice and under cancellation."""
        ...


KernelFactory = Callable[[], Awaitable[KernelHandle]]
"""Starts one kernel (not yet seeded); raises KernelError, and leaves nothing behind when it
fails or is cancelled."""


@dataclass(frozen=True)
class PoolLimits:
    """Back-pressure and recovery settings; times in seconds."""

    size: int = 1
    max_queue: int | None = 100
    queue_timeout: float = 30.0
    timeout: float | None = 60.0
    interrupt_grace: float = 3.0
    max_seed_failures: int = 3
    shutdown_grace: float = 10.0
    liveness_interval: float = 0.5
    """How often a slot checks that its kernel process lives."""
    restart_backoff: float = 0.5
    """After failing to start a kernel a slot waits 2, 4... times this (at most 20) to retry."""
    pipeline_depth: int = 2
    """Fast-path calls a kernel may hold at once: with 2, the next request is already waiting
    in the kernel when it finishes one (1 turns pipelining off)."""


@dataclass(frozen=True)
class KernelStats:
    slot: int
    kernel_id: str | None
    pid: int | None
    state: str
    state_seconds: float
    """How long the slot has been in `state` (e.g. seeding for 12.5 s)."""
    seed_cell: int | None
    """While seeding: the seed cell running now (1-based) of `seed_cells`."""
    seed_cells: int | None
    requests_served: int
    restarts: int
    last_error: str | None
    seed_seconds: float | None
    """How long the current kernel took to start and seed."""
    in_flight: int = 0
    """Requests sent to the kernel and not yet answered (2 when one is pipelined)."""


@dataclass(frozen=True)
class PoolStats:
    """A frozen snapshot of the pool, for health endpoints and metrics."""

    generation: int
    kernels: tuple[KernelStats, ...]
    queue_depth: int
    requests_served: int
    timeouts: int
    crashes: int
    interrupts: int
    rejected: int
    """Refused at once (queue full, closing, no kernel) or timed out in the queue."""
    disconnected: int
    """Clients that left while queued."""
    endings: dict[str, int]
    """How every finished request left the pool, by ``scheduler.Ending``."""

    def count(self, state: KernelState) -> int:
        return sum(1 for k in self.kernels if k.state == state.value)

    @property
    def can_serve(self) -> bool:
        """Some kernel serves requests now or will after an interrupt."""
        serving = (KernelState.IDLE, KernelState.BUSY, KernelState.INTERRUPTING)
        return any(self.count(state) for state in serving)

    @property
    def gave_up(self) -> bool:
        """Every kernel slot failed and was given up: this pool will never serve again."""
        return self.count(KernelState.FAILED) == len(self.kernels)


@dataclass(eq=False)
class _Request:
    """A request's side of the books: woken once, with a kernel or a refusal."""

    call: CellCall
    woken: anyio.Event = field(default_factory=anyio.Event)
    kernel: KernelHandle | None = None
    pending: PendingCall | None = None
    refusal: Refusal | None = None


class KernelPool:
    """N kernels of one notebook generation. Run it with ``await task_group.start(pool.run)``."""

    def __init__(
        self,
        seeds: Sequence[SeedCell],
        limits: PoolLimits,
        start_kernel: KernelFactory,
        *,
        generation: int = 1,
        label: str = "notebook",
    ) -> None:
        self.seeds = tuple(seeds)
        self.limits = limits
        self.generation = generation
        self.label = label
        self._start_kernel = start_kernel
        size = max(1, limits.size)
        self._book: PoolBook[KernelHandle, _Request] = PoolBook(
            size,
            max_queue=limits.max_queue,
            max_start_failures=limits.max_seed_failures,
            backoff=limits.restart_backoff,
            depth=limits.pipeline_depth,
            pipelines=lambda request, kernel: (
                kernel.can_pipeline(request.call) and kernel.calls_held < limits.pipeline_depth
            ),
        )
        self._wake = [anyio.Event() for _ in range(size)]
        self._owned: list[KernelHandle | None] = [None] * size
        self._seed_seconds: list[float | None] = [None] * size
        self._settled = anyio.Event()
        self._startup_error: CellserveError | None = None
        self._closing = anyio.Event()
        self._quiet = anyio.Event()
        self._finished = anyio.Event()

    # -- carrying out effects ---------------------------------------------------------------

    def _apply(self, effects: list[Effect[KernelHandle, _Request]]) -> None:
        """Carry out `effects` at once; never awaits, so it cannot be cancelled half-way."""
        for effect in effects:
            if isinstance(effect, Assign):
                request = effect.waiter
                request.kernel = effect.kernel
                try:
                    # Send the call now: the kernel should not sit idle until the waiting
                    # task gets its turn on the event loop. A failed send is retried by
                    # ``finish``, which then reports the kernel's failure.
                    request.pending = effect.kernel.begin(request.call)
                except Exception as exc:
                    # Whatever failed, the effects after this one must still be carried out.
                    if not isinstance(exc, KernelError):
                        logger.exception("%s: sending a call to a kernel failed", self.label)
                    request.pending = None
                request.woken.set()
            elif isinstance(effect, Refuse):
                effect.waiter.refusal = effect.refusal
                effect.waiter.woken.set()
            elif isinstance(effect, Interrupt | Retire):
                self._wake[effect.slot].set()
            elif isinstance(effect, Quiet):
                self._quiet.set()
            # RetryStart is read by the slot that reported the failure.

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every slot; report started once one kernel is seeded; serve until closed.

        A seed cell that raises on the first start fails the whole pool at once, before it
        reports started: seed code is deterministic, so waiting would only hide the error.
        """
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                for index in range(len(self._wake)):
                    tg.start_soon(self._supervise_slot, index)
                await self._settled.wait()
                if self._startup_error is None and not self._book.closing:
                    logger.info(
                        "%s generation %d: %d of %d kernel(s) ready in %.1f s",
                        self.label,
                        self.generation,
                        self.stats().count(KernelState.IDLE),
                        len(self._wake),
                        time.monotonic() - started,
                    )
                if self._startup_error is None:
                    task_status.started()
                    await self._closing.wait()
                    with anyio.move_on_after(self.limits.shutdown_grace):
                        await self._quiet.wait()
                    self._apply(self._book.drain())
                tg.cancel_scope.cancel()
        finally:
            self._finished.set()
        if self._startup_error is not None:
            raise self._startup_error

    async def close(self) -> None:
        """Stop taking requests, let queued and running ones finish (up to the grace), stop
        every kernel."""
        self._apply(self._book.close())
        self._closing.set()
        self._settled.set()  # closed before any kernel was ready: stop waiting for one
        await self._finished.wait()

    @property
    def closing(self) -> bool:
        """The pool takes no new request (it may still finish the ones it holds)."""
        return self._book.closing

    def _fail_startup(self, error: CellserveError) -> None:
        if not self._settled.is_set():
            self._startup_error = error
            self._settled.set()

    # -- slots ------------------------------------------------------------------------------

    async def _supervise_slot(self, index: int) -> None:
        """Run slot `index`. An unexpected error is logged with its traceback and the slot
        starts over (its kernel was already shut down); it counts as a start failure, so a
        slot that keeps failing gives up, and readiness says so once no slot can serve."""
        while True:
            try:
                await self._run_slot(index)
                return
            except Exception as exc:
                logger.exception(
                    "%s kernel slot %d failed unexpectedly; restarting it", self.label, index
                )
                effects = self._book.start_failed(index, f"the slot failed: {exc!r}")
                self._apply(effects)
                retry = next((e for e in effects if isinstance(e, RetryStart)), None)
                if retry is None:
                    self._after_slot_gave_up(KernelError(f"kernel slot {index} failed: {exc!r}"))
                    return
                await anyio.sleep(retry.delay)

    async def _run_slot(self, index: int) -> None:
        try:
            while True:
                kernel = await self._start(index)
                if kernel is None:
                    return
                await self._tend(index, kernel)
                await self._retire(index, kernel)
                if self._book.closing:
                    return
        finally:
            with anyio.CancelScope(shield=True):
                kernel = self._owned[index]
                if kernel is not None:
                    await self._retire(index, kernel)
                self._apply(self._book.stopped(index))

    async def _start(self, index: int) -> KernelHandle | None:
        """A started and seeded kernel, now handed out; None once the slot has given up."""
        while True:
            self._book.starting(index)
            started = time.monotonic()
            error: CellserveError
            try:
                kernel = await self._start_kernel()
            except KernelError as exc:
                error = exc
            else:
                self._owned[index] = kernel
                try:
                    await kernel.seed(
                        self.seeds, lambda cell, cells: self._book.seeding(index, cell, cells)
                    )
                except (SeedError, KernelError) as exc:
                    error = exc
                    await self._retire(index, kernel)
                else:
                    self._seed_seconds[index] = time.monotonic() - started
                    self._apply(self._book.kernel_ready(index, kernel))
                    self._settled.set()
                    return kernel
            # Stopped while starting, the kernel may die under the seed before the cancellation
            # arrives: then it is the cancellation, not a failure to report.
            await anyio.lowlevel.checkpoint()
            # A seed error before the slot ever had a kernel ready is the notebook's fault.
            fatal = self._seed_seconds[index] is None and isinstance(error, SeedError)
            if fatal:
                assert isinstance(error, SeedError)
                # Reported once by whoever started the pool; the cell's traceback is detail.
                logger.debug("%s: %s\n%s", self.label, error, error.traceback)
                self._fail_startup(error)
            effects = self._book.start_failed(index, str(error), fatal=fatal)
            self._apply(effects)
            retry = next((e for e in effects if isinstance(e, RetryStart)), None)
            if retry is None:
                if not fatal:
                    logger.error(
                        "%s kernel slot %d failed %d times in a row and is given up: %s",
                        self.label,
                        index,
                        self._book.slot(index).failures,
                        error,
                    )
                self._after_slot_gave_up(error)
                return None
            logger.warning("%s kernel slot %d: %s; retrying", self.label, index, error)
            await anyio.sleep(retry.delay)

    def _after_slot_gave_up(self, error: CellserveError) -> None:
        if not self._book.all_failed:
            return
        if self._settled.is_set() and self._startup_error is None:
            # It served before: say what the operator can do now. (A failed start is
            # reported once, by whoever started the pool, from the error it raises.)
            logger.error(
                "%s: every kernel slot failed and was given up (last error: %s); requests "
                "get 503 and /_cellserve/ready says so until the server is restarted",
                self.label,
                error,
            )
        self._fail_startup(error)

    async def _tend(self, index: int, kernel: KernelHandle) -> None:
        """Interrupt `kernel` when the books say so and check that it lives, until the books
        retire it."""
        while True:
            self._wake[index] = woken = anyio.Event()
            if self._book.retired(kernel):
                return
            view = self._book.slot(index)
            if view.kernel is not kernel:
                # Lost while a request still reads from it: that request notices the death
                # itself and reports its end, which retires the kernel. Shutting it down
                # under the request would turn a clean 503 into a closed-socket error.
                with anyio.move_on_after(_RETIRE_WAIT):
                    await woken.wait()
                if not woken.is_set():
                    return
                continue
            if view.state is KernelState.INTERRUPTING:
                ok = await kernel.interrupt(self.limits.interrupt_grace)
                if not ok:
                    logger.warning(
                        "%s: kernel %s (pid %s) did not answer within %s s of an interrupt; "
                        "restarting it",
                        self.label,
                        kernel.id,
                        kernel.pid,
                        self.limits.interrupt_grace,
                    )
                self._apply(self._book.interrupted(kernel, ok))
                continue
            with anyio.move_on_after(self.limits.liveness_interval):
                await woken.wait()
            if not woken.is_set() and not await self._lives(kernel):
                reason = f"kernel {kernel.id} (pid {kernel.pid}) exited"
                if self._book.slot(index).state is not KernelState.BUSY:
                    # (A request running on it logs the loss itself, naming its route.)
                    logger.warning("%s: %s; restarting it", self.label, reason)
                self._apply(self._book.lost(kernel, reason))

    async def _lives(self, kernel: KernelHandle) -> bool:
        """Whether `kernel` lives; a check that does not answer in time counts as dead."""
        with anyio.move_on_after(max(5.0, 4 * self.limits.liveness_interval)):
            return await kernel.is_alive()
        return False

    async def _retire(self, index: int, kernel: KernelHandle) -> None:
        with anyio.CancelScope(shield=True):
            await kernel.shutdown()
        if self._owned[index] is kernel:
            self._owned[index] = None

    # -- requests ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(
        self, call: CellCall, *, disconnected: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[Lease]:
        """A kernel for `call`, waiting in the queue if needed; Unavailable when none comes.

        `disconnected`, if given, returns when the client goes away; a request still queued
        then leaves the queue. Leaving the block without running the call, or cancelled
        while running it, interrupts the kernel before anyone else gets it.
        """
        try:
            request = await self._acquire(call, disconnected)
        except RequestFailed as exc:
            _log_failure(exc)
            raise
        lease = Lease(self, request)
        note_kernel(lease.kernel.id)
        try:
            yield lease
        finally:
            if not lease.ended:
                self._apply(self._book.leave(request, Ending.CANCELLED))

    async def _acquire(
        self, call: CellCall, disconnected: Callable[[], Awaitable[None]] | None
    ) -> _Request:
        request = _Request(call)
        self._apply(self._book.submit(request))
        if not request.woken.is_set():
            gone = False
            try:
                with anyio.move_on_after(self.limits.queue_timeout):
                    if disconnected is None:
                        await request.woken.wait()
                    else:
                        gone = await _woken_or_gone(request.woken, disconnected)
            except BaseException:
                self._apply(self._book.leave(request, Ending.CANCELLED))
                raise
            if request.kernel is None and request.refusal is None:  # a hand-over wins
                self._apply(
                    self._book.leave(request, Ending.DISCONNECTED if gone else Ending.QUEUE_TIMEOUT)
                )
                if gone:
                    raise Unavailable(self._message(call, "the client left while queued"))
                raise Unavailable(
                    self._message(
                        call,
                        "no kernel became free within the queue timeout "
                        f"({self.limits.queue_timeout} s)",
                    )
                )
        if request.refusal is not None:
            raise self._refused(call, request.refusal)
        return request

    def _refused(self, call: CellCall, refusal: Refusal) -> Unavailable:
        if refusal is Refusal.QUEUE_FULL:
            return Unavailable(
                self._message(
                    call, f"all kernels are busy and {self.limits.max_queue} requests are waiting"
                )
            )
        if refusal is Refusal.CLOSING:
            return Unavailable(self._message(call, "the server is shutting down"))
        return Unavailable(self._message(call, _NO_KERNEL), 30)

    def _message(self, call: CellCall, what: str) -> str:
        return f"{self.label} {call.route}: {what}" if call.route else f"{self.label}: {what}"

    def stats(self) -> PoolStats:
        now = time.monotonic()
        slots = self._book.slots
        endings = self._book.ended
        return PoolStats(
            generation=self.generation,
            kernels=tuple(
                KernelStats(
                    slot=s.index,
                    kernel_id=owned.id if owned else None,
                    pid=owned.pid if owned else None,
                    state=s.state.value,
                    state_seconds=round(now - s.since, 3),
                    seed_cell=s.seed_cell,
                    seed_cells=s.seed_cells,
                    requests_served=s.served,
                    restarts=s.restarts,
                    last_error=s.last_error,
                    seed_seconds=seed_seconds,
                    in_flight=s.in_flight,
                )
                for s, owned, seed_seconds in zip(
                    slots, self._owned, self._seed_seconds, strict=True
                )
            ),
            queue_depth=len(self._book.queued),
            requests_served=endings[Ending.SERVED],
            timeouts=endings[Ending.TIMED_OUT],
            crashes=self._book.crashes,
            interrupts=self._book.interrupts,
            rejected=endings[Ending.REJECTED]
            + endings[Ending.REFUSED]
            + endings[Ending.QUEUE_TIMEOUT],
            disconnected=endings[Ending.DISCONNECTED],
            endings={ending.value: endings[ending] for ending in Ending},
        )


class Lease:
    """One request's hold on one kernel, from ``KernelPool.lease``."""

    def __init__(self, pool: KernelPool, request: _Request) -> None:
        assert request.kernel is not None
        self._pool = pool
        self._request = request
        self.kernel: KernelHandle = request.kernel
        self.ended = False

    async def run(
        self, *, timeout: float | None = None, on_stdout: StdoutSink | None = None
    ) -> CellOutcome:
        """Run the leased call; ExecutionTimeout (504) or Unavailable (503) if it fails."""
        pool, request, book = self._pool, self._request, self._pool._book
        call = request.call
        timeout = timeout if timeout is not None else pool.limits.timeout
        sink = _Sink(on_stdout) if on_stdout is not None else None
        try:
            pending = request.pending or self.kernel.begin(call)
            outcome = await self.kernel.finish(
                pending, timeout=timeout, on_stdout=sink.write if sink else None
            )
        except TimeoutError:
            self._end(book.timed_out(request))
            timed_out = ExecutionTimeout(
                pool._message(call, f"the cell ran longer than {timeout} s and was interrupted")
            )
            _log_failure(timed_out)
            raise timed_out from None
        except Exception as exc:
            if sink is not None and sink.failed:
                # The caller's own stdout sink failed (e.g. the client is gone): not the
                # kernel's fault, so interrupt it and let the caller's error through.
                self._end(book.leave(request, Ending.ABANDONED))
                raise
            # A closing pool stops its kernels past the grace, and replaces none.
            stopping = "the server is shutting down" if pool.closing else None
            if isinstance(exc, KernelError):
                next_step = stopping or "restarting the kernel"
                logger.warning("%s %s: %s; %s", pool.label, call.route, exc, next_step)
                what = "died" if isinstance(exc, KernelDied) else f"failed ({exc})"
            else:  # a bug or an untranslated error at the Jupyter boundary
                logger.exception("%s %s: unexpected kernel error", pool.label, call.route)
                what = f"failed unexpectedly ({exc!r})"
            self._end(book.failed(request, str(exc)))
            if stopping is not None:
                reason = f"the kernel running this request {what}; {stopping}"
            elif isinstance(exc, KernelOutOfMemory):
                reason = f"{exc}; its kernel is being replaced"
            else:
                reason = f"the kernel running this request {what}; it is being restarted"
            raise Unavailable(pool._message(call, reason)) from exc
        except BaseException:
            # Cancelled mid-cell (client gone, server stopping): the books interrupt the
            # kernel before anyone reuses it.
            self._end(book.leave(request, Ending.ABANDONED))
            raise
        self._end(book.done(request, kernel_exiting=outcome.kernel_exiting))
        return outcome

    def _end(self, effects: list[Effect[KernelHandle, _Request]]) -> None:
        self.ended = True
        self._pool._apply(effects)


class _Sink:
    """A caller's stdout sink that remembers whether it failed."""

    def __init__(self, write: StdoutSink) -> None:
        self._write = write
        self.failed = False

    async def write(self, text: str) -> None:
        try:
            await self._write(text)
        except Exception:
            self.failed = True
            raise


def _log_failure(error: RequestFailed) -> None:
    """One line for a refusal or a timeout, whichever route kind (plain, stream, batch, job)
    leased the kernel; a lost kernel is logged where it is noticed, with its cause."""
    logger.warning("%d: %s", error.status, error)


_NO_KERNEL = "no kernel is available: every kernel failed to start"
_RETIRE_WAIT = 5.0
"""How long a slot lets a request notice that its kernel died before shutting it down."""


async def _woken_or_gone(woken: anyio.Event, gone: Callable[[], Awaitable[None]]) -> bool:
    """Wait until `woken` is set or `gone` returns; True if `gone` returned first.

    Every request that queues waits here, so the watcher is one plain asyncio task that sets
    `woken` itself (the pool runs on asyncio, as the Jupyter stack does) rather than a task
    group, which costs several times as much; it is cancelled before this returns, however
    this ends.
    """
    left = False

    async def watch() -> None:
        nonlocal left
        try:
            await gone()
        except Exception:
            woken.set()  # surface the failure now, not at the queue timeout
            raise
        left = True
        woken.set()

    watcher = asyncio.ensure_future(watch())
    try:
        await woken.wait()
    finally:
        watcher.cancel()
        # Retrieved even when this wait is cancelled, so no exception goes unnoticed.
        error = watcher.exception() if watcher.done() and not watcher.cancelled() else None
    if error is not None:
        raise error
    return left
