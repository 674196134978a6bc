"""scheduler.py: the pool's books, as examples and as a model-based randomised test."""

from __future__ import annotations

from collections import Counter
from itertools import count

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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

Book = PoolBook[str, str]


def ready_book(*kernels: str, max_queue: int | None = None) -> Book:
    """A book whose slots each hold one ready kernel, named by `kernels`."""
    book: Book = PoolBook(len(kernels), max_queue=max_queue)
    for slot, kernel in enumerate(kernels):
        book.starting(slot)
        assert book.kernel_ready(slot, kernel) == []
    return book


def assigned(effects: list[Effect[str, str]]) -> list[tuple[str, str]]:
    return [(e.waiter, e.kernel) for e in effects if isinstance(e, Assign)]


def test_sequential_requests_rotate_least_recently_used_first() -> None:
    book = ready_book("a", "b", "c")
    served = []
    for n in range(7):
        ((_, kernel),) = assigned(book.submit(f"r{n}"))
        served.append(kernel)
        assert book.done(f"r{n}") == []
    assert served == ["a", "b", "c", "a", "b", "c", "a"]
    assert book.is_quiet
    assert book.ended == Counter({Ending.SERVED: 7})


def test_waiters_are_served_fifo_by_whichever_kernel_frees_first() -> None:
    book = ready_book("a", "b")
    book.submit("r1")
    book.submit("r2")
    for waiter in ("w1", "w2", "w3"):
        assert book.submit(waiter) == []
    assert assigned(book.done("r2")) == [("w1", "b")]
    assert assigned(book.done("r1")) == [("w2", "a")]
    assert assigned(book.done("w2")) == [("w3", "a")]
    assert book.slot(0).state is KernelState.BUSY


def test_a_full_queue_refuses_and_counts_a_rejection() -> None:
    book = ready_book("a", max_queue=1)
    book.submit("r1")
    assert book.submit("w1") == []
    assert book.submit("w2") == [Refuse("w2", Refusal.QUEUE_FULL)]
    assert book.ended[Ending.REJECTED] == 1


def test_leaving_the_queue_is_counted_by_why() -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("w1")
    book.submit("w2")
    assert book.leave("w1", Ending.DISCONNECTED) == []
    assert book.leave("w2", Ending.QUEUE_TIMEOUT) == []
    assert book.ended == Counter({Ending.DISCONNECTED: 1, Ending.QUEUE_TIMEOUT: 1})
    assert book.done("r1") == []


def test_leaving_after_the_hand_over_interrupts_the_kernel() -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("w1")
    assert assigned(book.done("r1")) == [("w1", "a")]
    # The waiter's queue timeout fires in the same instant: the call may be running.
    assert book.leave("w1", Ending.QUEUE_TIMEOUT) == [Interrupt(0, "a")]
    assert book.ended[Ending.ABANDONED] == 1
    assert book.submit("r2") == []  # not free until the interrupt is reported
    assert assigned(book.interrupted("a", ok=True)) == [("r2", "a")]


def test_a_timed_out_kernel_that_ignores_the_interrupt_is_replaced() -> None:
    book = ready_book("a")
    book.submit("r1")
    assert book.timed_out("r1") == [Interrupt(0, "a")]
    assert book.slot(0).state is KernelState.INTERRUPTING
    assert book.interrupted("a", ok=False) == [Retire(0, "a")]
    assert book.slot(0).state is KernelState.RESTARTING
    assert book.crashes == 1
    book.submit("r2")
    book.starting(0)
    assert assigned(book.kernel_ready(0, "a2")) == [("r2", "a2")]
    assert book.slot(0).restarts == 1


def test_a_lost_kernel_is_never_handed_out_and_late_reports_change_nothing() -> None:
    book = ready_book("a", "b")
    book.submit("r1")  # on a
    # r1 still reads from a: the slot waits for r1 to end before shutting a down.
    assert book.lost("a", "kernel a exited") == []
    assert book.lost("a", "again") == []
    assert book.interrupted("a", ok=True) == []
    assert not book.retired("a")
    assert assigned(book.submit("r2")) == [("r2", "b")]
    assert book.submit("r3") == []
    assert book.done("r1") == [Retire(0, "a")]  # answered before it died: served, not freed
    assert book.retired("a")
    assert book.ended[Ending.SERVED] == 1
    assert book.queued == ("r3",)


def test_a_kernel_that_exits_after_its_request_is_not_handed_out() -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("r2")
    assert book.done("r1", kernel_exiting=True) == [Retire(0, "a")]
    assert book.queued == ("r2",)


def test_start_failures_back_off_then_fail_the_slot_and_refuse_the_queue() -> None:
    book: Book = PoolBook(1, max_start_failures=3)
    book.starting(0)
    book.submit("w1")
    assert book.start_failed(0, "boom") == [RetryStart(0, 1.0)]
    assert book.start_failed(0, "boom") == [RetryStart(0, 2.0)]
    assert book.start_failed(0, "boom") == [Refuse("w1", Refusal.NO_KERNEL)]
    assert book.all_failed
    assert book.submit("w2") == [Refuse("w2", Refusal.NO_KERNEL)]
    assert book.ended[Ending.REFUSED] == 2


def test_closing_refuses_new_requests_serves_queued_ones_and_says_when_quiet() -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("w1")
    assert book.close() == []
    assert book.submit("late") == [Refuse("late", Refusal.CLOSING)]
    assert assigned(book.done("r1")) == [("w1", "a")]
    assert book.done("w1") == [Quiet()]


def test_drain_refuses_whoever_is_still_queued() -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("w1")
    book.close()
    assert book.drain() == [Refuse("w1", Refusal.CLOSING)]
    assert book.stopped(0) == []  # r1 still runs on the stopped kernel
    assert book.done("r1") == [Quiet()]


def test_seed_progress_and_state_times_come_from_the_clock() -> None:
    now = [10.0]
    book: Book = PoolBook(1, clock=lambda: now[0])
    book.starting(0)
    now[0] = 11.0
    book.seeding(0, 2, 5)
    view = book.slot(0)
    assert (view.state, view.seed_cell, view.seed_cells, view.since) == (
        KernelState.SEEDING,
        2,
        5,
        11.0,
    )
    book.kernel_ready(0, "a")
    assert book.slot(0).seed_cell is None


class BookMachine(RuleBasedStateMachine):
    """Random event sequences against the book, checked by a model of what must hold.

    The machine plays both sides: the slot tasks (kernels start, fail, are lost, interrupts
    answer) and the requests (submit, finish, time out, leave). Effects are carried out on the
    model the way pool.py carries them out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.size = 3
        self.book: Book = PoolBook(self.size, max_queue=4, max_start_failures=2)
        self.names = count()
        self.submitted = 0
        self.queue: list[str] = []  # the model's FIFO
        self.running: dict[str, str] = {}
        self.ends: Counter[str] = Counter()
        self.lost: set[str] = set()
        self.retired: set[str] = set()
        self.interrupting: set[str] = set()
        self.slot_kernel: dict[int, str | None] = dict.fromkeys(range(self.size))
        for slot in range(self.size):
            self.book.starting(slot)

    # -- carrying out effects -------------------------------------------------------------

    def apply(self, effects: list[Effect[str, str]], submitted: str | None = None) -> None:
        for effect in effects:
            if isinstance(effect, Assign):
                waiter, kernel = effect.waiter, effect.kernel
                assert kernel not in self.lost, "assigned to a lost kernel"
                self.check_room(waiter, kernel)
                assert kernel not in self.interrupting
                if waiter != submitted:
                    assert self.queue and self.queue[0] == waiter, "not first in, first out"
                    self.queue.pop(0)
                self.running[waiter] = kernel
            elif isinstance(effect, Refuse):
                if effect.waiter != submitted:
                    self.queue.remove(effect.waiter)
                self.end(effect.waiter)
            elif isinstance(effect, Interrupt):
                self.interrupting.add(effect.kernel)
            elif isinstance(effect, Retire):
                assert effect.kernel not in self.running.values(), "retired under a request"
                assert effect.kernel not in self.retired, "retired twice"
                self.retired.add(effect.kernel)
                self.mark_lost(effect.kernel)
            elif isinstance(effect, Quiet):
                assert self.book.closing and not self.queue and not self.running
        if submitted is not None and not any(
            isinstance(e, Assign | Refuse) and e.waiter == submitted for e in effects
        ):
            self.queue.append(submitted)

    def check_room(self, waiter: str, kernel: str) -> None:
        assert kernel not in self.running.values(), "a kernel holds two requests"

    def mark_lost(self, kernel: str) -> None:
        self.lost.add(kernel)
        self.interrupting.discard(kernel)
        for slot, held in self.slot_kernel.items():
            if held == kernel:
                self.slot_kernel[slot] = None

    def end(self, waiter: str) -> None:
        self.ends[waiter] += 1
        assert self.ends[waiter] == 1, f"{waiter} ended twice"

    # -- slot side ------------------------------------------------------------------------

    def startable(self) -> list[int]:
        return [
            s.index
            for s in self.book.slots
            if s.kernel is None and s.state not in (KernelState.FAILED, KernelState.STOPPED)
        ]

    @precondition(lambda self: self.startable())
    @rule(data=st.data())
    def kernel_ready(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(self.startable()))
        kernel = f"k{next(self.names)}"
        self.slot_kernel[slot] = kernel
        self.book.starting(slot)
        self.apply(self.book.kernel_ready(slot, kernel))

    @precondition(lambda self: self.startable())
    @rule(data=st.data(), fatal=st.booleans())
    def start_failed(self, data: st.DataObject, fatal: bool) -> None:
        slot = data.draw(st.sampled_from(self.startable()))
        effects = self.book.start_failed(slot, "boom", fatal=fatal)
        self.apply(effects)
        if not any(isinstance(e, RetryStart) for e in effects):
            assert self.book.slot(slot).state is KernelState.FAILED
            if self.book.all_failed:
                assert not self.queue

    @precondition(lambda self: any(k is not None for k in self.slot_kernel.values()))
    @rule(data=st.data())
    def kernel_lost(self, data: st.DataObject) -> None:
        kernel = data.draw(st.sampled_from([k for k in self.slot_kernel.values() if k]))
        self.apply(self.book.lost(kernel, "exited"))
        self.mark_lost(kernel)

    @precondition(lambda self: self.lost)
    @rule(data=st.data())
    def stale_reports_change_nothing(self, data: st.DataObject) -> None:
        kernel = data.draw(st.sampled_from(sorted(self.lost)))
        assert self.book.lost(kernel, "again") in ([], [Quiet()])
        assert self.book.interrupted(kernel, ok=True) in ([], [Quiet()])

    @precondition(lambda self: self.interrupting)
    @rule(data=st.data(), ok=st.booleans())
    def interrupt_answered(self, data: st.DataObject, ok: bool) -> None:
        kernel = data.draw(st.sampled_from(sorted(self.interrupting)))
        self.interrupting.discard(kernel)
        if not ok:
            self.mark_lost(kernel)
        self.apply(self.book.interrupted(kernel, ok))

    @rule(slot=st.integers(0, 2))
    def slot_stops(self, slot: int) -> None:
        kernel = self.slot_kernel[slot]
        if kernel is not None:
            self.mark_lost(kernel)
            self.retired.add(kernel)  # the stopping slot shuts it down itself
        self.apply(self.book.stopped(slot))

    # -- request side ---------------------------------------------------------------------

    @rule()
    def submit(self) -> None:
        waiter = f"w{next(self.names)}"
        self.submitted += 1
        self.apply(self.book.submit(waiter), submitted=waiter)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), outcome=st.sampled_from(["done", "exiting", "timed_out", "failed"]))
    def request_finishes(self, data: st.DataObject, outcome: str) -> None:
        waiter = data.draw(st.sampled_from(sorted(self.running)))
        kernel = self.running.pop(waiter)
        self.end(waiter)
        if outcome == "done":
            effects = self.book.done(waiter)
        elif outcome == "exiting":
            effects = self.book.done(waiter, kernel_exiting=True)
        elif outcome == "timed_out":
            effects = self.book.timed_out(waiter)
        else:
            effects = self.book.failed(waiter, "died")
        if outcome in ("exiting", "failed"):
            self.mark_lost(kernel)
        self.apply(effects)

    @precondition(lambda self: self.queue or self.running)
    @rule(data=st.data(), why=st.sampled_from([Ending.QUEUE_TIMEOUT, Ending.DISCONNECTED]))
    def request_leaves(self, data: st.DataObject, why: Ending) -> None:
        waiter = data.draw(st.sampled_from(sorted([*self.queue, *self.running])))
        if waiter in self.queue:
            self.queue.remove(waiter)
        else:
            self.running.pop(waiter)
        self.end(waiter)
        self.apply(self.book.leave(waiter, why))
        assert self.book.leave(waiter, why) == []  # a second report is stale

    @rule()
    def close(self) -> None:
        self.apply(self.book.close())

    @precondition(lambda self: self.book.closing)
    @rule()
    def drain(self) -> None:
        self.apply(self.book.drain())
        assert not self.queue

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        assert list(self.book.queued) == self.queue
        assert self.book.running == self.running

    @invariant()
    def counters_add_up(self) -> None:
        ended = sum(self.book.ended.values())
        assert ended == len(self.ends)
        assert ended + len(self.running) + len(self.queue) == self.submitted

    @invariant()
    def lost_kernels_are_retired_once_free(self) -> None:
        for kernel in self.lost - self.retired:
            assert kernel in self.running.values(), f"{kernel} lost and free but not retired"

    @invariant()
    def no_more_wait_than_the_queue_limit(self) -> None:
        assert self.book.max_queue is None or self.book.waiting <= self.book.max_queue

    @invariant()
    def no_kernel_idles_while_requests_wait(self) -> None:
        assert not (self.book.free and self.book.queued)

    @invariant()
    def free_kernels_are_live_and_idle(self) -> None:
        for kernel in self.book.free:
            assert kernel not in self.lost
            assert kernel not in self.running.values()
            assert kernel not in self.interrupting

    @invariant()
    def slot_states_agree_with_their_kernels(self) -> None:
        for slot in self.book.slots:
            if slot.state in (KernelState.IDLE, KernelState.BUSY, KernelState.INTERRUPTING):
                assert slot.kernel is not None and slot.kernel not in self.lost
            if slot.state is KernelState.BUSY:
                assert slot.kernel in self.running.values()


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pipelines(waiter: str, kernel: str) -> bool:
    """In the pipelined tests, requests named ``x…`` take the execute path: never shared."""
    return not waiter.startswith("x")


class PipelinedBookMachine(BookMachine):
    """The same events with pipelining (depth 2): at most two calls in flight per kernel, both
    pipelinable; and everything the plain machine checks."""

    def __init__(self) -> None:
        super().__init__()
        self.book = PoolBook(
            self.size, max_queue=4, max_start_failures=2, depth=2, pipelines=pipelines
        )
        for slot in range(self.size):
            self.book.starting(slot)

    def check_room(self, waiter: str, kernel: str) -> None:
        holders = [w for w, k in self.running.items() if k == kernel]
        assert len(holders) < 2, "more than two calls in flight on one kernel"
        if holders:
            assert pipelines(waiter, kernel) and pipelines(holders[0], kernel), "shared alone"

    @rule()
    def submit_exclusive(self) -> None:
        waiter = f"x{next(self.names)}"
        self.submitted += 1
        self.apply(self.book.submit(waiter), submitted=waiter)


TestPipelinedBookMachine = PipelinedBookMachine.TestCase
TestPipelinedBookMachine.settings = TestBookMachine.settings


def pipelined_book(*kernels: str) -> Book:
    book: Book = PoolBook(len(kernels), depth=2, pipelines=pipelines)
    for slot, kernel in enumerate(kernels):
        book.starting(slot)
        book.kernel_ready(slot, kernel)
    return book


@pytest.mark.parametrize("max_queue", [0, 1])
def test_a_pipelined_call_takes_a_place_in_the_queue_limit(max_queue: int) -> None:
    book: Book = PoolBook(1, max_queue=max_queue, depth=2, pipelines=pipelines)
    book.starting(0)
    book.kernel_ready(0, "a")
    assert assigned(book.submit("r1")) == [("r1", "a")]
    if max_queue == 1:
        assert assigned(book.submit("r2")) == [("r2", "a")]  # pipelined: the one place
    assert book.submit("r3") == [Refuse("r3", Refusal.QUEUE_FULL)]
    assert book.waiting == max_queue


def test_a_busy_kernel_takes_a_second_call_but_not_a_third() -> None:
    book = pipelined_book("a")
    assert assigned(book.submit("r1")) == [("r1", "a")]
    assert assigned(book.submit("r2")) == [("r2", "a")]  # sent while r1 runs
    assert book.submit("r3") == []
    assert assigned(book.done("r1")) == [("r3", "a")]  # two in flight again
    assert book.slot(0).state is KernelState.BUSY
    book.done("r2")
    book.done("r3")
    assert book.free == ("a",)


def test_idle_kernels_come_before_pipelining() -> None:
    book = pipelined_book("a", "b")
    assert [assigned(book.submit(w)) for w in ("r1", "r2", "r3", "r4", "r5")] == [
        [("r1", "a")],
        [("r2", "b")],
        [("r3", "a")],
        [("r4", "b")],
        [],
    ]


def test_calls_that_cannot_pipeline_take_a_kernel_alone() -> None:
    book = pipelined_book("a")
    book.submit("x1")
    assert book.submit("r1") == []  # nothing joins an exclusive call
    assert assigned(book.done("x1")) == [("r1", "a")]
    assert book.submit("x2") == []  # an exclusive call waits for an empty kernel
    assert book.submit("r2") == []  # and keeps its place: first in, first out
    assert assigned(book.done("r1")) == [("x2", "a")]
    assert assigned(book.done("x2")) == [("r2", "a")]


def test_a_timeout_interrupts_the_running_call_and_keeps_the_one_behind() -> None:
    book = pipelined_book("a")
    book.submit("r1")
    book.submit("r2")
    book.submit("r3")
    assert book.timed_out("r1") == [Interrupt(0, "a")]
    assert book.running == {"r2": "a"}
    assert book.slot(0).state is KernelState.INTERRUPTING
    assert book.done("r2") == []  # nothing new while the interrupt is under way
    assert assigned(book.interrupted("a", ok=True)) == [("r3", "a")]
    assert book.ended == Counter({Ending.TIMED_OUT: 1, Ending.SERVED: 1})


def test_a_call_abandoned_behind_another_does_not_interrupt_it() -> None:
    book = pipelined_book("a")
    book.submit("r1")
    book.submit("r2")
    book.submit("r3")
    assert assigned(book.leave("r2", Ending.CANCELLED)) == [("r3", "a")]
    assert book.interrupts == 0
    assert book.running == {"r1": "a", "r3": "a"}


def test_a_crash_ends_both_calls_and_retires_the_kernel_after_the_last() -> None:
    book = pipelined_book("a")
    book.submit("r1")
    book.submit("r2")
    assert book.failed("r1", "died") == []  # r2 still reads from the kernel
    assert book.failed("r2", "died") == [Retire(0, "a")]
    assert book.ended[Ending.KERNEL_LOST] == 2
    assert book.crashes == 1


def test_every_waiter_ends_once_after_closing_and_draining() -> None:
    book = ready_book("a", "b")
    for n in range(5):
        book.submit(f"r{n}")
    book.close()
    book.drain()
    for waiter in list(book.running):
        book.done(waiter)
    assert book.is_quiet
    assert sum(book.ended.values()) == 5


@pytest.mark.parametrize("why", [Ending.QUEUE_TIMEOUT, Ending.DISCONNECTED, Ending.CANCELLED])
def test_a_waiter_that_left_is_never_assigned(why: Ending) -> None:
    book = ready_book("a")
    book.submit("r1")
    book.submit("w1")
    book.leave("w1", why)
    assert book.done("r1") == []
    assert book.free == ("a",)
