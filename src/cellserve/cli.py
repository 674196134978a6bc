"""``cellserve serve NOTEBOOK...``: serve notebooks with hypercorn."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellserve.exceptions import CellserveError
from cellserve.settings import DEFAULT_PORT, Settings, env_names

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
    ("--auth-token", "auth_token", {}, "require this token on every route"),
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
        "most characters a cell may print before a 500 (default 64 MiB)",
    ),
    ("--static-path", "static_path", {"type": Path}, "serve this folder at /public/"),
    (
        "--workers",
        "workers",
        {"type": int},
        "server processes sharing the port, each with its own kernels (default 1)",
    ),
)


def _help_with_env(option: str, text: str) -> str:
    return f"{text}; env: {', '.join(env_names(option))}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellserve", description="Serve Jupyter notebooks' annotated cells as an HTTP API."
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
    serve.add_argument(
        "--reload",
        dest="reload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=_help_with_env(
            "reload",
            "follow edits of the notebook file (default: on; use --no-reload in production)",
        ),
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
    serve.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    options = {option: getattr(args, option) for _, option, _, _ in _OPTIONS}
    for option in ("reload", "allow_credentials", "allow_notebook_download"):
        options[option] = getattr(args, option)
    if options["reload"] is None and "CELLSERVE_RELOAD" not in os.environ:
        options["reload"] = True
    try:
        settings = Settings.load(**options)
        app = _build(args.notebooks, settings)
    except CellserveError as exc:
        print(f"cellserve: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from cellserve.workers import serve_workers

        build = functools.partial(_build, args.notebooks, settings)
        logs = functools.partial(_configure_logging, args.log_level)
        _log_start(settings)
        return serve_workers(build, _hypercorn_config(settings), settings, logs)
    return _serve(app, settings)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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


def _hypercorn_config(settings: Settings) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.shutdown_grace
    return config


def _log_start(settings: Settings) -> None:
    url = f"http://{settings.host}:{settings.port}{settings.mount_prefix}"
    logger.info("starting kernels; the API will be at %s/ (docs: %s/docs)", url, url)


def _serve(app: Any, settings: Settings) -> int:
    from hypercorn.asyncio import serve
    from hypercorn.utils import LifespanFailureError

    config = _hypercorn_config(settings)

    async def until_signal() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("stopping: finishing requests, then shutting kernels down")

    _log_start(settings)
    try:
        _run(serve(app, config, shutdown_trigger=until_signal))
    except LifespanFailureError as exc:
        print(f"cellserve: start-up failed: {_last_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


def _last_line(message: str) -> str:
    """The exception line at the end of a lifespan traceback, without its class path."""
    lines = [line for line in message.strip().strip("'").splitlines() if line.strip()]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else message


def _run(coroutine: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
