"""When and how much to reload: the change classification, the file watcher, SIGHUP.

A reload does the least work the change needs (``classify``, pure):

* nothing changed, or only outputs/metadata/markdown → new docs, same routes and kernels;
* only endpoint or ResponseInfo cells changed → new route table, same (still seeded) kernels;
* a seed cell or the kernel changed → a new pool, seeded before the swap.

A reload that would break a route which compiled (a syntax error in an endpoint or
ResponseInfo cell) is refused: the old version keeps serving (``check_new_syntax_errors``).

``NotebookService.reload`` (service.py) applies it; this module only decides and triggers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import anyio

from cellserve.exceptions import NotebookError
from cellserve.notebook import Endpoint, NotebookApi


class Change(StrEnum):
    NONE = "none"
    DOCS = "docs"
    ROUTES = "routes"
    KERNELS = "kernels"


@dataclass(frozen=True)
class ReloadResult:
    change: Change
    generation: int
    seconds: float
    error: str | None = None
    details: str = ""


class Reloadable(Protocol):
    async def reload(self, trigger: str) -> ReloadResult: ...


def classify(old: NotebookApi, new: NotebookApi) -> Change:
    """The smallest kind of reload that makes `new` live after `old`."""
    if old.kernel_identity() != new.kernel_identity():
        return Change.KERNELS
    if _route_code(old) != _route_code(new):
        return Change.ROUTES
    if old != new:
        return Change.DOCS
    return Change.NONE


def check_new_syntax_errors(old: NotebookApi, new: NotebookApi) -> None:
    """Refuse `new` if it has a syntax error `old` did not have (an old one is tolerated, as
    at start-up: that route answers 500, as Kernel Gateway would)."""
    before = {e.label: e.syntax_error for e in old.endpoints}
    problems = [
        f"{e.syntax_error.describe(new.name)}; the previous version keeps serving"
        for e in new.endpoints
        if e.syntax_error is not None and before.get(e.label) != e.syntax_error
    ]
    if problems:
        raise NotebookError.of(problems)


def describe_change(old: NotebookApi, new: NotebookApi) -> str:
    """What differs, for the reload log: routes added/removed/edited, seed cells, kernel."""
    parts = []
    if (old.kernel_name, old.language) != (new.kernel_name, new.language):
        parts.append(f"kernel {old.kernel_name} → {new.kernel_name}")
    if old.seeds != new.seeds:
        before = {s.source for s in old.seeds}
        changed = [str(s.number) for s in new.seeds if s.source not in before]
        parts.append("seed cells changed" + (f" ({', '.join(changed)})" if changed else ""))
    old_code = {e.label: e for e in old.endpoints}
    new_code = {e.label: e for e in new.endpoints}
    added = [label for label in new_code if label not in old_code]
    removed = [label for label in old_code if label not in new_code]
    edited = [
        label
        for label in new_code
        if label in old_code and _route_code_of(old_code[label]) != _route_code_of(new_code[label])
    ]
    for sign, labels in (("+", added), ("-", removed), ("~", edited)):
        parts.extend(f"{sign}{label}" for label in labels)
    return ", ".join(parts) or "docs, outputs or metadata only"


def _route_code_of(endpoint: Endpoint) -> tuple[object, ...]:
    return (endpoint.source, endpoint.response_info, endpoint.options)


def _route_code(api: NotebookApi) -> tuple[object, ...]:
    return tuple((e.label, *_route_code_of(e)) for e in api.endpoints)


async def watch_file(
    path: Path, on_change: Callable[[], Awaitable[object]], *, debounce: float, stop: anyio.Event
) -> None:
    """Call `on_change` after each burst of writes to `path`, until `stop` is set."""
    from watchfiles import awatch

    target = Path(await anyio.Path(path).resolve())

    def is_target(_change: object, changed: str) -> bool:
        return Path(changed) == target

    async for _changes in awatch(
        target.parent,
        watch_filter=is_target,
        debounce=int(debounce * 1000),
        step=50,
        stop_event=stop,
        recursive=False,
    ):
        await on_change()


async def reload_on_sighup(services: Sequence[Reloadable], stop: anyio.Event) -> None:
    """Reload every one of `services` on SIGHUP, until `stop` is set.

    One receiver per process: a second handler for the same signal would replace the first.
    Signals reach only the main thread, so elsewhere this just waits for `stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        await stop.wait()
        return
    async with anyio.create_task_group() as tg:

        async def cancel_when_stopped() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_when_stopped)
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                for service in services:
                    await service.reload("SIGHUP")
