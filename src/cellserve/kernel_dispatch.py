"""The dispatcher that runs *inside* a Python kernel: cellserve's fast execution path.

The server sends this module's source to each IPython kernel once, after the seed cells and
after ``dispatch_common.py`` (whose helpers the server uses too), in the same namespace.
``install`` registers a comm target. Each request is then one ``comm_msg`` carrying the
``REQUEST`` string and a key naming the route's code (the code itself rides along the first
time a kernel sees that key). The dispatcher runs the route's code, compiled
once with IPython's transformations applied (so magics work), captures stdout, rich displays
and the last expression's value in-process, runs the ResponseInfo code if there is one, and
answers with a single comm message. Tracebacks name the route (``File "<GET /x>", line 3``)
rather than a temporary file. Request data is data: it is bound to ``REQUEST`` in the
user namespace and never becomes code text, and nothing is written to IPython's history.
Every request gets an answer: a fault in the dispatcher, or an answer the kernel cannot send,
comes back as a cell error. Displays and the value count against the same output limit as
stdout.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType
from typing import TYPE_CHECKING, Any

from IPython.core.displayhook import CapturingDisplayHook
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.error import StdinNotImplementedError

if TYPE_CHECKING:  # in the kernel, dispatch_common's source ran first in this namespace
    from cellserve.dispatch_common import LimitedText, hides_value


class _Compiled:
    """A route's code: statements plus an optional trailing expression (the cell's value)."""

    def __init__(self, shell: Any, source: str) -> None:
        self.body: CodeType | None = None
        self.value: CodeType | None = None
        self.syntax_error: SyntaxError | None = None
        self.needs_event_loop = False
        code = shell.transform_cell(source)
        filename = _route_filename(source)
        # mtime None: linecache keeps the entry, so tracebacks can show the lines.
        linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
        try:
            tree = ast.parse(code, filename)
        except SyntaxError as exc:
            self.syntax_error = exc
            return
        value_node: ast.Expression | None = None
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not hides_value(code):
            value_node = ast.Expression(tree.body.pop().value)
        try:
            self.body = compile(tree, filename, "exec")
            if value_node is not None:
                self.value = compile(value_node, filename, "eval")
        except SyntaxError:
            # Top-level `await` compiles only as a coroutine: leave it to execute_request.
            self.needs_event_loop = True


def _route_filename(source: str) -> str:
    """``<GET /x>`` from the annotation on the code's first line: what tracebacks show."""
    annotation = source.split("\n", 1)[0].lstrip("#/ \t").strip()
    return f"<{annotation}>"


def _no_input(prompt: object = "") -> str:
    """A request has no terminal: fail at once rather than wait for input that never comes."""
    raise StdinNotImplementedError("input() was called, but an HTTP request cannot answer it")


class _Displays:
    """Catches a request's rich displays, as IPython's ``capture_output`` does, but with one
    publisher made once per kernel: ``capture_output`` builds a new traitlets publisher each
    time, a good part of what a small request costs the kernel."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.publisher = CapturingDisplayPublisher()  # type: ignore[no-untyped-call]

    @contextmanager
    def capture(self) -> Iterator[list[Any]]:
        outputs: list[Any] = self.publisher.outputs
        outputs.clear()
        saved_publisher, saved_hook = self.shell.display_pub, sys.displayhook
        self.shell.display_pub = self.publisher
        sys.displayhook = CapturingDisplayHook(shell=self.shell, outputs=outputs)  # type: ignore[no-untyped-call]
        try:
            yield outputs
        finally:
            self.shell.display_pub, sys.displayhook = saved_publisher, saved_hook


def _run(displays: _Displays, compiled: _Compiled, limit: int) -> dict[str, Any]:
    shell = displays.shell
    stdout = LimitedText(limit, sys.stdout)
    namespace = shell.user_ns
    value: Any = None
    error: dict[str, Any] | None = None
    with displays.capture() as captured:
        saved_stdout, saved_input = sys.stdout, builtins.input
        sys.stdout, builtins.input = stdout, _no_input
        try:
            if compiled.syntax_error is not None:
                raise compiled.syntax_error
            assert compiled.body is not None
            shell.events.trigger("pre_execute")
            exec(compiled.body, namespace)
            if compiled.value is not None:
                value = eval(compiled.value, namespace)
            shell.events.trigger("post_execute")
        except BaseException as exc:
            error = {
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": "".join(
                    traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
                    if exc.__traceback__ is not None
                    else traceback.format_exception_only(type(exc), exc)
                ),
            }
        finally:
            sys.stdout, builtins.input = saved_stdout, saved_input
    bundles = [output["data"] for output in captured]  # what RichOutput is built from
    bundles = [bundle for bundle in bundles if stdout.admit(bundle)]
    result = None
    if error is None and value is not None:
        result, _ = shell.display_formatter.format(value)
        if not stdout.admit(result):
            result = None
    return {
        "stdout": stdout.text,
        "truncated": stdout.truncated,
        "result": result,
        "displays": bundles,
        "error": error,
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    error = {
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    return {"stdout": "", "truncated": False, "result": None, "displays": [], "error": error}


def install(shell: Any, target_name: str, limit: int) -> None:
    """Register the comm target `target_name` on `shell`'s kernel."""
    cache: dict[str, _Compiled] = {}
    displays = _Displays(shell)

    def lookup(key: str, source: str | None) -> _Compiled | None:
        if key not in cache and source is not None:
            cache[key] = _Compiled(shell, source)
        return cache.get(key)

    def handle(data: dict[str, Any]) -> dict[str, Any]:
        cell = lookup(data["key"], data.get("code"))
        info = lookup(data["info_key"], data.get("info_code")) if data.get("info_key") else None
        if cell is None or (data.get("info_key") and info is None):
            return {"status": "missing"}
        if cell.needs_event_loop or (info is not None and info.needs_event_loop):
            return {"status": "unsupported"}
        shell.user_ns[data.get("variable", "REQUEST")] = data["request"]
        answer: dict[str, Any] = {"status": "ok", "cell": _run(displays, cell, limit), "info": None}
        if info is not None and answer["cell"]["error"] is None:
            answer["info"] = _run(displays, info, limit)
        # exit() asks the kernel to stop right after this message: say so, so that the
        # server never gives it another request.
        answer["exiting"] = bool(getattr(shell, "exit_now", False))
        return answer

    def on_open(comm: Any, _open_msg: Any) -> None:
        def on_msg(msg: dict[str, Any]) -> None:
            try:
                answer = handle(msg["content"]["data"])
            except Exception as exc:  # a dispatcher fault still answers, as a cell error
                answer = {"status": "ok", "cell": _failure(exc), "info": None}
            try:
                comm.send(answer)
            except Exception as exc:  # e.g. a display the packer cannot serialize
                comm.send({"status": "ok", "cell": _failure(exc), "info": None})

        comm.on_msg(on_msg)

    register: Callable[[str, Any], None] = shell.kernel.comm_manager.register_target
    register(target_name, on_open)
