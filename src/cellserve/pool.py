"""A pool of seeded kernels that runs requests: queueing, timeouts, crash recovery.

Each kernel lives in a *slot*, a task of the pool's task group that starts and seeds it,
watches it, and replaces it when it dies or hangs. Requests borrow a kernel through the
``Scheduler`` (pure bookkeeping); everything that waits here has a deadline.

Kernels are identical only right after seeding: state changed by a request stays on the
kernel that ran it, as in Kernel Gateway.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import anyio
from anyio.abc import TaskStatus

from cellserve.cells import CellCall, CellOutcome, StdoutSink
from cellserve.exceptions import CellserveError, KernelDied, KernelError, SeedError
from cellserve.kernels import Kernel, KernelConfig, PendingCall
from cellserve.logs import note_kernel
from cellserve.notebook import SeedCell
from cellserve.scheduler import QueueFull, Scheduler

logger = logging.getLogger("cellserve.pool")

_ALL_FAILED = "no kernel is available: every kernel failed to start"


class KernelState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


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


class Unavailable(CellserveError):
    """No kernel can take the request now; answered with 503 and Retry-After."""

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class ExecutionTimeout(CellserveError):
    """The cell ran past its timeout and was interrupted; answered with 504."""


@dataclass(frozen=True)
class KernelStats:
    slot: int
    kernel_id: str | None
    pid: int | None
    state: str
    requests_served: int
    restarts: int
    last_error: str | None
    seed_seconds: float | None
    """How long the current kernel took to start and seed."""


@dataclass(frozen=True)
class PoolStats:
    """A frozen snapshot of the pool, for health endpoints and metrics."""

    generation: int
    kernels: tuple[KernelStats, ...]
    queue_depth: int
    requests_served: int
    timeouts: int
    crashes: int
    rejected: int
    interrupts: int

    def count(self, state: KernelState) -> int:
        return sum(1 for k in self.kernels if k.state == state.value)


@dataclass
class _Slot:
    index: int
    state: KernelState = KernelState.STARTING
    kernel: Kernel | None = None
    served: int = 0
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    seed_seconds: float | None = None
    replace: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False)
class _Waiter:
    call: CellCall
    assigned: anyio.Event = field(default_factory=anyio.Event)
    kernel_id: str | None = None
    pending: PendingCall | None = None
    refused: bool = False


class KernelPool:
    """N kernels of one notebook generation. Run it with ``await task_group.start(pool.run)``."""

    def __init__(
        self,
        config: KernelConfig,
        seeds: Sequence[SeedCell],
        limits: PoolLimits,
        *,
        generation: int = 1,
        label: str = "notebook",
    ) -> None:
        self.config = config
        self.seeds = tuple(seeds)
        self.limits = limits
        self.generation = generation
        self.label = label
        self._slots = [_Slot(i) for i in range(max(1, limits.size))]
        self._scheduler: Scheduler[str, _Waiter] = Scheduler(limits.max_queue)
        self._kernels: dict[str, _Slot] = {}
        self._settled = anyio.Event()
        self._startup_error: CellserveError | None = None
        self._closing = anyio.Event()
        self._quiet = anyio.Event()
        self._finished = anyio.Event()
        self._timeouts = 0
        self._crashes = 0
        self._rejected = 0
        self._interrupts = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every slot; report started once one kernel is seeded; serve until closed.

        A seed cell that raises on the first start fails the whole pool at once, before it
        reports started: seed code is deterministic, so waiting would only hide the error.
        """
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                for slot in self._slots:
                    tg.start_soon(self._run_slot, slot)
                await self._settled.wait()
                if self._startup_error is None:
                    ready = self.stats().count(KernelState.IDLE)
                    logger.info(
                        "%s generation %d: %d of %d kernel(s) ready in %.1f s",
                        self.label,
                        self.generation,
                        ready,
                        len(self._slots),
                        time.monotonic() - started,
                    )
                    task_status.started()
                    await self._closing.wait()
                    with anyio.move_on_after(self.limits.shutdown_grace):
                        await self._wait_quiet()
                    self._refuse_waiters()
                tg.cancel_scope.cancel()
        finally:
            self._finished.set()
        if self._startup_error is not None:
            raise self._startup_error

    async def close(self) -> None:
        """Stop taking requests, let running ones finish (up to the grace), stop every kernel."""
        self._closing.set()
        await self._finished.wait()

    async def _wait_quiet(self) -> None:
        # Woken by hand-overs; also re-checked often, since requests also leave by timing
        # out, disconnecting or losing their kernel.
        while not self._scheduler.is_quiet:
            self._quiet = anyio.Event()
            with anyio.move_on_after(0.1):
                await self._quiet.wait()

    async def _run_slot(self, slot: _Slot) -> None:
        first = True
        try:
            while True:
                kernel = await self._start_kernel(slot, first)
                if kernel is None:
                    return
                first = False
                await self._serve_with(slot, kernel)
                if self._closing.is_set():
                    return
                slot.restarts += 1
                slot.state = KernelState.RESTARTING
        finally:
            with anyio.CancelScope(shield=True):
                if slot.kernel is not None:
                    await self._retire(slot)
                if slot.state != KernelState.FAILED:
                    slot.state = KernelState.STOPPED

    async def _start_kernel(self, slot: _Slot, first: bool) -> Kernel | None:
        """A started and seeded kernel, or None once the slot has given up."""
        while True:
            started = time.monotonic()
            try:
                kernel = await Kernel.start(self.config)
            except KernelError as exc:
                error: CellserveError = exc
            else:
                try:
                    await kernel.seed(self.seeds)
                except (SeedError, KernelError) as exc:
                    await kernel.shutdown()
                    error = exc
                except BaseException:
                    await kernel.shutdown()  # cancelled while seeding: the pool is closing
                    raise
                else:
                    slot.failures = 0
                    slot.seed_seconds = time.monotonic() - started
                    return kernel
            slot.failures += 1
            slot.last_error = str(error)
            if first and isinstance(error, SeedError):
                logger.error("%s: %s\n%s", self.label, error, error.traceback)
                self._fail_startup(error)
                slot.state = KernelState.FAILED
                return None
            if slot.failures >= self.limits.max_seed_failures:
                slot.state = KernelState.FAILED
                logger.error(
                    "%s kernel slot %d failed %d times in a row and is given up: %s",
                    self.label,
                    slot.index,
                    slot.failures,
                    error,
                )
                if all(s.state == KernelState.FAILED for s in self._slots):
                    self._fail_startup(error)
                    self._refuse_waiters()
                return None
            logger.warning("%s kernel slot %d: %s; retrying", self.label, slot.index, error)
            await anyio.sleep(min(0.5 * 2**slot.failures, 10))

    def _refuse_waiters(self) -> None:
        """No kernel will ever come: answer everyone still queued now, not at their timeout."""
        for waiter in self._scheduler.drain():
            waiter.refused = True
            waiter.assigned.set()

    def _fail_startup(self, error: CellserveError) -> None:
        if not self._settled.is_set():
            self._startup_error = error
            self._settled.set()

    async def _serve_with(self, slot: _Slot, kernel: Kernel) -> None:
        """Offer `kernel` to requests until it must be replaced (died, hung, or closing)."""
        slot.kernel = kernel
        slot.replace = anyio.Event()
        self._kernels[kernel.id] = slot
        slot.state = KernelState.IDLE
        self._hand_out(kernel.id)
        self._settled.set()
        while not slot.replace.is_set():
            with anyio.move_on_after(1.0):
                await slot.replace.wait()
            if not slot.replace.is_set() and not await kernel.is_alive():
                self._kernel_lost(slot, kernel, f"kernel {kernel.id} (pid {kernel.pid}) exited")
        await self._retire(slot)

    async def _retire(self, slot: _Slot) -> None:
        kernel = slot.kernel
        if kernel is None:
            return
        slot.kernel = None
        self._scheduler.remove(kernel.id)
        self._kernels.pop(kernel.id, None)
        await kernel.shutdown()

    # -- requests -------------------------------------------------------------------------

    async def execute(
        self,
        call: CellCall,
        *,
        timeout: float | None = None,
        on_stdout: StdoutSink | None = None,
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> CellOutcome:
        """Run `call` on a free kernel, waiting in the queue if needed.

        Raises Unavailable (queue full, queue timeout, kernel died), ExecutionTimeout.
        `disconnected`, if given, returns when the client goes away; a request still queued
        then leaves the queue.
        """
        slot, kernel, pending = await self._acquire(call, disconnected)
        timeout = timeout if timeout is not None else self.limits.timeout
        try:
            if pending is None:
                pending = kernel.begin(call)
            outcome = await kernel.finish(pending, timeout=timeout, on_stdout=on_stdout)
        except TimeoutError:
            self._timeouts += 1
            await self._recover(slot, kernel, f"a request ran past {timeout} s")
            raise ExecutionTimeout(
                f"the cell ran longer than {timeout} s and was interrupted"
            ) from None
        except KernelDied as exc:
            self._kernel_lost(slot, kernel, f"{exc} mid-request")
            raise Unavailable(
                "the kernel running this request died; it is being restarted"
            ) from exc
        except BaseException:
            # Cancelled mid-cell (client gone, server stopping) or a protocol error: the
            # kernel may still be running the cell, so interrupt it before anyone reuses it.
            await self._recover(slot, kernel, "its request was abandoned")
            raise
        slot.served += 1
        self._release(kernel.id)
        return outcome

    def _kernel_lost(self, slot: _Slot, kernel: Kernel, reason: str) -> None:
        """Replace `kernel` (once), unless its slot has already moved on to a new one."""
        if slot.kernel is not kernel or slot.replace.is_set():
            return
        self._crashes += 1
        slot.last_error = reason
        logger.warning("%s: %s; restarting it", self.label, reason)
        self._scheduler.remove(kernel.id)
        slot.replace.set()

    async def _recover(self, slot: _Slot, kernel: Kernel, why: str) -> None:
        """Interrupt `kernel`; give it back if it answers within the grace, else replace it."""
        with anyio.CancelScope(shield=True):
            self._interrupts += 1
            if await kernel.interrupt(self.limits.interrupt_grace):
                logger.warning("%s: interrupted kernel %s: %s", self.label, kernel.id, why)
                self._release(kernel.id)
            else:
                self._kernel_lost(slot, kernel, f"kernel ignored an interrupt after {why}")

    async def _acquire(
        self, call: CellCall, disconnected: Callable[[], Awaitable[None]] | None
    ) -> tuple[_Slot, Kernel, PendingCall | None]:
        """A kernel for `call`, and the call itself if the kernel's hand-over already sent it."""
        if self._closing.is_set():
            raise Unavailable("the server is shutting down")
        if all(s.state == KernelState.FAILED for s in self._slots):
            raise Unavailable(_ALL_FAILED, 30)
        waiter = _Waiter(call)
        try:
            kernel_id = self._scheduler.submit(waiter)
        except QueueFull:
            self._rejected += 1
            raise Unavailable(
                f"all kernels are busy and {self._scheduler.max_queue} requests are waiting"
            ) from None
        if kernel_id is None:
            kernel_id = await self._wait_turn(waiter, disconnected)
        slot = self._kernels.get(kernel_id)
        if slot is None or slot.kernel is None or slot.replace.is_set():
            raise Unavailable("the kernel given to this request was lost; it is being restarted")
        slot.state = KernelState.BUSY
        note_kernel(kernel_id)
        return slot, slot.kernel, waiter.pending

    async def _wait_turn(
        self, waiter: _Waiter, disconnected: Callable[[], Awaitable[None]] | None
    ) -> str:
        try:
            with anyio.move_on_after(self.limits.queue_timeout):
                if disconnected is None:
                    await waiter.assigned.wait()
                else:
                    async with anyio.create_task_group() as tg:

                        async def watch_client() -> None:
                            await disconnected()
                            tg.cancel_scope.cancel()

                        tg.start_soon(watch_client)
                        await waiter.assigned.wait()
                        tg.cancel_scope.cancel()
        except BaseException:
            await self._give_up(waiter)
            raise
        if waiter.refused:
            self._rejected += 1
            raise Unavailable(_ALL_FAILED, 30)
        if waiter.kernel_id is None:
            await self._give_up(waiter)
            self._rejected += 1
            raise Unavailable(
                f"no kernel became free within the queue timeout ({self.limits.queue_timeout} s)"
            )
        return waiter.kernel_id

    async def _give_up(self, waiter: _Waiter) -> None:
        """Leave the queue; a kernel handed over in the same instant goes straight back.

        If the hand-over already sent the call, the kernel is running it: interrupt it first.
        """
        if self._scheduler.withdraw(waiter) or waiter.kernel_id is None:
            return
        slot = self._kernels.get(waiter.kernel_id)
        sent = waiter.pending is not None and waiter.pending.msg_id is not None
        if sent and slot is not None and slot.kernel is not None:
            await self._recover(slot, slot.kernel, "its queued request was abandoned")
        else:
            self._release(waiter.kernel_id)

    def _release(self, kernel_id: str) -> None:
        slot = self._kernels.get(kernel_id)
        if slot is None or slot.replace.is_set():
            return  # retired, or lost and about to be: never hand it out again
        slot.state = KernelState.IDLE
        self._hand_out(kernel_id)

    def _hand_out(self, kernel_id: str) -> None:
        waiter = self._scheduler.release(kernel_id)
        if waiter is not None:
            slot = self._kernels[kernel_id]
            waiter.kernel_id = kernel_id
            if slot.kernel is not None:
                # Send the next request right away: the kernel should not sit idle until
                # the waiting task gets its turn on the event loop.
                with contextlib.suppress(KernelError):
                    waiter.pending = slot.kernel.begin(waiter.call)
            waiter.assigned.set()
            slot.state = KernelState.BUSY
        if self._scheduler.is_quiet:
            self._quiet.set()

    def stats(self) -> PoolStats:
        return PoolStats(
            generation=self.generation,
            kernels=tuple(
                KernelStats(
                    slot=s.index,
                    kernel_id=s.kernel.id if s.kernel else None,
                    pid=s.kernel.pid if s.kernel else None,
                    state=s.state.value,
                    requests_served=s.served,
                    restarts=s.restarts,
                    last_error=s.last_error,
                    seed_seconds=s.seed_seconds,
                )
                for s in self._slots
            ),
            queue_depth=self._scheduler.waiting,
            requests_served=sum(s.served for s in self._slots),
            timeouts=self._timeouts,
            crashes=self._crashes,
            rejected=self._rejected,
            interrupts=self._interrupts,
        )
