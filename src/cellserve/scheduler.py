"""Which kernel takes which request: a synchronous decision with no I/O.

The pool asks and acts; this class only keeps the books. Free kernels are handed out least
recently used first (Kernel Gateway's rotation: a, b, c, a, ...); when none is free, requests
wait in one FIFO shared by all kernels, so a slow request never holds up the requests behind it
while another kernel is free. Each kernel runs one request at a time.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

K = TypeVar("K")
W = TypeVar("W")


class QueueFull(Exception):
    """Every kernel is busy and `max_queue` requests are already waiting."""


class Scheduler(Generic[K, W]):
    """Books for kernels (keys `K`) and waiting requests (tokens `W`)."""

    def __init__(self, max_queue: int | None = None) -> None:
        self.max_queue = max_queue
        self._free: deque[K] = deque()
        self._busy: set[K] = set()
        self._waiting: deque[W] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return len(self._busy)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def is_quiet(self) -> bool:
        """No request is running or waiting."""
        return not self._busy and not self._waiting

    def submit(self, waiter: W) -> K | None:
        """A free kernel for `waiter` now, or None when it was queued; QueueFull if no room."""
        if self._free:
            kernel = self._free.popleft()
            self._busy.add(kernel)
            return kernel
        if self.max_queue is not None and len(self._waiting) >= self.max_queue:
            raise QueueFull
        self._waiting.append(waiter)
        return None

    def release(self, kernel: K) -> W | None:
        """`kernel` is free (new, or done with a request): the waiter it now serves, if any."""
        if self._waiting:
            self._busy.add(kernel)
            return self._waiting.popleft()
        self._busy.discard(kernel)
        if kernel not in self._free:
            self._free.append(kernel)
        return None

    def remove(self, kernel: K) -> None:
        """`kernel` is gone (dead, restarting, shut down): never hand it out again."""
        self._busy.discard(kernel)
        if kernel in self._free:
            self._free.remove(kernel)

    def drain(self) -> list[W]:
        """Empty the queue (no kernel will come); the caller answers each waiter."""
        waiting = list(self._waiting)
        self._waiting.clear()
        return waiting

    def withdraw(self, waiter: W) -> bool:
        """Take `waiter` out of the queue; False if it was already given a kernel."""
        try:
            self._waiting.remove(waiter)
        except ValueError:
            return False
        return True
