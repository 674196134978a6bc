"""Batched routes: one run of a route's cell answers every request that queued for it.

A model's ``predict()`` costs about the same for one row as for sixty-four, so a route that
serves a model can opt in to batching under its annotation::

    # POST /predict
    # cellserve: batch max_size=64 max_wait_ms=2

**In the notebook's terms.** The cell sees ``REQUESTS``, a JSON string holding a list of
requests, each shaped like ``REQUEST``, and prints one JSON array with one answer per request,
in the same order:

* a JSON value answers its request with status 200 and the value as a JSON body
  (``application/json``); a string is sent as it is (``text/plain``);
* ``{"$response": {"status": 404, "headers": {"X-Reason": "..."}, "body": ...}}`` gives its
  request its own status and headers (``body`` as above; headers as in ResponseInfo, which a
  batched route cannot have).

If the cell raises, every request of the batch gets the error (500, as for one request). If
it prints anything but an array with one answer per request, every request gets a 500 JSON
error naming the route. The client sees an ordinary route: OpenAPI, validation and auth are
unchanged, and each request still gets its own access-log line.

**How a batch forms.** Requests of one route (same pool, same code) join the route's *open
batch*. The first request of a batch asks the pool for a kernel as any request does, and the
batch is sealed when a kernel takes it (``Kernel.begin`` calls ``CellCall.seal``): a free
kernel runs what is queued now, so at low load a request runs alone, without added latency.
A batch is never pipelined into a busy kernel: it waits for a free one, gathering requests.
Later requests open the next batch. A batch holds at most ``max_size`` requests; with
``max_wait_ms`` its first request waits up to that long for it to fill before asking for a
kernel. The pool sees one call per batch: timeouts (504), crashes (503) and queue refusals
(503) answer every request of the batch, and the pool's counters (timeouts, interrupts,
crashes, rejections) count batches. The ``cellserve_batch_size`` histogram counts every batch
a kernel took (also one that timed out or crashed) and the requests it held; each request
still counts in ``cellserve_requests_total`` and leaves its access line. A cell that raises,
prints a wrong answer or prints more than ``--max-response-size`` (which bounds the whole
batch's output) leaves one ERROR per batch naming the route; so do answers that cannot be
sent (a bad ``$response``: 500 for their requests only), naming their indexes. These lines
never quote what the cell printed: it may hold request data.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.responses import Response

from cellserve import metrics
from cellserve.cells import CellCall, CellOutcome
from cellserve.exceptions import RequestFailed, Unavailable
from cellserve.logs import current_request, log_cell_error
from cellserve.notebook import Endpoint
from cellserve.pool import KernelPool
from cellserve.response import (
    TOO_LARGE_REMEDY,
    Unusable,
    apply_headers,
    build_response,
    error_response,
    status_and_headers,
    too_large_response,
)
from cellserve.service import Generation

logger = logging.getLogger("cellserve.batching")

REQUESTS = "REQUESTS"
RESPONSE_KEY = "$response"


def split_answers(outcome: CellOutcome, count: int, *, notebook: str, label: str) -> list[Response]:
    """One response per request of a batch of `count` from the cell's `outcome`.

    The clients see only their 500s; the operator gets one ERROR per batch that quotes
    nothing the cell printed (it may hold request data).
    """
    cell = outcome.cell
    if cell.error is not None:  # logged by the batcher, with its traceback
        shared = build_response(outcome, None, notebook=notebook, label=label)
        return [shared] * count
    if cell.truncated:
        logger.error(
            "%s %s: the output of a batch of %d passed the response size limit and every "
            "request of the batch was answered 500; %s, or lower the batch's max_size",
            notebook,
            label,
            count,
            TOO_LARGE_REMEDY,
        )
        return [too_large_response(notebook, label)] * count
    try:
        answers = json.loads(cell.stdout)
    except json.JSONDecodeError:
        answers = None
    if not isinstance(answers, list):
        shown = cell.stdout.strip()[:80]
        rule = (
            f"{label} is batched: its cell must print one JSON array with an answer for each "
            "request, and printed"
        )
        message = f"{rule} {shown or 'nothing'!r}"
        logged = f"{rule} {'something else' if shown else 'nothing'}"
    elif len(answers) != count:
        message = logged = (
            f"{label} is batched: its cell answered a batch of {count} request(s) with "
            f"{len(answers)} answer(s); every request of the batch gets this error"
        )
    else:
        return _item_responses(answers, notebook=notebook, label=label)
    logger.error("%s %s", notebook, logged)
    return [error_response(500, message)] * count


def _item_responses(answers: list[Any], *, notebook: str, label: str) -> list[Response]:
    """Each answer's response; answers that cannot be sent fail only their own request."""
    responses: list[Response] = []
    unusable: list[tuple[int, Unusable]] = []
    for index, answer in enumerate(answers):
        item = _item_response(answer)
        if isinstance(item, Unusable):
            unusable.append((index, item))
            item = error_response(500, f"{label}: {item.message}")
        responses.append(item)
    if unusable:  # one line per batch, however many answers were bad
        index, first = unusable[0]
        size = len(answers)
        if len(unusable) == 1:
            what = (
                f"the answer at index {index} of a batch of {size} cannot be sent "
                f"({first.rule}), so its request was answered 500"
            )
        else:
            indexes = ", ".join(str(bad) for bad, _ in unusable)
            what = (
                f"the answers at indexes {indexes} of a batch of {size} cannot be sent "
                f"(index {index}: {first.rule}), so their requests were answered 500"
            )
        logger.error("%s %s: %s; fix what the cell prints", notebook, label, what)
    return responses


def _item_response(answer: Any) -> Response | Unusable:
    status, extra = 200, list[tuple[str, str]]()
    if isinstance(answer, dict) and set(answer) == {RESPONSE_KEY}:
        wrapped = answer[RESPONSE_KEY]
        if not isinstance(wrapped, Mapping):
            rule = f"`{RESPONSE_KEY}` must be a JSON object"
            return Unusable(rule, rule)
        parsed = status_and_headers(wrapped)
        if isinstance(parsed, Unusable):
            return Unusable(
                f"`{RESPONSE_KEY}`: {parsed.message}", f"`{RESPONSE_KEY}`: {parsed.rule}"
            )
        status, extra = parsed
        answer = wrapped.get("body")
    if isinstance(answer, str):
        body, content_type = answer.encode("utf-8"), "text/plain; charset=utf-8"
    else:
        body, content_type = json.dumps(answer).encode("utf-8"), "application/json"
    response = Response(b"" if status in (204, 304) else body, status, media_type=content_type)
    apply_headers(response.headers, extra)
    return response


@dataclass(eq=False)
class _Batch:
    """Requests answered by one run of the cell; sealed once a kernel takes it."""

    requests: list[str] = field(default_factory=list)
    sealed: bool = False
    full: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    responses: Sequence[Response] = ()
    failure: RequestFailed | None = None
    kernel: str | None = None


class Batcher:
    """The open batch of one route on one pool. Get it with ``batcher_for``."""

    def __init__(
        self, pool: KernelPool, notebook: str, endpoint: Endpoint, max_size: int, max_wait: float
    ) -> None:
        self.pool = pool
        self.notebook = notebook
        self.endpoint = endpoint
        self.max_size = max_size
        self.max_wait = max_wait
        self._open: _Batch | None = None

    @property
    def waiting(self) -> int:
        """Requests in the open batch: not yet taken by a kernel."""
        return len(self._open.requests) if self._open is not None else 0

    async def answer(self, request_json: str, timeout: float | None) -> Response:
        """This request's response; raises Unavailable or ExecutionTimeout for the batch."""
        batch = self._open
        leads = batch is None
        if batch is None:
            batch = self._open = _Batch()
        index = len(batch.requests)
        batch.requests.append(request_json)
        if len(batch.requests) >= self.max_size:
            batch.full.set()
            self._open = None  # the next request opens the next batch
        if leads:
            await self._run(batch, timeout)
        else:
            await batch.done.wait()
            context = current_request()
            if context is not None:
                context.kernel = batch.kernel
        if batch.failure is not None:
            raise batch.failure
        return batch.responses[index]

    def _seal(self, batch: _Batch) -> CellCall:
        batch.sealed = True
        if self._open is batch:
            self._open = None
        requests = "[" + ",".join(batch.requests) + "]"
        return CellCall(
            self.endpoint.source, requests, route=self.endpoint.label, variable=REQUESTS
        )

    async def _run(self, batch: _Batch, timeout: float | None) -> None:
        """Lead `batch`: wait for it to fill if asked, run it, hand every request its answer.

        The leader does not watch its client: once others joined, the batch serves them too.
        """
        label = self.endpoint.label
        call = CellCall(
            self.endpoint.source,
            "",
            route=label,
            variable=REQUESTS,
            seal=lambda: self._seal(batch),
        )
        try:
            if self.max_wait > 0:
                with anyio.move_on_after(self.max_wait):
                    await batch.full.wait()
            async with self.pool.lease(call) as lease:
                outcome = await lease.run(timeout=timeout)
        except RequestFailed as exc:
            batch.failure = exc
        except BaseException:
            batch.failure = Unavailable(f"{self.notebook} {label}: the batch did not run")
            raise
        else:
            size = len(batch.requests)
            batch.responses = split_answers(outcome, size, notebook=self.notebook, label=label)
            if outcome.cell.error is not None:
                log_cell_error(self.pool.label, f"{label} (batch of {size})", outcome.cell.error)
        finally:
            if batch.sealed:  # a kernel took it, whether it answered, timed out or crashed
                context = current_request()  # the pool named the kernel in the leader's context
                batch.kernel = context.kernel if context is not None else None
                size = len(batch.requests)
                metrics.BATCH_SIZE.labels(self.pool.label, label).observe(size)
                logger.debug("%s: a batch of %d on kernel %s", label, size, batch.kernel)
            else:
                self._seal(batch)  # failed before a kernel took it: nobody may join any more
            batch.done.set()


_batchers: weakref.WeakKeyDictionary[KernelPool, dict[tuple[str, str], Batcher]] = (
    weakref.WeakKeyDictionary()
)


def batcher_for(generation: Generation, endpoint: Endpoint) -> Batcher:
    """The batcher of `endpoint`'s route on `generation`'s pool; a route's requests join only
    requests that run the same code (a reload may keep the pool and change the code)."""
    options = endpoint.options.batch
    assert options is not None, "only batched routes have a batcher"
    pool = generation.pool
    routes = _batchers.setdefault(pool, {})
    key = (endpoint.label, endpoint.source)
    batcher = routes.get(key)
    if batcher is None:
        batcher = Batcher(pool, generation.api.name, endpoint, options.max_size, options.max_wait)
        routes[key] = batcher
    return batcher
