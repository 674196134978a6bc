"""Match a request path and verb to an endpoint: a hit, 404, or 405 with the allowed verbs.

Paths are compared segment by segment and literally (``/v1.0/x`` never matches ``/v1x0/x``).
Precedence follows Kernel Gateway: paths without parameters first, in notebook order; then
paths whose first ``:param`` comes later (deeper) before those where it comes earlier. The
first path that matches decides; a verb it lacks is a 405, even if a later path has it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from cellserve.exceptions import NotebookError
from cellserve.notebook import Endpoint, NotebookApi, PathTemplate

ADMIN_PREFIX = "/_cellserve"
"""cellserve's own endpoints: health, readiness, reload, OpenAPI, docs."""
KERNEL_GATEWAY_PREFIX = "/_api"
"""Kernel Gateway's own endpoints: the Swagger spec and the notebook download."""
RESERVED_PREFIXES = (ADMIN_PREFIX, KERNEL_GATEWAY_PREFIX)


def check_reserved(api: NotebookApi) -> None:
    """Refuse a notebook route under a prefix cellserve serves itself."""
    problems = reserved_route_problems(api)
    if problems:
        raise NotebookError.of(problems)


def reserved_route_problems(api: NotebookApi) -> list[str]:
    """One message per notebook route under a prefix cellserve serves itself."""
    problems = []
    for endpoint in api.endpoints:
        path = endpoint.path.raw
        for prefix in RESERVED_PREFIXES:
            if path == prefix or path.startswith(prefix + "/"):
                cells = ", ".join(str(n) for n in endpoint.cell_numbers)
                problems.append(
                    f"{api.name} cell {cells}: `{endpoint.label}` is under {prefix}/, which "
                    "cellserve reserves for its own endpoints; rename the route"
                )
    return problems


@dataclass(frozen=True)
class RouteMatch:
    endpoint: Endpoint
    params: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    allowed: tuple[str, ...]


@dataclass(frozen=True)
class _PathRoutes:
    template: PathTemplate
    by_verb: dict[str, Endpoint]


class RouteTable:
    """The notebook's routes in precedence order; immutable once built."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        grouped: dict[str, _PathRoutes] = {}
        for endpoint in endpoints:
            group = grouped.setdefault(endpoint.path.raw, _PathRoutes(endpoint.path, {}))
            group.by_verb[endpoint.verb] = endpoint
        self._paths = tuple(sorted(grouped.values(), key=lambda g: _precedence(g.template)))

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(e for group in self._paths for e in group.by_verb.values())

    def match(self, raw_segments: Sequence[str], verb: str) -> RouteMatch | MethodNotAllowed | None:
        """Find the route for a path given as its raw (still percent-encoded) segments.

        Raises UnicodeDecodeError when a segment is not UTF-8 once percent-decoded.
        """
        decoded = [unquote(s, errors="strict") for s in raw_segments]
        for group in self._paths:
            params = _match_segments(group.template, decoded)
            if params is None:
                continue
            endpoint = group.by_verb.get(verb)
            if endpoint is None:
                return MethodNotAllowed(tuple(group.by_verb))
            return RouteMatch(endpoint, params)
        return None


def split_raw_path(raw_path: str) -> list[str]:
    """``/a/b%2Fc`` → ``["a", "b%2Fc"]``: split before decoding, so ``%2F`` stays inside."""
    return raw_path[1:].split("/") if raw_path.startswith("/") else raw_path.split("/")


def _precedence(template: PathTemplate) -> tuple[int, int]:
    params = [i for i, s in enumerate(template.segments) if s.is_param]
    if not params:
        return (0, 0)
    return (1, -params[0])


def _match_segments(template: PathTemplate, decoded: Sequence[str]) -> dict[str, str] | None:
    if len(template.segments) != len(decoded):
        return None
    params: dict[str, str] = {}
    for segment, value in zip(template.segments, decoded, strict=True):
        if segment.is_param:
            if not value:
                return None
            params[segment.text] = value
        elif segment.text != value:
            return None
    return params
