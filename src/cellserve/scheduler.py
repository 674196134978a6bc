"""The pool's books: which kernel serves which request, as a synchronous decision with no I/O.

``PoolBook`` owns the slots, the kernels they hold and the queue, and is the only place where
an assignment changes. The pool (pool.py) reports what happened — a kernel is ready, a request
arrived, finished, timed out or left, a kernel was lost, an interrupt worked or not — and
each event returns the *effects* to carry out: assign a kernel to a waiter, refuse a waiter,
interrupt or retire a kernel, tell the closing pool it is quiet. Events are plain method
calls, so a task cancelled at any point leaves the books consistent; stale events (about a
kernel already lost, or a waiter already ended) change nothing.

Free kernels are handed out least recently used first (Kernel Gateway's rotation: a, b, c,
a, ...); when none is free, requests wait in one FIFO shared by all kernels. A kernel that was
lost is never handed out again.

**Pipelining.** With ``depth`` > 1, a busy kernel may also take the next request before it
finishes the one it runs, up to `depth` in flight, so it never waits for the server between
requests. Only calls that ``pipelines(waiter, kernel)`` allows share a kernel (the fast path:
the kernel runs them in order); any other call takes a kernel alone. A kernel takes nothing new
while it is being interrupted. The call it runs is the oldest in flight, so only that one's
timeout or abandonment interrupts it; a call behind it that is abandoned is just dropped from
the books (the kernel still runs it, and its answer is ignored).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

K = TypeVar("K")  # a kernel; hashable (compared by identity in the pool)
W = TypeVar("W")  # a waiting request; hashable


class KernelState(StrEnum):
    STARTING = "starting"
    SEEDING = "seeding"
    IDLE = "idle"
    BUSY = "busy"
    INTERRUPTING = "interrupting"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class Ending(StrEnum):
    """How a request left the pool; each request ends exactly once."""

    SERVED = "served"
    TIMED_OUT = "timed_out"
    KERNEL_LOST = "kernel_lost"  # its kernel died under it
    ABANDONED = "abandoned"  # cancelled (client gone, server stopping) while running
    REJECTED = "rejected"  # the queue was full
    REFUSED = "refused"  # closing, or no kernel will ever come
    QUEUE_TIMEOUT = "queue_timeout"
    DISCONNECTED = "disconnected"  # the client left while queued
    CANCELLED = "cancelled"  # the request was cancelled while queued (e.g. server stopping)


class Refusal(StrEnum):
    QUEUE_FULL = "queue_full"
    CLOSING = "closing"
    NO_KERNEL = "no_kernel"  # every slot failed


@dataclass(frozen=True)
class Assign(Generic[K, W]):
    """Send `waiter`'s call to `kernel` now and wake the waiter."""

    waiter: W
    kernel: K


@dataclass(frozen=True)
class Refuse(Generic[W]):
    """Wake `waiter` with a refusal; it never gets a kernel."""

    waiter: W
    refusal: Refusal


@dataclass(frozen=True)
class Interrupt(Generic[K]):
    """The slot must interrupt `kernel` and report ``interrupted``."""

    slot: int
    kernel: K


@dataclass(frozen=True)
class Retire(Generic[K]):
    """The slot must shut `kernel` down and start a new one (no request uses it any more)."""

    slot: int
    kernel: K


@dataclass(frozen=True)
class RetryStart:
    """The slot failed to start a kernel and should try again after `delay` seconds."""

    slot: int
    delay: float


@dataclass(frozen=True)
class Quiet:
    """The pool is closing and holds no request: it may stop its kernels."""


Effect = Assign[K, W] | Refuse[W] | Interrupt[K] | Retire[K] | RetryStart | Quiet


@dataclass(frozen=True)
class SlotView(Generic[K]):
    """A slot as the books see it, for stats and for the slot's own task."""

    index: int
    state: KernelState
    kernel: K | None
    since: float
    served: int
    restarts: int
    failures: int
    last_error: str | None
    seed_cell: int | None
    seed_cells: int | None
    in_flight: int = 0
    """Calls sent to the slot's kernel and not yet answered (more than 1: pipelined)."""


@dataclass
class _Slot(Generic[K]):
    index: int
    since: float
    state: KernelState = KernelState.STARTING
    kernel: K | None = None
    served: int = 0
    restarts: int = 0
    failures: int = 0
    last_error: str | None = None
    seed_cell: int | None = None
    seed_cells: int | None = None


@dataclass
class _Kernel(Generic[W]):
    slot: int
    waiters: list[W] = field(default_factory=list)  # in flight, oldest (running) first
    lost: bool = False
    stopped: bool = False  # its slot stopped and shut it down already


class PoolBook(Generic[K, W]):
    """Books for `size` slots, their kernels (keys `K`) and waiting requests (tokens `W`)."""

    def __init__(
        self,
        size: int,
        *,
        max_queue: int | None = None,
        max_start_failures: int = 3,
        backoff: float = 0.5,
        depth: int = 1,
        pipelines: Callable[[W, K], bool] = lambda waiter, kernel: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_queue = max_queue
        self.depth = max(1, depth)
        self._pipelines = pipelines
        self.max_start_failures = max_start_failures
        self.backoff = backoff
        self._clock = clock
        self._slots = [_Slot[K](i, clock()) for i in range(size)]
        self._kernels: dict[K, _Kernel[W]] = {}
        self._free: deque[K] = deque()
        self._queue: deque[W] = deque()
        self._running: dict[W, K] = {}
        self.ended: Counter[Ending] = Counter()
        self.crashes = 0
        self.interrupts = 0
        self.closing = False

    # -- views ----------------------------------------------------------------------------

    @property
    def queued(self) -> tuple[W, ...]:
        return tuple(self._queue)

    @property
    def running(self) -> dict[W, K]:
        """Each request holding a kernel, with that kernel."""
        return dict(self._running)

    @property
    def free(self) -> tuple[K, ...]:
        """Idle kernels, the next one to be handed out first."""
        return tuple(self._free)

    @property
    def waiting(self) -> int:
        """Requests not yet running: queued, or pipelined behind a kernel's running call."""
        pipelined = sum(max(0, len(book.waiters) - 1) for book in self._kernels.values())
        return len(self._queue) + pipelined

    @property
    def is_quiet(self) -> bool:
        """No request is running or waiting."""
        return not self._running and not self._queue

    @property
    def all_failed(self) -> bool:
        return all(s.state is KernelState.FAILED for s in self._slots)

    def slot(self, index: int) -> SlotView[K]:
        s = self._slots[index]
        return SlotView(
            s.index,
            s.state,
            s.kernel,
            s.since,
            s.served,
            s.restarts,
            s.failures,
            s.last_error,
            s.seed_cell,
            s.seed_cells,
            len(self._kernels[s.kernel].waiters) if s.kernel in self._kernels else 0,
        )

    @property
    def slots(self) -> tuple[SlotView[K], ...]:
        return tuple(self.slot(i) for i in range(len(self._slots)))

    # -- slots ----------------------------------------------------------------------------

    def starting(self, slot: int) -> None:
        """The slot starts a kernel process (its first, or a replacement)."""
        s = self._slots[slot]
        s.seed_cell = s.seed_cells = None
        self._set(s, KernelState.RESTARTING if s.restarts else KernelState.STARTING)

    def seeding(self, slot: int, cell: int, cells: int) -> None:
        """The slot's new kernel runs seed cell `cell` (1-based) of `cells`."""
        s = self._slots[slot]
        s.seed_cell, s.seed_cells = cell, cells
        if s.state is not KernelState.SEEDING:
            self._set(s, KernelState.SEEDING)

    def kernel_ready(self, slot: int, kernel: K) -> list[Effect[K, W]]:
        """The slot's new kernel is started and seeded: hand it out."""
        s = self._slots[slot]
        assert s.kernel is None and kernel not in self._kernels, "a kernel is ready twice"
        s.kernel, s.failures, s.seed_cell, s.seed_cells = kernel, 0, None, None
        self._kernels[kernel] = _Kernel(slot)
        return self._hand_out(kernel)

    def start_failed(self, slot: int, error: str, *, fatal: bool = False) -> list[Effect[K, W]]:
        """Starting or seeding failed; the slot retries with backoff, or gives up.

        A `fatal` failure (a seed cell that raises on the very first start) and the
        `max_start_failures`-th failure in a row make the slot FAILED. Once every slot has
        failed, every queued request is refused at once rather than at its timeout.
        """
        s = self._slots[slot]
        s.failures += 1
        s.last_error = error
        if not fatal and s.failures < self.max_start_failures:
            return [RetryStart(slot, min(self.backoff * 2**s.failures, 20 * self.backoff))]
        self._set(s, KernelState.FAILED)
        if not self.all_failed:
            return []
        return self._refuse_queue(Refusal.NO_KERNEL)

    def stopped(self, slot: int) -> list[Effect[K, W]]:
        """The slot's task ended (the pool is closing); its kernel, if any, is shut down."""
        s = self._slots[slot]
        if s.kernel is not None:
            kernel, s.kernel = s.kernel, None
            book = self._kernels[kernel]
            book.lost = book.stopped = True
            if kernel in self._free:
                self._free.remove(kernel)
            if not book.waiters:
                del self._kernels[kernel]
        if s.state is not KernelState.FAILED:
            self._set(s, KernelState.STOPPED)
        return self._quiet()

    # -- requests -------------------------------------------------------------------------

    def submit(self, waiter: W) -> list[Effect[K, W]]:
        """A new request: a kernel now, a place in the queue (no effect), or a refusal."""
        assert waiter not in self._running and waiter not in self._queue, "submitted twice"
        if self.closing:
            return self._end_refused(waiter, Refusal.CLOSING)
        if self.all_failed:
            return self._end_refused(waiter, Refusal.NO_KERNEL)
        if self._free:
            return [self._assign(waiter, self._free.popleft())]
        # A call pipelined behind a running one waits too, so it takes a place in max_queue.
        if self.max_queue is not None and self.waiting >= self.max_queue:
            self.ended[Ending.REJECTED] += 1
            return [Refuse(waiter, Refusal.QUEUE_FULL)]
        busy = None if self._queue else self._pipelined_kernel_for(waiter)  # no overtaking
        if busy is not None:
            return [self._assign(waiter, busy)]
        self._queue.append(waiter)
        return []

    def done(self, waiter: W, *, kernel_exiting: bool = False) -> list[Effect[K, W]]:
        """`waiter`'s call finished; its kernel takes the next request unless it is exiting."""
        kernel = self._end_running(waiter, Ending.SERVED)
        if kernel is None:
            return []
        self._slots[self._kernels[kernel].slot].served += 1
        if kernel_exiting:
            return self._lose(kernel, "the kernel exited after the request")
        return self._release(kernel)

    def timed_out(self, waiter: W) -> list[Effect[K, W]]:
        """`waiter`'s call ran past its timeout: interrupt the kernel if it runs that call."""
        return self._stop_running(waiter, Ending.TIMED_OUT)

    def failed(self, waiter: W, reason: str) -> list[Effect[K, W]]:
        """`waiter`'s kernel died or stopped answering under it: replace the kernel."""
        kernel = self._end_running(waiter, Ending.KERNEL_LOST)
        return [] if kernel is None else self._lose(kernel, reason)

    def leave(self, waiter: W, why: Ending) -> list[Effect[K, W]]:
        """`waiter` stops waiting or running (queue timeout, client gone, cancelled).

        Still queued, it ends as `why`. Already given a kernel (even in this same instant),
        the kernel may be running its call, so it ends as ABANDONED and the kernel is
        interrupted before anyone else gets it.
        """
        if waiter in self._queue:
            self._queue.remove(waiter)
            self.ended[why] += 1
            return self._quiet()
        return self._stop_running(waiter, Ending.ABANDONED)

    # -- kernels --------------------------------------------------------------------------

    def lost(self, kernel: K, reason: str) -> list[Effect[K, W]]:
        """`kernel` exited or must not be used again; a request running on it ends by itself."""
        return self._lose(kernel, reason)

    def retired(self, kernel: K) -> bool:
        """Whether `kernel`'s slot may shut it down now (lost, and no request on it)."""
        return kernel not in self._kernels

    def interrupted(self, kernel: K, ok: bool) -> list[Effect[K, W]]:
        """The slot's interrupt of `kernel` worked (it answers again) or did not."""
        book = self._kernels.get(kernel)
        if book is None or book.lost:
            return []
        if not ok:
            return self._lose(kernel, "the kernel did not answer after an interrupt")
        self._set(self._slots[book.slot], KernelState.BUSY)  # until handed out below
        return self._release(kernel)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> list[Effect[K, W]]:
        """Refuse new requests; queued and running ones go on. Quiet once none is left."""
        self.closing = True
        return self._quiet()

    def drain(self) -> list[Effect[K, W]]:
        """Refuse every queued request now (the grace is over, or no kernel will come)."""
        return self._refuse_queue(Refusal.CLOSING if self.closing else Refusal.NO_KERNEL)

    # -- internals ------------------------------------------------------------------------

    def _set(self, slot: _Slot[K], state: KernelState) -> None:
        slot.state = state
        slot.since = self._clock()

    def _assign(self, waiter: W, kernel: K) -> Assign[K, W]:
        book = self._kernels[kernel]
        assert self._takes(kernel, waiter), "kernel handed a request it cannot take"
        book.waiters.append(waiter)
        self._running[waiter] = kernel
        slot = self._slots[book.slot]
        if slot.state is not KernelState.BUSY:
            self._set(slot, KernelState.BUSY)
        return Assign(waiter, kernel)

    def _takes(self, kernel: K, waiter: W) -> bool:
        """Whether `kernel` can be sent `waiter`'s call now."""
        book = self._kernels[kernel]
        if book.lost or self._slots[book.slot].state is KernelState.INTERRUPTING:
            return False
        if not book.waiters:
            return True
        return (
            len(book.waiters) < self.depth
            and self._pipelines(waiter, kernel)
            and all(self._pipelines(other, kernel) for other in book.waiters)
        )

    def _pipelined_kernel_for(self, waiter: W) -> K | None:
        """A busy kernel that can take `waiter` as well, the one with least in flight."""
        if self.depth == 1:
            return None
        fits = [k for k, book in self._kernels.items() if book.waiters and self._takes(k, waiter)]
        return min(fits, key=lambda k: len(self._kernels[k].waiters), default=None)

    def _hand_out(self, kernel: K) -> list[Effect[K, W]]:
        """`kernel` has room: requests from the head of the queue while it can take them;
        idle, it joins the free list."""
        book = self._kernels[kernel]
        slot = self._slots[book.slot]
        if slot.state is KernelState.INTERRUPTING:
            return self._quiet()  # ``interrupted`` hands it out again
        effects: list[Effect[K, W]] = []
        while self._queue and self._takes(kernel, self._queue[0]):
            effects.append(self._assign(self._queue.popleft(), kernel))
        if book.waiters:
            if slot.state is not KernelState.BUSY:
                self._set(slot, KernelState.BUSY)
            return effects
        self._free.append(kernel)
        self._set(slot, KernelState.IDLE)
        return self._quiet()

    def _release(self, kernel: K) -> list[Effect[K, W]]:
        book = self._kernels[kernel]
        if book.lost:
            return self._forget(kernel) if not book.waiters else []
        return self._hand_out(kernel)

    def _end_running(self, waiter: W, ending: Ending) -> K | None:
        """End `waiter`'s run; its kernel, or None if it had already ended (a stale event)."""
        kernel = self._running.pop(waiter, None)
        if kernel is None:
            return None
        self.ended[ending] += 1
        self._kernels[kernel].waiters.remove(waiter)
        return kernel

    def _stop_running(self, waiter: W, ending: Ending) -> list[Effect[K, W]]:
        """End a call that did not finish: interrupt its kernel if the kernel is running it
        (the oldest call in flight); a call still waiting behind another just leaves."""
        kernel = self._running.get(waiter)
        if kernel is None:
            return []
        running = self._kernels[kernel].waiters[0] is waiter
        self._end_running(waiter, ending)
        return self._interrupt(kernel) if running else self._release(kernel)

    def _end_refused(self, waiter: W, refusal: Refusal) -> list[Effect[K, W]]:
        self.ended[Ending.REFUSED] += 1
        return [Refuse(waiter, refusal)]

    def _interrupt(self, kernel: K) -> list[Effect[K, W]]:
        book = self._kernels[kernel]
        if book.lost:
            return self._forget(kernel) if not book.waiters else []
        if kernel in self._free:
            self._free.remove(kernel)
        if self._slots[book.slot].state is KernelState.INTERRUPTING:
            return self._quiet()  # one interrupt at a time; it stops whatever runs now
        self._set(self._slots[book.slot], KernelState.INTERRUPTING)
        self.interrupts += 1
        return [Interrupt(book.slot, kernel), *self._quiet()]

    def _lose(self, kernel: K, reason: str) -> list[Effect[K, W]]:
        """Never hand `kernel` out again; retire it once no request runs on it (that request
        is still reading from it and will report its own end)."""
        book = self._kernels.get(kernel)
        if book is None:
            return []
        if book.lost:
            return self._forget(kernel) if not book.waiters else []
        book.lost = True
        self.crashes += 1
        if kernel in self._free:
            self._free.remove(kernel)
        slot = self._slots[book.slot]
        slot.last_error = reason
        slot.kernel = None
        slot.restarts += 1
        self._set(slot, KernelState.RESTARTING)
        return self._forget(kernel) if not book.waiters else []

    def _forget(self, kernel: K) -> list[Effect[K, W]]:
        """A lost kernel that no request uses any more: its slot may shut it down."""
        book = self._kernels.pop(kernel)
        retire: list[Effect[K, W]] = [] if book.stopped else [Retire(book.slot, kernel)]
        return retire + self._quiet()

    def _refuse_queue(self, refusal: Refusal) -> list[Effect[K, W]]:
        effects: list[Effect[K, W]] = []
        while self._queue:
            effects += self._end_refused(self._queue.popleft(), refusal)
        return effects + self._quiet()

    def _quiet(self) -> list[Effect[K, W]]:
        return [Quiet()] if self.closing and self.is_quiet else []
