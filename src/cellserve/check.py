"""Everything wrong with a notebook as an API, found without serving it (``cellserve check``).

Errors: what stops the notebook from loading (bad annotations, paths, directives,
declarations), routes under cellserve's reserved prefixes, duplicate routes, and syntax
errors in endpoint and ResponseInfo cells. A route is a duplicate when an earlier path with
other parameter names takes its requests (``/users/:id`` then ``/users/:name``), or when its
annotation is repeated in cells that are not consecutive: the server joins such cells, as
Kernel Gateway does, but apart they are almost always a copy that was meant to be renamed
(a route deliberately split over consecutive cells is fine). Warnings: ResponseInfo cells
without an endpoint, YAML blocks that declare nothing, statuses a ResponseInfo cell can set
that the route's declared responses leave out, routes that move the docs aside.
With a kernel, ``seed_timings`` also runs the seed cells and times each.

Cell numbers are those of every cellserve message: code cells counted from 1, skipping
empty ones, i.e. the ``[N]`` Jupyter shows after "Restart Kernel and Run All Cells".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

from cellserve.exceptions import NotebookError
from cellserve.kernels import Kernel, KernelConfig
from cellserve.notebook import Endpoint, NotebookApi, load_notebook
from cellserve.routing import reserved_route_problems

_DOCS_ALIASES = ("/docs", "/openapi.json")


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    message: str


@dataclass(frozen=True)
class CheckResult:
    """What `check_notebook` found; `api` is None when the notebook did not load."""

    findings: tuple[Finding, ...]
    api: NotebookApi | None

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return len(self.findings) - self.errors


@dataclass(frozen=True)
class SeedTiming:
    cell: int
    seconds: float


def check_notebook(
    path: str | Path, *, kernel_name: str | None = None, comment_prefix: str | None = None
) -> CheckResult:
    """Every problem of the notebook at `path`, errors first, each naming its cell."""
    try:
        api = load_notebook(path, kernel_name=kernel_name, comment_prefix=comment_prefix)
    except NotebookError as exc:
        return CheckResult(tuple(Finding(Severity.ERROR, p) for p in exc.problems), None)
    errors = [
        *reserved_route_problems(api),
        *_repeated_annotations(api),
        *_unreachable_routes(api),
        *(error.describe(api.name) for error in api.syntax_errors),
    ]
    warnings = [*api.warnings, *_undeclared_statuses(api), *_docs_moved(api)]
    findings = [Finding(Severity.ERROR, m) for m in errors]
    findings += [Finding(Severity.WARNING, m) for m in warnings]
    return CheckResult(tuple(findings), api)


async def seed_timings(api: NotebookApi, folder: Path) -> list[SeedTiming]:
    """Start one kernel in `folder`, run the seed cells one by one and time each.

    A failing cell raises SeedError, as when serving.
    """
    config = KernelConfig(api.kernel_name, api.language, cwd=folder, fast=False)
    kernel = await Kernel.start(config)
    starts: list[float] = []
    try:
        await kernel.seed(api.seeds, lambda _cell, _cells: starts.append(time.perf_counter()))
        starts.append(time.perf_counter())
    finally:
        await kernel.shutdown()
    return [
        SeedTiming(seed.number, end - start)
        for seed, start, end in zip(api.seeds, starts, starts[1:], strict=False)
    ]


def _shape(endpoint: Endpoint) -> tuple[str | None, ...]:
    """The requests a path matches: its segments, with every parameter alike."""
    return tuple(None if s.is_param else s.text for s in endpoint.path.segments)


def _cells(endpoint: Endpoint) -> str:
    numbers = [str(n) for n in endpoint.cell_numbers]
    return "cell " + numbers[0] if len(numbers) == 1 else "cells " + ", ".join(numbers)


def _unreachable_routes(api: NotebookApi) -> list[str]:
    """Routes whose path is spelt differently from an earlier one matching the same requests
    (``/users/:id`` then ``/users/:name``): the earlier path answers all of them."""
    first_by_shape: dict[tuple[str | None, ...], Endpoint] = {}
    verbs_by_path: dict[str, set[str]] = {}
    for endpoint in api.endpoints:
        verbs_by_path.setdefault(endpoint.path.raw, set()).add(endpoint.verb)
    problems = []
    for endpoint in api.endpoints:
        first = first_by_shape.setdefault(_shape(endpoint), endpoint)
        if first.path.raw == endpoint.path.raw:
            continue
        where = f"{api.name} {_cells(endpoint)}: `{endpoint.label}`"
        earlier = f"`{first.path.raw}` ({_cells(first)})"
        if endpoint.verb in verbs_by_path[first.path.raw]:
            problems.append(
                f"{where} repeats `{endpoint.verb} {first.path.raw}` ({_cells(first)}) under "
                "other parameter names and is never reached; remove one or merge them"
            )
        else:
            problems.append(
                f"{where} is never reached: {earlier} matches the same requests first and "
                f"answers {endpoint.verb} with 405; spell the path `{first.path.raw}`"
            )
    return problems


def _repeated_annotations(api: NotebookApi) -> list[str]:
    """Routes annotated in cells that are not consecutive code cells."""
    problems = []
    for endpoint in api.endpoints:
        numbers = endpoint.cell_numbers
        if any(later != earlier + 1 for earlier, later in pairwise(numbers)):
            problems.append(
                f"{api.name} {_cells(endpoint)} repeat `{endpoint.label}`; the server joins "
                "them into one route (Kernel Gateway's rule), which is rarely meant for cells "
                "apart: rename one, or put the parts of one route in consecutive cells"
            )
    return problems


def _undeclared_statuses(api: NotebookApi) -> list[str]:
    """Statuses the ResponseInfo code can set that declared `responses` do not list."""
    problems = []
    for endpoint in api.endpoints:
        declared = {r.status for r in endpoint.contract.responses} if endpoint.contract else set()
        if not declared or "default" in declared:
            continue
        missing = [str(s) for s in endpoint.response_info_statuses if str(s) not in declared]
        if missing:
            problems.append(
                f"{api.name} {_cells(endpoint)}: `{endpoint.label}` can answer "
                f"{', '.join(missing)} (its ResponseInfo cell), which its declared responses "
                "leave out"
            )
    return problems


def _docs_moved(api: NotebookApi) -> list[str]:
    return [
        f"{api.name} {_cells(e)}: `{e.label}` takes {e.path.raw}, so the docs stay at "
        f"/_cellserve{e.path.raw} only"
        for e in api.endpoints
        if e.path.raw in _DOCS_ALIASES and e.verb == "GET"
    ]
