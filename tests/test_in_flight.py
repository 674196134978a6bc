"""The books of pipelined calls (in_flight.py): pure logic on a clock the test moves."""

from __future__ import annotations

import math

from cellserve.in_flight import CallsInFlight


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def books() -> tuple[CallsInFlight, Clock]:
    clock = Clock()
    return CallsInFlight(clock), clock


def test_the_call_behind_is_timed_from_when_the_one_ahead_ends() -> None:
    calls, clock = books()
    calls.sent("a")
    clock.now = 1
    calls.sent("b")
    assert calls.deadline_of("a", 10) == 10
    assert calls.deadline_of("b", 2) == math.inf  # a live call runs first
    clock.now = 5
    calls.answered("a", {"status": "ok"})
    assert calls.answer("a") == {"status": "ok"}
    assert calls.answer("a") is None  # taken once
    calls.forget("a")
    assert calls.deadline_of("b", 2) == 7
    assert len(calls) == 1


def test_behind_a_call_that_left_the_next_one_waits_for_its_timeout() -> None:
    calls, clock = books()
    calls.sent("a")
    calls.sent("b")
    clock.now = 1
    calls.leave("a", 3)  # its requester left; the kernel still runs it
    assert len(calls) == 2
    assert calls.deadline_of("b", 30) == 3  # a overruns at 3: then b's wait ends
    calls.leave("a", None)  # being interrupted: b keeps waiting
    assert calls.deadline_of("b", 30) == math.inf


def test_the_answer_of_a_call_that_left_is_dropped_and_frees_its_place() -> None:
    calls, clock = books()
    calls.sent("a")
    calls.sent("b")
    calls.leave("a", 3)
    clock.now = 2
    calls.answered("a", {"status": "ok"})
    assert calls.answer("a") is None
    assert len(calls) == 1
    assert calls.deadline_of("b", 30) == 32


def test_leaving_after_the_answer_came_forgets_the_call() -> None:
    calls, _ = books()
    calls.sent("a")
    calls.answered("a", {"status": "ok"})
    calls.leave("a", 3)
    assert len(calls) == 0
    assert calls.deadline_of("a", 3) == math.inf


def test_forget_tells_whether_an_interrupt_was_sent_after_the_call() -> None:
    calls, _ = books()
    calls.sent("a")
    calls.interrupts += 1
    calls.sent("b")
    assert calls.forget("a") == 0
    assert calls.forget("b") == 1
    calls.answered("c", {"status": "ok"})  # not in flight: ignored
    assert calls.answer("c") is None
