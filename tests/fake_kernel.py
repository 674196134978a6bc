"""A scripted ``KernelHandle`` and factory, so the pool's races run in milliseconds.

Each call a fake kernel receives waits until the test answers it (``answer``), the kernel
dies (``die``) or its timeout passes; seeding, interrupts and starts can be held at a gate
the same way. Nothing here sleeps: tests wait for *conditions* with ``eventually``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count

import anyio

from cellserve.cells import CellCall, CellOutcome, CellOutput, PendingCall, StdoutSink
from cellserve.exceptions import KernelDied, KernelError, SeedError
from cellserve.notebook import SeedCell

_ids = count(1)


@dataclass(eq=False)
class FakeCall:
    call: CellCall
    answered: anyio.Event = field(default_factory=anyio.Event)
    outcome: CellOutcome | None = None


class FakeKernel:
    """One fake kernel: records what it was asked and answers when the test says so."""

    def __init__(self) -> None:
        self.id = f"fake{next(_ids)}"
        self.pid: int | None = None
        self.alive = True
        self.calls: list[FakeCall] = []
        self.interrupts = 0
        self.shutdowns = 0
        self.seeded = False
        self.seed_gate: anyio.Event | None = None
        self.seed_error: BaseException | None = None
        self.interrupt_gate: anyio.Event | None = None
        self.interrupt_answers = True
        self.interrupt_error: BaseException | None = None
        self.on_begin: Callable[[CellCall], None] | None = None
        self.finish_error: BaseException | None = None
        self._died = anyio.Event()

    def __repr__(self) -> str:
        return f"<FakeKernel {self.id}>"

    # -- what the test does ---------------------------------------------------------------

    def answer(self, stdout: str = "ok\n", *, exiting: bool = False) -> None:
        """Answer the oldest unanswered call."""
        pending = next(c for c in self.calls if c.outcome is None)
        pending.outcome = CellOutcome(CellOutput(stdout=stdout), kernel_exiting=exiting)
        pending.answered.set()

    def die(self) -> None:
        """The process exits (kill -9)."""
        self.alive = False
        self._died.set()

    @property
    def running(self) -> list[CellCall]:
        return [c.call for c in self.calls if c.outcome is None]

    # -- KernelHandle ---------------------------------------------------------------------

    async def seed(
        self, seeds: Sequence[SeedCell], on_cell: Callable[[int, int], None] | None = None
    ) -> None:
        for index, _ in enumerate(seeds, 1):
            if on_cell is not None:
                on_cell(index, len(seeds))
            if self.seed_gate is not None:
                await self.seed_gate.wait()
            if self.seed_error is not None:
                raise self.seed_error
        self.seeded = True

    def can_pipeline(self, call: CellCall) -> bool:
        return False  # one call at a time, as the race tests expect

    @property
    def calls_held(self) -> int:
        return len(self.running)

    def begin(self, call: CellCall) -> PendingCall:
        if not self.alive:
            raise KernelError(f"cannot send to kernel {self.id}")
        if call.seal is not None:  # a batch is closed when a kernel takes it, as Kernel does
            call = call.seal()
        self.calls.append(FakeCall(call))
        if self.on_begin is not None:
            self.on_begin(call)
        return PendingCall(call, str(len(self.calls) - 1), "sent")

    async def finish(
        self, pending: PendingCall, *, timeout: float | None, on_stdout: StdoutSink | None = None
    ) -> CellOutcome:
        fake = self.calls[int(pending.key)]
        if self.finish_error is not None:
            raise self.finish_error
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:

                async def on_death() -> None:
                    await self._died.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(on_death)
                await fake.answered.wait()
                tg.cancel_scope.cancel()
        if fake.outcome is None:
            raise KernelDied(f"kernel {self.id} exited")
        if on_stdout is not None:
            await on_stdout(fake.outcome.cell.stdout)
        return fake.outcome

    async def interrupt(self, grace: float) -> bool:
        self.interrupts += 1
        if self.interrupt_error is not None:
            raise self.interrupt_error
        if self.interrupt_gate is not None:
            await self.interrupt_gate.wait()
        for fake in self.calls:
            if fake.outcome is None:  # the interrupted cell ends
                fake.outcome = CellOutcome(CellOutput())
                fake.answered.set()
        return self.alive and self.interrupt_answers

    async def is_alive(self) -> bool:
        return self.alive

    async def shutdown(self) -> None:
        self.shutdowns += 1
        self.die()


class FakeFactory:
    """Starts fake kernels; `plan` says what each start does (default: succeed at once)."""

    def __init__(self) -> None:
        self.kernels: list[FakeKernel] = []
        self.plan: list[Callable[[], Awaitable[None]]] = []
        self.prepare: Callable[[FakeKernel], None] | None = None

    async def __call__(self) -> FakeKernel:
        if self.plan:
            await self.plan.pop(0)()
        kernel = FakeKernel()
        if self.prepare is not None:
            self.prepare(kernel)
        self.kernels.append(kernel)
        return kernel

    @property
    def live(self) -> list[FakeKernel]:
        return [k for k in self.kernels if k.alive]

    def left_behind(self) -> list[FakeKernel]:
        """Kernels started and never shut down."""
        return [k for k in self.kernels if not k.shutdowns]


def raising(error: BaseException) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        raise error

    return start


def held(gate: anyio.Event) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        await gate.wait()

    return start


def seed_error(cell: int = 1) -> SeedError:
    return SeedError(f"seed cell {cell} raised ValueError: bad", cell_index=cell, traceback="")


async def eventually(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Until `condition()` holds (checked at every turn of the event loop)."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)
