"""Jobs: a long cell answered at once with ``202 Accepted`` and a URL to poll.

A route opts in with a directive under its annotation (a job still has a timeout: give it
one that fits)::

    # POST /train
    # cellserve: job, timeout=3600

The request is checked like any other (404, 405, 413, 400 and 422 come at once); then the
answer is ``202`` with ``Location: <base>/_cellserve/jobs/<id>`` while the cell runs in the
background, queued for a kernel like any request:

* ``GET .../jobs/<id>``: the state (``queued`` for a kernel, ``running``, ``done``,
  ``cancelled``), stdout so far, and once done the result: the status, headers and body the
  route would have answered;
* ``GET .../jobs/<id>/result``: that response itself (``202`` and the state until done);
* ``DELETE .../jobs/<id>``: cancel a running job (its kernel is interrupted, or it leaves
  the queue), or forget a finished one.

The table belongs to one notebook's app, not to a generation, so reloads leave jobs alone;
a job keeps the pool it started on open, like any request. Finished jobs are forgotten
after ``job_ttl`` seconds; at most ``max_jobs`` are kept: when full, the oldest finished job
makes room, and if none has finished the new job gets ``503``.
"""

from __future__ import annotations

import base64
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cellserve.exceptions import Unavailable
from cellserve.request import fold_headers
from cellserve.response import error_response
from cellserve.routing import ADMIN_PREFIX

logger = logging.getLogger("cellserve.jobs")

JOBS_PATH = f"{ADMIN_PREFIX}/jobs"
_CANCEL_WAIT = 60.0
"""Seconds DELETE waits for a cancelled job's kernel to be interrupted (the pool bounds it)."""


class JobState(StrEnum):
    QUEUED = "queued"  # waiting for a free kernel
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobState.DONE, JobState.CANCELLED)


@dataclass(frozen=True)
class StoredResponse:
    """An HTTP response kept for later: what a job's route answered."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def of(cls, response: Response) -> StoredResponse:
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers)
        return cls(response.status_code, headers, bytes(response.body))

    def replay(self) -> Response:
        response = Response(self.body, self.status)
        response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        return response

    def as_json(self) -> dict[str, Any]:
        """Headers as an object (a repeated header gives a list); the body as text, or as
        base64 with ``body_encoding`` when it is not UTF-8 (as ``REQUEST`` carries bodies)."""
        headers = fold_headers((n, v) for n, v in self.headers if n != "content-length")
        try:
            return {"status": self.status, "headers": headers, "body": self.body.decode("utf-8")}
        except UnicodeDecodeError:
            body = base64.b64encode(self.body).decode("ascii")
            return {
                "status": self.status,
                "headers": headers,
                "body": body,
                "body_encoding": "base64",
            }


@dataclass(eq=False)
class Job:
    """One job; its fields change only on the event loop, by the table and its task."""

    id: str
    route: str
    created: float
    state: JobState = JobState.QUEUED
    started: float | None = None
    finished: float | None = None
    progress: list[str] = field(default_factory=list)
    result: StoredResponse | None = None
    expires: float = math.inf  # time.monotonic() after which the job is forgotten
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ended: anyio.Event = field(default_factory=anyio.Event)

    def start(self) -> None:
        """A kernel has taken the job."""
        self.state = JobState.RUNNING
        self.started = time.time()

    async def add_progress(self, text: str) -> None:
        """A stdout sink: the cell's output so far, readable while it runs."""
        self.progress.append(text)

    def describe(self, location: str) -> dict[str, Any]:
        description: dict[str, Any] = {
            "id": self.id,
            "route": self.route,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "progress": "".join(self.progress),
            "location": location,
            "result_location": f"{location}/result",
        }
        if self.result is not None:
            description["result"] = self.result.as_json()
        return description


class TooManyJobs(Unavailable):
    """`max_jobs` jobs are running: answered with 503 and Retry-After."""


JobWork = Callable[[Job], Awaitable[Response]]
"""Runs a job's cell (feeding ``job.add_progress``) and gives the route's response."""

SubmitJob = Callable[[str, JobWork], Awaitable[Job]]
"""Starts a job for a route label: ``JobTable.submit`` with what the job must hold."""


class JobTable:
    """The jobs of one notebook. Run it with ``await task_group.start(table.run)``."""

    def __init__(self, *, ttl: float, max_jobs: int, label: str = "notebook") -> None:
        self.ttl = ttl
        self.max_jobs = max_jobs
        self.label = label
        self._jobs: dict[str, Job] = {}
        self._tg: TaskGroup | None = None
        self._closing = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own every job's task; on ``close``, cancel the jobs still running."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await self._closing.wait()
            self._tg = None
            tg.cancel_scope.cancel()

    def close(self) -> None:
        self._closing.set()

    async def submit(
        self, route: str, work: JobWork, hold: Callable[[], AbstractContextManager[None]]
    ) -> Job:
        """Start a job for `route`; `hold` keeps what it runs on (its pool) open meanwhile.

        Returns once the job holds it, so the request that submitted it may end.
        Raises Unavailable when the table is closed or full of running jobs.
        """
        if self._tg is None:
            raise Unavailable(
                f"{self.label} {route}: the server is not taking jobs now "
                "(starting or shutting down)"
            )
        self._forget_expired()
        if len(self._jobs) >= self.max_jobs:
            finished = [job for job in self._jobs.values() if job.state.ended]
            if not finished:
                raise TooManyJobs(
                    f"{self.label} {route}: {self.max_jobs} jobs are running; try again later", 5
                )
            oldest = min(finished, key=lambda job: job.finished or 0.0)
            del self._jobs[oldest.id]
        job = Job(uuid.uuid4().hex, route, time.time())
        self._jobs[job.id] = job
        await self._tg.start(self._run, job, work, hold)
        return job

    async def _run(
        self,
        job: Job,
        work: JobWork,
        hold: Callable[[], AbstractContextManager[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with hold():
                task_status.started()
                with job.scope:
                    try:
                        job.result = StoredResponse.of(await work(job))
                    except Exception:
                        # A job's failure is its own answer, never the server's.
                        logger.exception("%s: job %s (%s) failed", self.label, job.id, job.route)
                        job.result = StoredResponse.of(
                            error_response(500, f"{self.label} {job.route}: job {job.id} failed")
                        )
        finally:
            job.state = JobState.DONE if job.result is not None else JobState.CANCELLED
            job.finished = time.time()
            job.expires = time.monotonic() + self.ttl
            job.ended.set()

    def get(self, job_id: str) -> Job | None:
        self._forget_expired()
        return self._jobs.get(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a running job and wait until its kernel is free; forget a finished one."""
        job = self.get(job_id)
        if job is None:
            return None
        if not job.state.ended:
            job.scope.cancel()
            with anyio.move_on_after(_CANCEL_WAIT):
                await job.ended.wait()
        else:
            del self._jobs[job_id]
        return job

    def counts(self) -> dict[str, int]:
        self._forget_expired()
        return {
            state.value: sum(1 for job in self._jobs.values() if job.state is state)
            for state in JobState
        }

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for job_id in [job_id for job_id, job in self._jobs.items() if job.expires <= now]:
            del self._jobs[job_id]


def job_location(root_path: str, job: Job) -> str:
    """The job's URL path, as the client sees it."""
    return f"{root_path}{JOBS_PATH}/{job.id}"


def accepted_response(job: Job, root_path: str) -> Response:
    """The ``202 Accepted`` a job route answers at once."""
    location = job_location(root_path, job)
    return JSONResponse(job.describe(location), status_code=202, headers={"Location": location})


def job_routes(table: JobTable) -> list[BaseRoute]:
    """``/_cellserve/jobs/{job_id}`` (GET, DELETE) and ``.../{job_id}/result`` (GET)."""

    def find(request: Request) -> tuple[Job, str] | Response:
        job = table.get(request.path_params["job_id"])
        if job is None:
            return error_response(
                404, "no such job: it never existed, was deleted, or its result expired"
            )
        return job, job_location(request.scope.get("root_path", ""), job)

    async def status(request: Request) -> Response:
        found = find(request)
        if isinstance(found, Response):
            return found
        job, location = found
        if request.method == "DELETE":
            await table.cancel(job.id)
        return JSONResponse(job.describe(location))

    async def result(request: Request) -> Response:
        found = find(request)
        if isinstance(found, Response):
            return found
        job, location = found
        if job.result is not None:
            return job.result.replay()
        if job.state is JobState.CANCELLED:
            return error_response(409, f"job {job.id} was cancelled and has no result")
        return JSONResponse(job.describe(location), status_code=202, headers={"Retry-After": "1"})

    return [
        Route(JOBS_PATH + "/{job_id}", status, methods=["GET", "DELETE"]),
        Route(JOBS_PATH + "/{job_id}/result", result, methods=["GET"]),
    ]
