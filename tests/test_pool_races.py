"""pool.py against fake kernels: every race the pool must survive, in milliseconds.

The pool runs for real (its task group, slot tasks, leases, queue); only the kernels are
fakes (tests/fake_kernel.py) that answer when the test says so. Nothing waits on the clock:
each step waits for a condition of the pool or of a fake.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import pytest

from cellserve.cells import CellCall, CellOutcome
from cellserve.exceptions import ExecutionTimeout, KernelError, SeedError, Unavailable
from cellserve.notebook import SeedCell
from cellserve.pool import KernelPool, PoolLimits
from tests.fake_kernel import FakeFactory, FakeKernel, eventually, held, raising, seed_error

pytestmark = pytest.mark.anyio

SEEDS = (SeedCell(1, "import json"), SeedCell(2, "N = 1"))
FAST = PoolLimits(
    size=1,
    queue_timeout=30,
    timeout=30,
    interrupt_grace=1,
    shutdown_grace=30,
    liveness_interval=0.005,
    restart_backoff=0.001,
)


def call(route: str = "GET /x") -> CellCall:
    return CellCall("print(1)", "{}", route=route)


async def execute(
    pool: KernelPool,
    call: CellCall,
    *,
    timeout: float | None = None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> CellOutcome:
    """What an endpoint does: lease a kernel, run the call on it."""
    async with pool.lease(call, disconnected=disconnected) as lease:
        return await lease.run(timeout=timeout)


@asynccontextmanager
async def running(
    factory: FakeFactory, limits: PoolLimits = FAST, *, started: bool = True
) -> AsyncIterator[KernelPool]:
    """A pool of fake kernels, closed (and checked to leave no kernel) on exit."""
    pool = KernelPool(SEEDS, limits, factory, label="api.ipynb")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            if started:
                await tg.start(pool.run)
            else:
                tg.start_soon(pool.run)
            yield pool
            await pool.close()
    assert factory.left_behind() == []


class Outcomes:
    """Requests run in the background, and what each one got."""

    def __init__(self, pool: KernelPool, tg: anyio.abc.TaskGroup) -> None:
        self.pool, self.tg = pool, tg
        self.results: dict[str, CellOutcome | BaseException] = {}

    def start(self, name: str, *, timeout: float | None = None) -> None:
        async def run() -> None:
            try:
                self.results[name] = await execute(self.pool, call(f"GET /{name}"), timeout=timeout)
            except (Unavailable, ExecutionTimeout) as exc:
                self.results[name] = exc

        self.tg.start_soon(run)

    async def result(self, name: str) -> CellOutcome | BaseException:
        await eventually(lambda: name in self.results)
        return self.results[name]


def state(pool: KernelPool, slot: int = 0) -> str:
    return pool.stats().kernels[slot].state


def kernel_of(factory: FakeFactory, index: int = -1) -> FakeKernel:
    return factory.kernels[index]


# -- hand-over and give-up ---------------------------------------------------------------------


async def test_freed_kernel_gets_the_next_call_sent_in_the_same_step() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        requests.start("b")
        kernel = kernel_of(factory)
        await eventually(lambda: len(kernel.calls) == 1 and pool.stats().queue_depth == 1)
        a_still_running: list[bool] = []
        kernel.on_begin = lambda _: a_still_running.append("a" not in requests.results)
        kernel.answer("a\n")
        await eventually(lambda: len(kernel.calls) == 2)
        # b's call went out from a's own step (its hand-over), before b's task ran at all.
        assert a_still_running == [True]
        kernel.answer("b\n")
        assert isinstance(await requests.result("b"), CellOutcome)
    assert pool.stats().requests_served == 2


async def test_waiter_cancelled_in_the_instant_of_its_hand_over_interrupts_the_kernel() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        kernel = kernel_of(factory)
        await eventually(lambda: len(kernel.calls) == 1)
        scopes: list[anyio.CancelScope] = []

        async def queued() -> None:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await execute(pool, call("GET /b"))

        tg.start_soon(queued)
        await eventually(lambda: pool.stats().queue_depth == 1)
        # The client goes away in the very step that hands it the kernel.
        kernel.on_begin = lambda c: scopes[0].cancel() if c.route == "GET /b" else None
        kernel.answer("a\n")
        await eventually(lambda: kernel.interrupts == 1 and state(pool) == "idle")
        requests.start("c")
        await eventually(lambda: len(kernel.calls) == 3)
        kernel.answer("c\n")
        assert isinstance(await requests.result("c"), CellOutcome)
    assert pool.stats().endings["abandoned"] == 1


async def test_client_gone_while_queued_is_counted_as_disconnected_not_rejected() -> None:
    factory = FakeFactory()
    gone = anyio.Event()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        kernel = kernel_of(factory)
        failure: list[Unavailable] = []

        async def queued() -> None:
            with pytest.raises(Unavailable) as caught:
                await execute(pool, call("GET /b"), disconnected=gone.wait)
            failure.append(caught.value)

        tg.start_soon(queued)
        await eventually(lambda: pool.stats().queue_depth == 1)
        gone.set()
        await eventually(lambda: bool(failure))
        kernel.answer()
    stats = pool.stats()
    assert (stats.disconnected, stats.rejected) == (1, 0)
    assert [c.call.route for c in kernel.calls] == ["GET /a"]  # b's cell never ran


async def test_a_failing_disconnect_watch_surfaces_at_once_and_leaves_the_queue() -> None:
    """The watch's error ends the queued request now; with a queue timeout of an hour, the
    request could otherwise only end when the kernel frees."""
    factory = FakeFactory()
    limits = replace(FAST, queue_timeout=3600)
    async with running(factory, limits) as pool, anyio.create_task_group() as tg:
        Outcomes(pool, tg).start("a")
        kernel = kernel_of(factory)
        failure: list[BaseException] = []

        async def broken() -> None:
            raise RuntimeError("the receive channel broke")

        async def queued() -> None:
            with pytest.raises(RuntimeError) as caught:
                await execute(pool, call("GET /b"), disconnected=broken)
            failure.append(caught.value)

        tg.start_soon(queued)
        await eventually(lambda: bool(failure))
        assert pool.stats().queue_depth == 0
        kernel.answer()
    assert [c.call.route for c in kernel.calls] == ["GET /a"]


async def test_client_leaving_in_the_step_that_hands_it_a_kernel_is_served_once() -> None:
    """The disconnect and the hand-over race: the hand-over wins (its call is already sent),
    so the request runs and ends once, as served, and the kernel is free again after it."""
    factory = FakeFactory()
    gone = anyio.Event()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        kernel = kernel_of(factory)
        await eventually(lambda: len(kernel.calls) == 1)
        outcomes: list[CellOutcome] = []

        async def queued() -> None:
            outcomes.append(await execute(pool, call("GET /b"), disconnected=gone.wait))

        tg.start_soon(queued)
        await eventually(lambda: pool.stats().queue_depth == 1)
        kernel.on_begin = lambda c: gone.set() if c.route == "GET /b" else None
        kernel.answer("a\n")
        await eventually(lambda: len(kernel.calls) == 2)
        kernel.answer("b\n")
        await eventually(lambda: bool(outcomes))
        assert outcomes[0].cell.stdout == "b\n"
        await eventually(lambda: state(pool) == "idle")
    stats = pool.stats()
    assert (stats.requests_served, stats.disconnected, stats.interrupts) == (2, 0, 0)
    assert sum(stats.endings.values()) == 2


async def test_request_cancelled_while_queued_leaves_the_queue_and_never_runs() -> None:
    """Cancelled while it waits (the server stopping under it): its own ending, neither a
    rejection nor a disconnect, and the kernel goes on to the next request in line."""
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        kernel = kernel_of(factory)
        await eventually(lambda: len(kernel.calls) == 1)
        waiting = anyio.CancelScope()

        async def queued() -> None:
            with waiting:
                await execute(pool, call("GET /b"))

        tg.start_soon(queued)
        requests.start("c")
        await eventually(lambda: pool.stats().queue_depth == 2)
        waiting.cancel()
        await eventually(lambda: pool.stats().queue_depth == 1)
        kernel.answer()
        await eventually(lambda: len(kernel.calls) == 2)
        kernel.answer()
        assert isinstance(await requests.result("c"), CellOutcome)
    stats = pool.stats()
    assert [c.call.route for c in kernel.calls] == ["GET /a", "GET /c"]  # b's cell never ran
    assert stats.endings["cancelled"] == 1
    assert (stats.disconnected, stats.rejected, stats.requests_served) == (0, 0, 2)


async def test_request_cancelled_mid_cell_interrupts_its_kernel_which_serves_again() -> None:
    """Cancelled while its cell runs (a streaming client gone, the server stopping): the
    kernel is interrupted before anyone else gets it, and then serves the next request."""
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        kernel = kernel_of(factory)
        running_call = anyio.CancelScope()

        async def cancelled() -> None:
            with running_call:
                await execute(pool, call("GET /a"))

        tg.start_soon(cancelled)
        await eventually(lambda: len(kernel.calls) == 1)
        requests = Outcomes(pool, tg)
        requests.start("b")
        await eventually(lambda: pool.stats().queue_depth == 1)
        running_call.cancel()
        await eventually(lambda: kernel.interrupts == 1 and len(kernel.calls) == 2)
        kernel.answer("b\n")
        outcome = await requests.result("b")
        assert isinstance(outcome, CellOutcome) and outcome.cell.stdout == "b\n"
    stats = pool.stats()
    assert stats.endings["abandoned"] == 1 and stats.requests_served == 1
    assert stats.interrupts == 1


async def test_queue_timeout_names_the_notebook_and_route_and_counts_a_rejection() -> None:
    factory = FakeFactory()
    limits = PoolLimits(**{**FAST.__dict__, "queue_timeout": 0.01})
    async with running(factory, limits) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        await eventually(lambda: len(kernel_of(factory).calls) == 1)
        requests.start("b")
        error = await requests.result("b")
        assert isinstance(error, Unavailable)
        assert str(error).startswith("api.ipynb GET /b: no kernel became free")
        kernel_of(factory).answer()
    assert pool.stats().endings["queue_timeout"] == 1


async def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    factory = FakeFactory()
    limits = PoolLimits(**{**FAST.__dict__, "max_queue": 1})
    async with running(factory, limits) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        requests.start("b")
        await eventually(lambda: pool.stats().queue_depth == 1)
        with pytest.raises(Unavailable, match=r"^api.ipynb GET /x: all kernels are busy") as info:
            async with pool.lease(call()):
                pass
        assert info.value.retry_after == 1
        kernel_of(factory).answer()
        await eventually(lambda: len(kernel_of(factory).calls) == 2)
        kernel_of(factory).answer()


# -- timeouts, interrupts and lost kernels -----------------------------------------------------


async def test_timeout_answers_at_once_and_the_interrupted_kernel_serves_again() -> None:
    factory = FakeFactory()
    interrupt_held = anyio.Event()
    factory.prepare = lambda k: setattr(k, "interrupt_gate", interrupt_held)
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("slow", timeout=0.01)
        # The 504 does not wait for the interrupt, which is still held open here.
        error = await requests.result("slow")
        assert isinstance(error, ExecutionTimeout)
        assert str(error).startswith("api.ipynb GET /slow: the cell ran longer than 0.01 s")
        kernel = kernel_of(factory)
        assert state(pool) == "interrupting"
        interrupt_held.set()
        await eventually(lambda: kernel.interrupts == 1 and state(pool) == "idle")
        requests.start("next")
        await eventually(lambda: len(kernel.calls) == 2)
        kernel.answer()
        assert isinstance(await requests.result("next"), CellOutcome)
    assert len(factory.kernels) == 1
    assert pool.stats().timeouts == 1


async def test_kernel_ignoring_the_interrupt_is_replaced_and_reseeded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "cellserve.pool")
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(k, "interrupt_answers", False)
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("stuck", timeout=0.01)
        assert isinstance(await requests.result("stuck"), ExecutionTimeout)
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")
        assert factory.kernels[0].shutdowns == 1
        assert factory.kernels[1].seeded
    assert pool.stats().kernels[0].restarts == 1
    # One line for the timeout, one for the replacement it led to.
    lines = [r.getMessage() for r in caplog.records if r.name == "cellserve.pool"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("504: api.ipynb GET /stuck: the cell ran longer than")
    kernel = factory.kernels[0]
    assert lines[1] == (
        f"api.ipynb: kernel {kernel.id} (pid None) did not answer within 1 s of an interrupt; "
        "restarting it"
    )


async def test_kernel_lost_during_an_interrupt_is_replaced_not_handed_out() -> None:
    factory = FakeFactory()
    gate = anyio.Event()
    factory.prepare = lambda k: setattr(k, "interrupt_gate", gate)
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("slow", timeout=0.01)
        assert isinstance(await requests.result("slow"), ExecutionTimeout)
        first = kernel_of(factory, 0)
        await eventually(lambda: first.interrupts == 1)
        requests.start("queued")
        await eventually(lambda: pool.stats().queue_depth == 1)
        first.die()  # while the interrupt is in flight
        gate.set()
        await eventually(lambda: len(factory.kernels) == 2 and len(factory.kernels[1].calls) == 1)
        factory.kernels[1].answer()
        assert isinstance(await requests.result("queued"), CellOutcome)
        assert len(first.calls) == 1  # the queued call never went to the dead kernel
    assert pool.stats().crashes == 1


async def test_kernel_killed_mid_request_answers_503_and_is_replaced() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        await eventually(lambda: len(kernel_of(factory).calls) == 1)
        kernel_of(factory).die()
        error = await requests.result("a")
        assert isinstance(error, Unavailable)
        assert (
            str(error)
            == "api.ipynb GET /a: the kernel running this request died; it is being restarted"
        )
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")
    assert pool.stats().endings["kernel_lost"] == 1


async def test_kernel_protocol_error_is_a_503_naming_the_route_and_the_kernel_is_replaced() -> None:
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(
        k, "finish_error", KernelError("the dispatcher lost the route's code twice")
    )
    async with running(factory) as pool:
        with pytest.raises(Unavailable) as caught:
            await execute(pool, call("GET /broken"))
        assert str(caught.value).startswith("api.ipynb GET /broken: the kernel running this")
        assert "dispatcher lost" in str(caught.value)
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")


async def test_unexpected_error_from_a_kernel_is_a_503_and_the_kernel_is_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(k, "finish_error", OSError("socket closed"))
    async with running(factory) as pool:
        with pytest.raises(Unavailable, match=r"^api.ipynb GET /x: .*failed unexpectedly"):
            await execute(pool, call())
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")
    assert any(r.exc_info and "socket closed" in str(r.exc_info[1]) for r in caplog.records)


async def test_a_failing_stdout_sink_is_the_callers_error_and_only_interrupts_the_kernel() -> None:
    factory = FakeFactory()

    async def client_gone(_: str) -> None:
        raise ConnectionResetError("client went away")

    async with running(factory) as pool:
        kernel = kernel_of(factory)

        async def answer_soon() -> None:
            await eventually(lambda: len(kernel.calls) == 1)
            kernel.answer("partial\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_soon)
            with pytest.raises(ConnectionResetError):
                async with pool.lease(call()) as lease:
                    await lease.run(on_stdout=client_gone)
        await eventually(lambda: kernel.interrupts == 1 and state(pool) == "idle")
        assert len(factory.kernels) == 1
    assert pool.stats().endings["abandoned"] == 1


async def test_idle_kernel_that_dies_is_noticed_and_replaced_before_the_next_request() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        kernel_of(factory).die()
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")
        requests = Outcomes(pool, tg)
        requests.start("a")
        await eventually(lambda: len(factory.kernels[1].calls) == 1)
        factory.kernels[1].answer()
        assert isinstance(await requests.result("a"), CellOutcome)
    assert pool.stats().crashes == 1


async def test_kernel_exiting_after_its_request_never_gets_the_next_one() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("exit")
        requests.start("next")
        first = kernel_of(factory, 0)
        await eventually(lambda: len(first.calls) == 1 and pool.stats().queue_depth == 1)
        first.answer("bye\n", exiting=True)  # e.g. the cell called exit()
        assert isinstance(await requests.result("exit"), CellOutcome)
        await eventually(lambda: len(factory.kernels) == 2 and len(factory.kernels[1].calls) == 1)
        factory.kernels[1].answer()
        assert isinstance(await requests.result("next"), CellOutcome)
        assert len(first.calls) == 1


# -- starting, seeding, failing ----------------------------------------------------------------


async def test_seed_progress_is_in_the_stats_while_seeding() -> None:
    factory = FakeFactory()
    gate = anyio.Event()
    factory.prepare = lambda k: setattr(k, "seed_gate", gate)
    async with running(factory, started=False) as pool:
        await eventually(lambda: state(pool) == "seeding")
        kernel = pool.stats().kernels[0]
        assert (kernel.seed_cell, kernel.seed_cells) == (1, 2)
        assert kernel.kernel_id == factory.kernels[0].id
        assert kernel.state_seconds >= 0
        gate.set()
        await eventually(lambda: state(pool) == "idle")
        assert pool.stats().kernels[0].seed_cell is None


async def test_closing_while_starting_leaves_no_kernel() -> None:
    factory = FakeFactory()
    factory.plan = [held(anyio.Event())]  # the first start never finishes
    limits = PoolLimits(**{**FAST.__dict__, "size": 2})
    async with running(factory, limits) as pool:
        assert state(pool, 0) in ("starting", "idle")
    assert {state(pool, 0), state(pool, 1)} == {"stopped"}


async def test_closing_while_seeding_shuts_the_half_seeded_kernel_down() -> None:
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(k, "seed_gate", anyio.Event())
    async with running(factory, started=False) as pool:
        await eventually(lambda: state(pool) == "seeding")
    assert factory.kernels[0].shutdowns == 1


async def test_seed_error_on_first_start_fails_the_pool_at_once() -> None:
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(k, "seed_error", seed_error(2))
    pool = KernelPool(SEEDS, FAST, factory, label="api.ipynb")
    with anyio.fail_after(10), pytest.raises(SeedError, match="seed cell 2"):
        await pool.run()
    assert len(factory.kernels) == 1
    assert factory.left_behind() == []


async def test_factory_that_raises_is_retried_then_the_slot_gives_up_and_queued_get_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = FakeFactory()
    limits = PoolLimits(**{**FAST.__dict__, "size": 2})
    async with running(factory, limits) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        # Slot 1 is fine; kill it and make every later start fail.
        await eventually(lambda: len(factory.kernels) == 2)
        factory.plan = [raising(KernelError("no ports left")) for _ in range(3)]
        factory.plan += [raising(RuntimeError("provisioner bug")) for _ in range(3)]
        for kernel in list(factory.kernels):
            kernel.die()
        await eventually(lambda: {state(pool, 0), state(pool, 1)} == {"failed"})
        requests.start("late")
        error = await requests.result("late")
        assert isinstance(error, Unavailable)
        assert error.retry_after == 30
        assert "every kernel failed to start" in str(error)
    assert not pool.stats().can_serve
    assert any(r.exc_info and "provisioner bug" in str(r.exc_info[1]) for r in caplog.records)


async def test_unexpected_error_in_a_slot_task_is_logged_and_the_slot_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = FakeFactory()
    factory.prepare = lambda k: setattr(k, "interrupt_error", RuntimeError("boom in slot"))
    caplog.set_level(logging.ERROR, "cellserve.pool")
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("slow", timeout=0.01)
        assert isinstance(await requests.result("slow"), ExecutionTimeout)
        await eventually(lambda: len(factory.kernels) == 2 and state(pool) == "idle")
        assert factory.kernels[0].shutdowns == 1
        requests.start("after")
        await eventually(lambda: len(factory.kernels[1].calls) == 1)
        factory.kernels[1].answer()
        assert isinstance(await requests.result("after"), CellOutcome)
    (record,) = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert record.exc_info is not None and "boom in slot" in str(record.exc_info[1])


# -- closing -----------------------------------------------------------------------------------


async def test_close_finishes_running_and_queued_requests_within_the_grace() -> None:
    factory = FakeFactory()
    async with running(factory) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("a")
        requests.start("b")
        kernel = kernel_of(factory)
        await eventually(lambda: pool.stats().queue_depth == 1)
        tg.start_soon(pool.close)
        await eventually(lambda: pool.closing)
        with pytest.raises(Unavailable, match="shutting down"):
            await execute(pool, call())
        kernel.answer()
        await eventually(lambda: len(kernel.calls) == 2)
        kernel.answer()
        assert isinstance(await requests.result("a"), CellOutcome)
        assert isinstance(await requests.result("b"), CellOutcome)


async def test_close_after_the_grace_refuses_the_queue_and_stops_the_busy_kernel() -> None:
    factory = FakeFactory()
    limits = PoolLimits(**{**FAST.__dict__, "shutdown_grace": 0.01})
    async with running(factory, limits) as pool, anyio.create_task_group() as tg:
        requests = Outcomes(pool, tg)
        requests.start("stuck")
        requests.start("queued")
        await eventually(lambda: pool.stats().queue_depth == 1)
        await pool.close()
        running_error, queued_error = (
            await requests.result("stuck"),
            await requests.result("queued"),
        )
        assert isinstance(running_error, Unavailable)
        assert isinstance(queued_error, Unavailable)
        assert "shutting down" in str(queued_error)
        # Its kernel was stopped with the pool: not "being restarted", which it is not.
        assert str(running_error) == (
            "api.ipynb GET /stuck: the kernel running this request died; "
            "the server is shutting down"
        )
    assert kernel_of(factory).shutdowns == 1
