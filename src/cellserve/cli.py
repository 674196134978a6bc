"""``cellserve serve NOTEBOOK...``: serve notebooks with hypercorn."""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import anyio

from cellserve.commands import add_commands
from cellserve.exceptions import CellserveError, SettingsError
from cellserve.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from cellserve.open_files import raise_open_files_limit
from cellserve.settings import DEFAULT_PORT, Settings, env_names
from cellserve.startup import ServerHooks

logger = logging.getLogger("cellserve")

# (flag, option, help); every option can also be set by the environment variables listed.
_OPTIONS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("--host", "host", {}, "interface to bind (default 127.0.0.1)"),
    ("--port", "port", {"type": int}, f"port to bind (default {DEFAULT_PORT})"),
    ("--base-url", "base_url", {}, "prefix for every path (default /)"),
    ("--kernels", "kernels", {"type": int}, "kernels per notebook (default 1)"),
    ("--kernel-name", "kernel_name", {}, "kernelspec to use instead of the notebook's"),
    ("--comment-prefix", "comment_prefix", {}, "annotation comment prefix (default by language)"),
    (
        "--execution",
        "execution",
        {"choices": ["fast", "execute"]},
        "fast: in-kernel dispatcher (Python); execute: one execute_request per request",
    ),
    ("--timeout", "timeout", {"type": float}, "seconds a cell may run before a 504 (default 60)"),
    (
        "--queue-timeout",
        "queue_timeout",
        {"type": float},
        "seconds a request may wait for a kernel before a 503 (default 30)",
    ),
    ("--max-queue", "max_queue", {"type": int}, "requests allowed to wait (default 100)"),
    (
        "--pipeline-depth",
        "pipeline_depth",
        {"type": int},
        "fast-path requests in flight per kernel; 2 keeps the next one waiting in the kernel, "
        "1 turns that off (default 2)",
    ),
    (
        "--auth-token",
        "auth_token",
        {},
        "require this token on every route (visible in the process list: prefer a file)",
    ),
    (
        "--auth-token-file",
        "auth_token_file",
        {"type": Path},
        "require the token in this file on every route; keeps it out of the process list",
    ),
    ("--allow-origin", "allow_origin", {}, "CORS: allowed origins, comma-separated, or *"),
    ("--allow-methods", "allow_methods", {}, "CORS: allowed methods"),
    ("--allow-headers", "allow_headers", {}, "CORS: allowed request headers"),
    ("--expose-headers", "expose_headers", {}, "CORS: response headers visible to scripts"),
    ("--max-age", "max_age", {"type": int}, "CORS: preflight cache seconds"),
    ("--max-body-size", "max_body_size", {"type": int}, "largest request body in bytes (413)"),
    (
        "--max-response-size",
        "max_response_size",
        {"type": int},
        "most characters of a cell's output (stdout, value, displays) before a 500 (default 64 Mi)",
    ),
    ("--static-path", "static_path", {"type": Path}, "serve this folder at /public/"),
    (
        "--job-ttl",
        "job_ttl",
        {"type": float},
        "seconds a finished job's result is kept (default 3600)",
    ),
    ("--max-jobs", "max_jobs", {"type": int}, "jobs kept, running or finished (default 100)"),
    (
        "--kernel-memory-limit",
        "kernel_memory_limit",
        {},
        "address space per local kernel, like 2G (Linux); a cell past it gets 503 and its "
        "kernel is replaced",
    ),
    (
        "--drain-delay",
        "drain_delay",
        {"type": float},
        "on SIGTERM: seconds to keep serving with /_cellserve/ready at 503 (default 0)",
    ),
    (
        "--workers",
        "workers",
        {"type": int},
        "server processes sharing the port, each with its own kernels (default 1)",
    ),
    (
        "--transport",
        "transport",
        {"choices": ["ipc", "tcp"]},
        "how the server talks to local kernels: ipc (Unix sockets, default) or tcp",
    ),
)
# (flag, option, help) of on/off options, each with its --no- form.
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    (
        "--reload",
        "reload",
        "follow edits of the notebook file (default: on; use --no-reload in production)",
    ),
    ("--access-log", "access_log", "one log line per request (default: on)"),
    ("--seed-output", "seed_output", "show what seed cells print (default: off; on at debug)"),
)


def _help_with_env(option: str, text: str) -> str:
    return f"{text}; env: {', '.join(env_names(option))}"


class _Parser(argparse.ArgumentParser):
    """Bad options end with one line saying what is wrong, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellserve", description="Serve Jupyter notebooks' annotated cells as an HTTP API."
    )
    parser.add_argument("--version", action="version", version=f"cellserve {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="serve one or more notebooks",
        description="Serve notebooks with hypercorn. Several notebooks (or a folder) are served "
        "each under its own prefix: its file stem, or PREFIX=PATH.",
    )
    serve.add_argument(
        "notebooks",
        nargs="*",
        metavar="NOTEBOOK",
        help="notebook path, folder, or PREFIX=PATH; env: KG_SEED_URI",
    )
    for flag, option, kwargs, text in _OPTIONS:
        serve.add_argument(
            flag, dest=option, default=None, help=_help_with_env(option, text), **kwargs
        )
    for flag, option, text in _SWITCHES:
        serve.add_argument(
            flag,
            dest=option,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=_help_with_env(option, text),
        )
    serve.add_argument(
        "--allow-credentials",
        dest="allow_credentials",
        action="store_true",
        default=None,
        help=_help_with_env("allow_credentials", "CORS credentials"),
    )
    serve.add_argument(
        "--allow-notebook-download",
        dest="allow_notebook_download",
        action="store_true",
        default=None,
        help=_help_with_env("allow_notebook_download", "serve /_api/source"),
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=os.environ.get("CELLSERVE_LOG_LEVEL", "info").lower(),
        help="debug shows seed output, kernel messages and tracebacks (default info); "
        "env: CELLSERVE_LOG_LEVEL",
    )
    serve.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default=os.environ.get("CELLSERVE_LOG_FORMAT", "text").lower(),
        help="text lines, or one JSON object per line (default text); env: CELLSERVE_LOG_FORMAT",
    )
    add_commands(commands)
    return parser


def _version() -> str:
    try:
        return metadata.version("cellserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        return int(args.run(args))
    try:  # argparse checks the flags' values, not defaults from the environment
        handler = configure_logging(args.log_level, args.log_format)
    except CellserveError as exc:
        return _fail(f"{exc} (from CELLSERVE_LOG_LEVEL or CELLSERVE_LOG_FORMAT)", 2)
    live = sys.stderr.isatty() and args.log_format == "text"
    options = {option: getattr(args, option) for _, option, _, _ in _OPTIONS}
    for option in ("allow_credentials", "allow_notebook_download", *(s[1] for s in _SWITCHES)):
        options[option] = getattr(args, option)
    if options["reload"] is None and "CELLSERVE_RELOAD" not in os.environ:
        options["reload"] = True
    try:
        settings = Settings.load(**options)
        listener = _listen(settings)
    except CellserveError as exc:
        return _fail(str(exc), 2)
    if settings.auth_token is not None:
        _forget_token_variables()
    raise_open_files_limit()
    try:
        with listener:
            app = _build(args.notebooks, settings)  # in workers mode only to fail fast here
            if settings.workers > 1:
                from cellserve.workers import serve_workers

                build = functools.partial(_build, args.notebooks, settings)
                logs = functools.partial(configure_logging, args.log_level, args.log_format)
                _log_start(_url(settings, listener))
                config = _hypercorn_config(settings, listener)
                return serve_workers(build, config, settings, logs)
            return _serve(app, settings, listener, handler if live else None)
    except CellserveError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logger.debug("unexpected error", exc_info=True)
        return _fail(f"unexpected error: {exc!r} (--log-level debug shows the traceback)", 1)


def _forget_token_variables() -> None:
    """Once read, the token must not stay where kernels can read it: the environment."""
    from cellserve.auth import forget_token_variables

    forget_token_variables()


def _fail(message: str, status: int) -> int:
    print(f"cellserve: {message}", file=sys.stderr)
    return status


def _listen(settings: Settings) -> socket.socket:
    """The listening socket, bound now: a busy port is reported before any kernel starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        raise SettingsError(f"cannot use host {settings.host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = f"port {settings.port} on {settings.host}"
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(
                f"{where} is already in use; stop the other server or choose --port"
            ) from None
        raise SettingsError(f"cannot listen on {where}: {exc.strerror}") from None
    return sock


def _build(notebooks: list[str], settings: Settings) -> Any:
    from cellserve.app import app_from_notebook
    from cellserve.multi import app_from_notebooks
    from cellserve.notebook import load_notebook

    if not notebooks and os.environ.get("KG_SEED_URI"):
        notebooks = [os.environ["KG_SEED_URI"]]
    if not notebooks:
        raise CellserveError("no notebook given: cellserve serve NOTEBOOK.ipynb")
    options = {f: getattr(settings, f) for f in settings.__dataclass_fields__}
    if len(notebooks) == 1 and "=" not in notebooks[0] and not Path(notebooks[0]).is_dir():
        load_notebook(notebooks[0])  # fail fast, before binding, on an unreadable notebook
        return app_from_notebook(notebooks[0], **options)
    if all("=" in item for item in notebooks):
        mapping = dict(item.split("=", 1) for item in notebooks)
        return app_from_notebooks(mapping, **options)
    return app_from_notebooks(notebooks, **options)


def _hypercorn_config(settings: Settings, listener: socket.socket) -> Any:
    """hypercorn's configuration, serving on `listener` (which it then owns and closes)."""
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = None  # cellserve writes its own (cellserve.access)
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_grace
    # Seeding is bounded by seed_timeout alone, not by hypercorn's 60 s lifespan limit.
    config.startup_timeout = _NO_LIMIT
    return config


def _url(settings: Settings, listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://{host}:{port}{settings.mount_prefix}"


def _log_start(url: str) -> None:
    logger.info("listening on %s/; starting kernels", url)


def _serve(
    app: Any,
    settings: Settings,
    listener: socket.socket,
    live_handler: logging.StreamHandler[Any] | None = None,
) -> int:
    """Serve until a signal; with `live_handler`, draw start-up progress above its lines."""
    from hypercorn.asyncio import serve
    from hypercorn.utils import LifespanFailureError

    from cellserve.shutdown import Drain, DrainMiddleware, stop_after_drain

    url = _url(settings, listener)
    config = _hypercorn_config(settings, listener)
    hooks: ServerHooks = app.state.cellserve_server
    hooks.url = url
    failures: list[BaseException] = []
    failed = asyncio.Event()

    def start_failed(error: BaseException) -> None:
        failures.append(error)  # every kernel is stopped already
        failed.set()

    hooks.on_failure = start_failed
    progress = _progress_source(app)
    drain = Drain()
    app = DrainMiddleware(app, drain)
    signals = (signal.SIGINT, signal.SIGTERM)

    async def until_stopped() -> None:
        """A signal (after the drain delay), or a failed start (at once)."""
        async with anyio.create_task_group() as tg:

            async def on_failure() -> None:
                await failed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_failure)
            await stop_after_drain(drain, settings.drain_delay, signals)
            tg.cancel_scope.cancel()

    async def serve_with_progress() -> None:
        served = False
        async with anyio.create_task_group() as tg:
            if live_handler is not None:
                from cellserve.console import show_progress

                def done() -> bool:
                    return served or hooks.ready or failed.is_set() or drain.begun

                tg.start_soon(show_progress, progress, done, live_handler)
            try:
                await serve(app, config, shutdown_trigger=until_stopped)
            finally:
                # The table stops at its next refresh. Cancelling the task group from here
                # instead let a CancelledError escape now and then (exit status 1 after a
                # clean stop), seen when the server stopped right after it was ready.
                served = True

    _log_start(url)
    try:
        _run(serve_with_progress())
    except LifespanFailureError as exc:
        if str(exc).startswith("Lifespan failure in shutdown"):
            return _fail(f"shutdown failed: {_last_line(str(exc))}", 1)
        failures.append(CellserveError(_last_line(str(exc))))
    if failures:
        return _fail(f"start-up failed: {failures[0]}", 1)
    if drain.signal is not None and not hooks.ready:
        return 128 + drain.signal  # stopped while starting: 130 for Ctrl-C, 143 for SIGTERM
    return 0


def _progress_source(app: Any) -> Callable[[], list[tuple[str, dict[str, Any]]]]:
    """``(notebook, health)`` of every notebook `app` serves, for the live display."""
    states = getattr(app.state, "cellserve_notebooks", None) or {"": app.state.cellserve}

    def progress() -> list[tuple[str, dict[str, Any]]]:
        return [(state.service.label, state.health()) for state in states.values()]

    return progress


_NO_LIMIT = 365 * 24 * 3600.0


def _last_line(message: str) -> str:
    """The exception line at the end of a lifespan traceback, without its class path."""
    lines = [line for line in message.strip().strip("'").splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else message


def _run(coroutine: Any) -> None:
    """Run `coroutine` on uvloop (a dependency on Linux and macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # not installed on this platform: the standard event loop will do
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
