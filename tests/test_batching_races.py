"""How batches form, against the real pool with fake kernels: no clock, only conditions.

The pool sees one call per batch; ``Kernel.begin`` (here the fake's) seals the batch when a
kernel takes it, so a batch holds exactly the requests of its route queued at that moment.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from starlette.responses import Response

from cellserve.batching import Batcher
from cellserve.cells import CellCall
from cellserve.exceptions import ExecutionTimeout
from cellserve.notebook import Endpoint, PathTemplate, SeedCell
from cellserve.pool import KernelPool, PoolLimits
from tests.fake_kernel import FakeFactory, FakeKernel, eventually

pytestmark = pytest.mark.anyio

LIMITS = PoolLimits(size=1, queue_timeout=30, timeout=30, liveness_interval=0.005)


def endpoint(path: str) -> Endpoint:
    return Endpoint("POST", PathTemplate.parse(path), f"# POST {path}\n", (1,))


@asynccontextmanager
async def pool_of(factory: FakeFactory) -> AsyncIterator[KernelPool]:
    pool = KernelPool((SeedCell(1, "x = 1"),), LIMITS, factory, label="nb.ipynb")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            yield pool
            await pool.close()


class Requests:
    """Requests sent to batchers in the background, and the response each one got."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.responses: dict[str, Response | BaseException] = {}

    def send(self, batcher: Batcher, name: str, *, timeout: float | None = None) -> None:
        async def run() -> None:
            try:
                self.responses[name] = await batcher.answer(json.dumps({"n": name}), timeout)
            except ExecutionTimeout as exc:
                self.responses[name] = exc

        self.tg.start_soon(run)

    async def body(self, name: str) -> str:
        await eventually(lambda: name in self.responses)
        response = self.responses[name]
        assert isinstance(response, Response), response
        assert response.status_code == 200
        return bytes(response.body).decode()


def batch_of(call: CellCall) -> list[str]:
    """The request names a batch call carries in REQUESTS."""
    assert call.variable == "REQUESTS"
    return [request["n"] for request in json.loads(call.request_json)]


def answer_batch(kernel: FakeKernel) -> None:
    """Answer the oldest call as a batched cell would: one answer per request, in order."""
    running = kernel.running[0]
    kernel.answer(json.dumps([f"{name}!" for name in batch_of(running)]))


async def test_a_request_on_a_free_kernel_is_sent_at_once_alone() -> None:
    factory = FakeFactory()
    async with pool_of(factory) as pool, anyio.create_task_group() as tg:
        requests = Requests(tg)
        requests.send(Batcher(pool, "nb.ipynb", endpoint("/p"), 8, 0.0), "a")
        kernel = factory.kernels[0]
        await eventually(lambda: len(kernel.calls) == 1)
        assert batch_of(kernel.calls[0].call) == ["a"]
        answer_batch(kernel)
        assert await requests.body("a") == "a!"


async def test_requests_queued_behind_a_busy_kernel_go_in_one_batch_up_to_max_size() -> None:
    factory = FakeFactory()
    async with pool_of(factory) as pool, anyio.create_task_group() as tg:
        requests = Requests(tg)
        batcher = Batcher(pool, "nb.ipynb", endpoint("/p"), 3, 0.0)
        requests.send(batcher, "first")
        kernel = factory.kernels[0]
        await eventually(lambda: len(kernel.calls) == 1)
        for name in "abcde":
            requests.send(batcher, name)
        # "a" leads a batch waiting for the kernel; "b", "c" join it; "d" leads the next.
        await eventually(lambda: batcher.waiting == 2 and pool.stats().queue_depth == 2)
        assert len(kernel.calls) == 1  # nothing more is sent while the kernel is busy
        answer_batch(kernel)
        await eventually(lambda: len(kernel.calls) == 2)
        assert batch_of(kernel.calls[1].call) == ["a", "b", "c"]
        answer_batch(kernel)
        await eventually(lambda: len(kernel.calls) == 3)
        assert batch_of(kernel.calls[2].call) == ["d", "e"]
        answer_batch(kernel)
        for name in ("first", *"abcde"):
            assert await requests.body(name) == f"{name}!"
    assert pool.stats().requests_served == 3  # the pool counts batches


async def test_only_requests_of_the_same_route_join() -> None:
    factory = FakeFactory()
    async with pool_of(factory) as pool, anyio.create_task_group() as tg:
        requests = Requests(tg)
        one = Batcher(pool, "nb.ipynb", endpoint("/one"), 8, 0.0)
        two = Batcher(pool, "nb.ipynb", endpoint("/two"), 8, 0.0)
        requests.send(one, "busy")
        kernel = factory.kernels[0]
        await eventually(lambda: len(kernel.calls) == 1)
        for name, batcher in (("a", one), ("x", two), ("b", one), ("y", two)):
            requests.send(batcher, name)
        await eventually(lambda: one.waiting == 2 and two.waiting == 2)
        for _ in range(3):
            answer_batch(kernel)
            await eventually(lambda: bool(kernel.running) or len(kernel.calls) == 3)
        assert [batch_of(c.call) for c in kernel.calls[1:]] == [["a", "b"], ["x", "y"]]
        assert [c.call.source for c in kernel.calls[1:]] == ["# POST /one\n", "# POST /two\n"]


async def test_max_wait_holds_a_batch_until_it_is_full() -> None:
    factory = FakeFactory()
    async with pool_of(factory) as pool, anyio.create_task_group() as tg:
        requests = Requests(tg)
        batcher = Batcher(pool, "nb.ipynb", endpoint("/p"), 3, 60.0)
        requests.send(batcher, "a")
        requests.send(batcher, "b")
        await eventually(lambda: batcher.waiting == 2)
        kernel = factory.kernels[0]
        assert kernel.calls == []  # the kernel is free, but the batch waits for company
        requests.send(batcher, "c")
        await eventually(lambda: len(kernel.calls) == 1)
        assert batch_of(kernel.calls[0].call) == ["a", "b", "c"]
        answer_batch(kernel)
        assert await requests.body("c") == "c!"


async def test_a_timeout_answers_every_request_of_the_batch() -> None:
    factory = FakeFactory()
    async with pool_of(factory) as pool, anyio.create_task_group() as tg:
        requests = Requests(tg)
        batcher = Batcher(pool, "nb.ipynb", endpoint("/p"), 8, 0.0)
        requests.send(batcher, "busy")
        kernel = factory.kernels[0]
        await eventually(lambda: len(kernel.calls) == 1)
        requests.send(batcher, "a", timeout=0.01)
        requests.send(batcher, "b")
        await eventually(lambda: batcher.waiting == 2)
        answer_batch(kernel)  # "busy" done; the batch of a and b never answers
        await eventually(lambda: {"a", "b"} <= set(requests.responses))
        assert all(isinstance(requests.responses[n], ExecutionTimeout) for n in "ab")
        assert kernel.interrupts == 1  # one interrupt for the batch
