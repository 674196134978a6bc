"""One notebook request, served by one pinned generation.

route (404/405, no kernel) → compiled? (500) → body (413) → ``REQUEST`` (400)
      → declared contract (422) → pool (503/504) → response.

A job route (``# cellserve: job``) answers ``202`` after the contract step and runs the pool
step in the background, in a task of the notebook's job table (jobs.py).

Nothing before the pool takes a kernel: a route whose cell does not compile and a request
that breaks the route's declaration are answered without one.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from urllib.parse import unquote

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from cellserve.batching import batcher_for
from cellserve.cells import CellCall
from cellserve.dispatch_common import utf8_safe
from cellserve.exceptions import RequestFailed
from cellserve.jobs import Job, SubmitJob, accepted_response
from cellserve.logs import log_cell_error, note_queued, note_route
from cellserve.request import INLINE_BODY_LIMIT, BadRequest, RequestParts, build_request
from cellserve.response import build_response, error_response, failure_response
from cellserve.routing import MethodNotAllowed, RouteMatch, split_raw_path
from cellserve.service import Generation
from cellserve.settings import Settings
from cellserve.streaming import stream_cell
from cellserve.syntax import CellSyntaxError
from cellserve.validation import MAX_PROBLEMS, Problem, apply_contract


class _ClientGone(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


async def serve_notebook_request(
    generation: Generation,
    settings: Settings,
    submit_job: SubmitJob,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Answer one HTTP request for a notebook route of `generation`; job routes hand their
    cell to `submit_job`."""
    answer = await _respond(generation, settings, submit_job, scope, receive, send)
    if answer is not None:
        await answer(scope, receive, send)


async def _respond(
    generation: Generation,
    settings: Settings,
    submit_job: SubmitJob,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> Response | None:
    """The response to send, or None when it was streamed or the client left."""
    method = scope["method"]
    try:
        found = generation.routes.match(_route_segments(scope), method)
    except UnicodeDecodeError:
        return error_response(400, "the path is not valid UTF-8 once percent-decoded")
    if found is None:
        return error_response(404, f"no route for {scope['path']}")
    if isinstance(found, MethodNotAllowed):
        allow = ", ".join((*found.allowed, "OPTIONS"))
        if method == "OPTIONS":
            return Response(status_code=200, headers={"Allow": allow})
        return error_response(405, f"{scope['path']} does not accept {method}", {"Allow": allow})
    note_route(generation.pool.label, found.endpoint.label)
    return await _run_endpoint(generation, settings, submit_job, found, scope, receive, send)


async def _run_endpoint(
    generation: Generation,
    settings: Settings,
    submit_job: SubmitJob,
    found: RouteMatch,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> Response | None:
    endpoint = found.endpoint
    if endpoint.syntax_error is not None:
        return _syntax_error_response(endpoint.syntax_error)
    try:
        body = await _read_body(scope, receive, settings.max_body_size)
        request, request_json = await build_request(
            RequestParts(scope["headers"], scope["query_string"], body, found.params),
            token=settings.auth_token,
        )
    except _BodyTooLarge:
        return error_response(
            413, f"the request body is larger than {settings.max_body_size} bytes"
        )
    except BadRequest as exc:
        return error_response(400, str(exc))
    except _ClientGone:
        return None
    if endpoint.contract is not None and endpoint.contract.validates_requests:
        checked: list[Problem] | str
        if len(body) > INLINE_BODY_LIMIT:  # a large body is checked off the event loop
            checked = await anyio.to_thread.run_sync(
                apply_contract, endpoint.contract, request, request_json, body
            )
        else:
            checked = apply_contract(endpoint.contract, request, request_json, body)
        if isinstance(checked, list):
            return _problems_response(endpoint.label, checked)
        request_json = checked
    call = CellCall(
        endpoint.source,
        request_json,
        None if endpoint.options.stream else endpoint.response_info,
        endpoint.options.stream,
        endpoint.label,
    )
    timeout = endpoint.options.timeout or settings.timeout
    accept = _header(scope, b"accept")

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    if endpoint.options.stream:
        note_queued()
        pool = generation.pool
        return await stream_cell(pool, call, timeout, accept, send, disconnected)
    if endpoint.options.job:
        # The execute path reports stdout as it arrives: the job's progress.
        job_call = replace(call, stream=True)

        async def work(job: Job) -> Response:
            return await _answer(generation, job_call, timeout, accept, endpoint.label, job=job)

        try:
            job = await submit_job(endpoint.label, work)
        except RequestFailed as exc:
            return failure_response(exc)
        return accepted_response(job, scope.get("root_path", ""))
    note_queued()
    if endpoint.options.batch is not None:
        try:
            return await batcher_for(generation, endpoint).answer(request_json, timeout)
        except RequestFailed as exc:
            return failure_response(exc)
    return await _answer(
        generation,
        call,
        timeout,
        accept,
        endpoint.label,
        disconnected=disconnected,
    )


async def _answer(
    generation: Generation,
    call: CellCall,
    timeout: float | None,
    accept: str | None,
    label: str,
    *,
    job: Job | None = None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Run `call` on the pool and turn its outcome, or the pool's refusal, into a response;
    a job's `call` feeds the job's progress as the cell prints."""
    try:
        async with generation.pool.lease(call, disconnected=disconnected) as lease:
            on_stdout = None
            if job is not None:
                job.start()
                on_stdout = job.add_progress
            outcome = await lease.run(timeout=timeout, on_stdout=on_stdout)
    except RequestFailed as exc:  # logged by the pool
        return failure_response(exc)
    info = outcome.response_info
    if outcome.cell.error is not None:
        log_cell_error(generation.pool.label, label, outcome.cell.error)
    elif info is not None and info.error is not None:
        log_cell_error(generation.pool.label, f"ResponseInfo {label}", info.error)
    return build_response(outcome, accept, notebook=generation.api.name, label=label)


def _syntax_error_response(error: CellSyntaxError) -> Response:
    """Kernel Gateway's 500 for a cell error, naming the route and cell instead of a file."""
    return Response(
        f"Error {error.kind}: {error.evalue} \n", 500, headers={"Content-Type": "text/plain"}
    )


def _problems_response(label: str, problems: list[Problem]) -> Response:
    if len(problems) > MAX_PROBLEMS:
        count = f"more than {MAX_PROBLEMS} problems; the first {MAX_PROBLEMS} are listed"
    else:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    body = {
        "reason": "Unprocessable Entity",
        "message": f"the request does not match the declaration of {label}: {count}",
        # A JSON body's keys may hold lone surrogates ("\\ud800"), which UTF-8 cannot send.
        "problems": [
            {key: utf8_safe(text) for key, text in problem.as_json().items()}
            for problem in problems[:MAX_PROBLEMS]
        ],
    }
    return JSONResponse(body, status_code=422)


def _route_segments(scope: Scope) -> list[str]:
    """The path below the mount point, as raw segments (so ``%2F`` stays inside one)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    route = path[len(root) :] if root and path.startswith(root) else path
    raw_path = scope.get("raw_path")
    if raw_path:
        raw = raw_path.decode("latin-1").split("?", 1)[0]
        if unquote(raw) == path:
            prefix_depth = path[: len(path) - len(route)].count("/")
            segments: list[str] = raw.split("/")[prefix_depth + 1 :]
            return segments
    return split_raw_path(route)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), decoded as Latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


_DIGITS = re.compile("[0-9]+")


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = _header(scope, b"content-length")
    # ASCII digits only (str.isdigit also takes '²'); a length past any limit needs no int().
    if (
        declared is not None
        and _DIGITS.fullmatch(declared)
        and (len(declared) > 18 or int(declared) > limit)
    ):
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
