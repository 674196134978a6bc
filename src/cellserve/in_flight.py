"""The fast-path calls one kernel holds, in the order it runs them (pipelining's books).

A kernel runs the calls it was sent one after another, so the oldest call in flight is the one
running: its timeout counts from when it became the oldest, not from when it was sent. A call
whose requester left (timed out, cancelled) still runs in the kernel: it keeps its place until
the kernel answers it, and the calls behind it wait for it. No I/O here: ``kernels.Kernel``
sends and reads, and tells these books what happened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


class CallsInFlight:
    """Message ids of the calls sent to one kernel and not yet answered, oldest first."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._order: dict[str, int] = {}  # msg_id → interrupts sent before it went out
        # Calls whose requester left, with how long they may run once they are the oldest
        # (None: an interrupt is on its way to them).
        self._left: dict[str, float | None] = {}
        self._answers: dict[str, dict[str, Any]] = {}
        self._head_since = 0.0
        self.interrupts = 0
        """Interrupts sent to the kernel so far."""

    def __len__(self) -> int:
        return len(self._order)

    def sent(self, msg_id: str) -> None:
        if not self._order:
            self._head_since = self._clock()
        self._order[msg_id] = self.interrupts

    def deadline_of(self, msg_id: str, timeout: float | None) -> float:
        """When `msg_id` times out: `timeout` after it became the oldest in flight.

        Behind calls that left but still run in the kernel, it times out when the oldest of
        them overruns its own timeout: the interrupt that follows then stops that cell.
        """
        if timeout is None or msg_id not in self._order:
            return math.inf
        order = list(self._order)
        if order[0] == msg_id:
            return self._head_since + timeout
        if any(ahead not in self._left for ahead in order[: order.index(msg_id)]):
            return math.inf  # a live call runs first and keeps its own time
        left = self._left[order[0]]
        return math.inf if left is None else self._head_since + left

    def answered(self, msg_id: str, answer: dict[str, Any]) -> None:
        """The kernel answered `msg_id`: keep the answer for its caller, or forget a call
        whose requester left."""
        if msg_id in self._left:
            del self._left[msg_id]
            self.forget(msg_id)
        elif msg_id in self._order:
            self._answers[msg_id] = answer

    def answer(self, msg_id: str) -> dict[str, Any] | None:
        """`msg_id`'s answer once it came (taken once), else None."""
        return self._answers.pop(msg_id, None)

    def leave(self, msg_id: str, timeout: float | None) -> None:
        """Nobody waits for `msg_id` any more, but the kernel may still run it: keep its place,
        with `timeout` to run once it is the oldest (None: it is being interrupted)."""
        if self._answers.pop(msg_id, None) is not None:
            self.forget(msg_id)  # already answered: the kernel is done with it
        elif msg_id in self._order:
            self._left[msg_id] = timeout

    def forget(self, msg_id: str) -> int:
        """`msg_id` is done with; the interrupt count from when it was sent."""
        was_head = next(iter(self._order), None) == msg_id
        sent_after = self._order.pop(msg_id, self.interrupts)
        self._answers.pop(msg_id, None)
        if was_head:
            self._head_since = self._clock()
        return sent_after
