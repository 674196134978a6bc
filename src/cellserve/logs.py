"""Log lines for operators: text or JSON, each tagged with the request it is about.

A request's id, notebook, route and kernel live in a `RequestContext` held by a context
variable for the duration of the request (set by ``access.AccessLogMiddleware``); every
record logged while it is set carries them, whichever module logs it.

Text (the default)::

    2026-12-01 00:20:01,123 INFO cellserve.access: GET /price/94110 200 3.1 ms 41 B \
        kernel=1f2e request_id=4c1d

JSON (``--log-format json``), one object per line::

    {"timestamp": "2026-12-01T00:20:01.123+00:00", "level": "INFO", "logger": "cellserve.access",
     "message": "GET /price/94110 200 3.1 ms 41 B", "request_id": "4c1d", "method": "GET", ...}
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cellserve.cells import CellError
from cellserve.exceptions import SettingsError

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Printable ASCII without spaces, quotes or backslashes: safe to echo and to log as is.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a record may carry (through ``extra=``) that belong in the JSON object.
_RECORD_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "client", "traceback")


@dataclass(slots=True)
class RequestContext:
    """What the logs need to know about the request being served."""

    request_id: str
    method: str
    path: str
    notebook: str | None = None
    route: str | None = None
    kernel: str | None = None
    queued_at: float | None = None
    queue_wait: float | None = None


_current: ContextVar[RequestContext | None] = ContextVar("cellserve_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(context: RequestContext) -> Token[RequestContext | None]:
    """Make `context` current; returns the token ``leave_request`` needs."""
    return _current.set(context)


def leave_request(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def note_route(notebook: str, route: str) -> None:
    """The request matched `route` of `notebook` (for its access line, metrics and logs)."""
    context = _current.get()
    if context is not None:
        context.notebook, context.route = notebook, route


def note_queued() -> None:
    """The request is about to wait for a kernel."""
    context = _current.get()
    if context is not None:
        context.queued_at = time.perf_counter()


def note_kernel(kernel_id: str) -> None:
    """The request was given kernel `kernel_id` (its queue wait ends now)."""
    context = _current.get()
    if context is not None:
        context.kernel = kernel_id
        if context.queued_at is not None:
            context.queue_wait = time.perf_counter() - context.queued_at


def log_cell_error(notebook: str, route: str, error: CellError) -> None:
    """One ERROR for a cell that raised, with its traceback (the client gets only the 500)."""
    logging.getLogger("cellserve.cells").error(
        "%s %s: the cell raised %s: %s",
        notebook,
        route,
        error.ename,
        error.evalue,
        extra={"traceback": _ANSI_ESCAPE.sub("", error.traceback) or None},
    )


def request_id_from(offered: bytes | None) -> str:
    """The client's ``X-Request-ID`` when well-formed (≤ 128 safe characters), else a new one."""
    if offered is not None and _VALID_REQUEST_ID.fullmatch(offered):
        return offered.decode("ascii")
    return uuid.uuid4().hex


def _request_fields(record: logging.LogRecord) -> dict[str, str]:
    context: RequestContext | None = getattr(record, "request", None) or _current.get()
    if context is None:
        return {}
    fields = {"request_id": context.request_id}
    if context.notebook is not None:
        fields["notebook"] = context.notebook
    if context.route is not None:
        fields["route"] = context.route
    if context.kernel is not None:
        fields["kernel"] = context.kernel
    return fields


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message kernel=… request_id=…``, then any traceback lines."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _request_fields(record)
        if "kernel" in fields:
            line += f" kernel={fields['kernel']}"
        if "request_id" in fields:
            line += f" request_id={fields['request_id']}"
        traceback = getattr(record, "traceback", None)
        return f"{line}\n{traceback.rstrip()}" if traceback else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message and the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_request_fields(record))
        for name in _RECORD_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise SettingsError(f"log format must be 'text' or 'json', got {log_format!r}")


def configure_logging(level: str = "info", log_format: str = "text") -> logging.StreamHandler[Any]:
    """Send every log record (cellserve's, hypercorn's, the Jupyter stack's, Python's
    warnings) to stderr; returns the one handler that writes them."""
    if level.lower() not in LOG_LEVELS:
        raise SettingsError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    root = logging.getLogger()
    for existing in root.handlers[:]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # A library's warning is then a record like any other (one JSON line, not raw stderr).
    logging.captureWarnings(True)
    return handler


def ensure_logging() -> None:
    """Show cellserve's own lines when nobody configured logging (e.g. ``hypercorn mod:app``).

    Python's default would print only warnings, so an operator would see no start-up progress.
    ``CELLSERVE_LOG_FORMAT=json`` chooses JSON lines there too; another value is said in one
    warning and text is written (this runs in a server's lifespan, where raising would be a
    traceback, not a message).
    """
    package = logging.getLogger("cellserve")
    if logging.getLogger().handlers or package.handlers:
        return
    requested = os.environ.get("CELLSERVE_LOG_FORMAT", "text").lower()
    log_format = requested if requested in LOG_FORMATS else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    if log_format != requested:
        package.warning(
            "CELLSERVE_LOG_FORMAT=%r is not 'text' or 'json': writing text lines", requested
        )
