"""Turn what a cell produced into an HTTP response, with Kernel Gateway's precedence.

1. an error → 500 ``Error {ename}: {evalue} \\n`` (text/plain);
2. else everything printed to stdout;
3. else the ``execute_result``: as Kernel Gateway, its whole MIME bundle as JSON, unless the
   client's ``Accept`` names one of the bundle's types, which is then sent as itself;
4. else the last ``display()`` output: the type the client accepts, or the richest of
   ``RICH_ORDER``;
5. else an empty body.

Default status 200 and ``Content-Type: text/plain``; a ResponseInfo cell's JSON object sets
``status`` and ``headers`` (a list value repeats the header). Header names must be RFC 9110
tokens and values field values (visible ASCII, spaces, tabs, Latin-1 letters; surrounding
spaces are dropped); anything else is a 500 JSON naming the route, as is output beyond the
server's size limit. Text that UTF-8 cannot encode (lone surrogates) is sent as U+FFFD.

Those two 500s also leave one ERROR line for the operator (logger ``cellserve.response``)
saying what was wrong and what to do. The line never quotes what the cell printed: that may
hold request data, which must not reach the logs; the client's message may quote it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response

from cellserve.cells import CellError, CellOutcome, CellOutput
from cellserve.dispatch_common import utf8_safe
from cellserve.exceptions import RequestFailed, Unavailable

RICH_ORDER = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/svg+xml",
    "application/pdf",
    "application/json",
    "text/html",
    "text/markdown",
    "text/latex",
    "text/plain",
)
_BINARY_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "application/pdf"})
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")

logger = logging.getLogger("cellserve.response")

TOO_LARGE_REMEDY = "print less or raise --max-response-size"


@dataclass(frozen=True)
class Unusable:
    """Why a status-and-headers value a cell printed cannot be sent.

    `message` is for the client and may quote the value; `rule` says what was broken without
    quoting anything the cell printed (it may hold request data), so it may be logged.
    """

    message: str
    rule: str


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON error in Kernel Gateway's shape: ``{"reason": ..., "message": ...}``."""
    body = {"reason": HTTPStatus(status).phrase, "message": utf8_safe(message)}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def failure_response(error: RequestFailed) -> Response:
    """The JSON error for a request the pool could not run (503 with Retry-After, 504)."""
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Unavailable) else None
    return error_response(error.status, str(error), headers)


def build_response(
    outcome: CellOutcome, accept: str | None, *, notebook: str, label: str
) -> Response:
    """The response for one request's `outcome`; `notebook` and the route's `label` name
    where an error came from."""
    cell = outcome.cell
    if cell.error is not None:
        return _cell_error_response(cell.error)
    if cell.truncated:
        logger.error(
            "%s %s: the cell's output passed the response size limit and the request was "
            "answered 500; %s",
            notebook,
            label,
            TOO_LARGE_REMEDY,
        )
        return too_large_response(notebook, label)
    body, content_type = _body_of(cell, accept)
    status = 200
    extra: list[tuple[str, str]] = []
    info = outcome.response_info
    if info is not None:
        if info.error is not None:
            return _cell_error_response(info.error)
        parsed = _parse_response_info(info)
        if isinstance(parsed, Unusable):
            logger.error(
                "%s ResponseInfo %s: %s, so the request was answered 500; fix the ResponseInfo "
                "cell",
                notebook,
                label,
                parsed.rule,
            )
            return error_response(500, f"{notebook} ResponseInfo {label}: {parsed.message}")
        status, extra = parsed
    if status in _NO_BODY_STATUSES:
        body = b""
    response = Response(body, status, headers={"Content-Type": content_type})
    apply_headers(response.headers, extra)
    return response


def too_large_response(notebook: str, label: str) -> Response:
    """The 500 for output past the server's size limit (the caller logs it)."""
    return error_response(
        500,
        f"{notebook} {label} produced more output than the server's response size limit; "
        "nothing was sent",
    )


def _cell_error_response(error: CellError) -> Response:
    return Response(utf8(f"{error.summary}\n"), 500, headers={"Content-Type": "text/plain"})


def utf8(text: str) -> bytes:
    """`text` as UTF-8, with lone surrogates (which UTF-8 cannot encode) as U+FFFD."""
    return utf8_safe(text).encode("utf-8")


def _body_of(cell: CellOutput, accept: str | None) -> tuple[bytes, str]:
    if cell.stdout:
        return utf8(cell.stdout), "text/plain"
    preferences = _accepted_types(accept)
    if cell.result is not None:
        chosen = _negotiate(cell.result, preferences) if preferences else None
        if chosen is None:
            return json.dumps(cell.result).encode("utf-8"), "text/plain"
        return _encode(chosen, cell.result[chosen])
    if cell.displays:
        bundle = cell.displays[-1]
        chosen = _negotiate(bundle, preferences) if preferences else None
        if chosen is None:
            chosen = next((t for t in RICH_ORDER if t in bundle), None)
        if chosen is not None:
            return _encode(chosen, bundle[chosen])
    return b"", "text/plain"


def _accepted_types(accept: str | None) -> list[tuple[float, str]]:
    """Media ranges from `accept` by descending quality; empty when the client has no wish."""
    if not accept:
        return []
    ranges: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranges.append((quality, position, media.lower()))
    if all(media == "*/*" for _, _, media in ranges):
        return []
    ranges.sort(key=lambda r: (-r[0], r[1]))
    return [(quality, media) for quality, _, media in ranges]


def _negotiate(bundle: Mapping[str, Any], preferences: list[tuple[float, str]]) -> str | None:
    for _, media in preferences:
        if media in bundle:
            return media
        if media.endswith("/*"):
            prefix = media[:-1]
            for candidate in RICH_ORDER:
                if candidate.startswith(prefix) and candidate in bundle:
                    return candidate
    return None


def _encode(media_type: str, value: Any) -> tuple[bytes, str]:
    if media_type in _BINARY_TYPES and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False), media_type
        except binascii.Error:
            return utf8(value), media_type
    if media_type == "application/json" or media_type.endswith("+json"):
        return json.dumps(value).encode("utf-8"), media_type
    text = value if isinstance(value, str) else json.dumps(value)
    charset = "; charset=utf-8" if media_type.startswith("text/") else ""
    return utf8(text), media_type + charset


def _parse_response_info(info: CellOutput) -> tuple[int, list[tuple[str, str]]] | Unusable:
    """(status, headers) from a ResponseInfo cell's stdout, or why it is unusable."""
    try:
        value = json.loads(info.stdout)
    except json.JSONDecodeError:
        rule = 'must print one JSON object like {"status": 201}'
        shown = info.stdout.strip()[:80]
        if not shown:
            return Unusable(f"{rule}, printed 'nothing'", f"{rule}, printed nothing")
        return Unusable(f"{rule}, printed {shown!r}", f"{rule}, printed something else")
    if not isinstance(value, dict):
        return _unusable("must print a JSON object, not " + type(value).__name__)
    return status_and_headers(value)


def status_and_headers(value: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]]] | Unusable:
    """(status, headers) from ``{"status": ..., "headers": {...}}``, or why it is unusable.

    A list as a header's value repeats the header; framing headers are the server's.
    """
    status = value.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        rule = "status must be an integer HTTP status from 200 to 599"
        return Unusable(f"{rule}, got {status!r}", rule)
    raw_headers = value.get("headers", {})
    if not isinstance(raw_headers, dict):
        return _unusable("headers must be a JSON object")
    headers: list[tuple[str, str]] = []
    for name, header_value in raw_headers.items():
        values = header_value if isinstance(header_value, list) else [header_value]
        for value in values:
            text = _header_text(value).strip(" \t")
            if not _TOKEN.fullmatch(name):
                rule = "is not an HTTP token (RFC 9110)"
                return Unusable(f"header name {name!r} {rule}", f"a header name {rule}")
            if not _FIELD_VALUE.fullmatch(text):
                rule = (
                    "is not a valid HTTP field value (RFC 9110: visible ASCII, spaces, tabs and "
                    "Latin-1 letters only)"
                )
                return Unusable(f"header {name!r}: {text!r} {rule}", f"a header value {rule}")
            if name.lower() in _FRAMING_HEADERS:
                rule = "is set by the server, not by the notebook"
                # The log names it by one of three fixed spellings: nothing the cell printed.
                return Unusable(f"header {name!r} {rule}", f"header {name.lower()!r} {rule}")
            headers.append((name, text))
    return status, headers


def _unusable(rule: str) -> Unusable:
    """A reason that quotes nothing the cell printed: the client and the log get the same."""
    return Unusable(rule, rule)


def _header_text(value: Any) -> str:
    """Header values as Tornado writes them: strings as they are, numbers as digits."""
    return value if isinstance(value, str) else str(value)


def apply_headers(headers: MutableHeaders, extra: list[tuple[str, str]]) -> None:
    """Set `extra` on `headers`: each name given replaces the default, repeats are kept."""
    replaced: set[str] = set()
    for name, value in extra:
        key = name.lower()
        if key not in replaced:
            del headers[key]
            replaced.add(key)
        headers.append(name, value)
