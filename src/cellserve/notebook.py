"""Read a notebook and describe the API its annotated cells declare.

This stage is pure: no kernel, no HTTP. It follows Kernel Gateway's notebook-http grammar:

    # GET /users/:id          an endpoint cell (verb upper-case, at least one space)
    # ResponseInfo GET /users/:id
                              a companion cell printing {"status": ..., "headers": {...}}

Cells with the same verb and path are joined in notebook order; every other code cell is a
seed cell, run once on each new kernel. cellserve also accepts PATCH, and reads optional
directives from comment lines right under the annotation, e.g. ``# cellserve: stream``,
``# cellserve: timeout=30`` or ``# cellserve: batch max_size=64 max_wait_ms=2`` (batching.py).

Cell numbers in every message count code cells only, from 1, skipping empty ones: cell N is
the cell Jupyter labels ``[N]`` after "Restart Kernel and Run All Cells". Markdown and raw
cells have no number; a markdown cell is named by the code cell below it.

The markdown cell directly above an endpoint gives its summary and description, and may
declare its parameters, body and responses in a fenced YAML block (see declaration.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from cellserve.declaration import (
    Contract,
    DeclarationError,
    parse_declaration,
    split_declaration,
)
from cellserve.exceptions import NotebookError
from cellserve.statuses import response_info_statuses
from cellserve.syntax import CellSyntaxError, find_syntax_error

VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH")

_COMMENT_PREFIXES: Mapping[str, str] = {
    language: "//"
    for language in ("scala", "java", "kotlin", "javascript", "typescript", "c++", "go", "rust")
}
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DIRECTIVE = re.compile(r"cellserve:\s*(.*)")


@dataclass(frozen=True)
class Segment:
    """One `/`-separated piece of a route path: literal text or a `:name` parameter."""

    text: str
    is_param: bool


@dataclass(frozen=True)
class PathTemplate:
    """An annotated path such as ``/price/:zip``, split into segments."""

    raw: str
    segments: tuple[Segment, ...]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.segments if s.is_param)

    @property
    def openapi_path(self) -> str:
        """The path in OpenAPI syntax: ``/price/{zip}``."""
        return "/" + "/".join(f"{{{s.text}}}" if s.is_param else s.text for s in self.segments)

    @classmethod
    def parse(cls, raw: str) -> PathTemplate:
        """Split `raw`; raise ValueError with a reason when it is not a usable path."""
        if not raw.startswith("/"):
            raise ValueError("a path must start with '/'")
        if any(ch.isspace() for ch in raw):
            raise ValueError("a path cannot contain spaces")
        if "?" in raw or "#" in raw:
            raise ValueError("a path cannot contain '?' or '#'; query arguments arrive in args")
        if "{" in raw or "}" in raw:
            raise ValueError("a path parameter is written ':name', not '{name}'")
        segments = []
        for piece in raw[1:].split("/"):
            if piece.startswith(":"):
                name = piece[1:]
                if not _PARAM_NAME.match(name):
                    raise ValueError(f"path parameter ':{name}' needs a name like ':zip'")
                segments.append(Segment(name, is_param=True))
            else:
                segments.append(Segment(piece, is_param=False))
        names = [s.text for s in segments if s.is_param]
        if len(names) != len(set(names)):
            raise ValueError("a path parameter name is used twice")
        return cls(raw, tuple(segments))


@dataclass(frozen=True)
class BatchOptions:
    """``# cellserve: batch``: one cell run answers up to `max_size` queued requests.

    `max_wait` (seconds, from ``max_wait_ms``) is how long a batch may wait for more
    requests before it asks for a kernel; 0 means it never waits.
    """

    max_size: int = 64
    max_wait: float = 0.0


@dataclass(frozen=True)
class RouteOptions:
    """Per-route directives from ``# cellserve: ...`` lines."""

    stream: bool = False
    timeout: float | None = None
    job: bool = False
    batch: BatchOptions | None = None


@dataclass(frozen=True)
class Endpoint:
    """One verb on one path, with the joined source of its cells."""

    verb: str
    path: PathTemplate
    source: str
    cell_numbers: tuple[int, ...]
    response_info: str | None = None
    summary: str | None = None
    description: str | None = None
    options: RouteOptions = RouteOptions()
    # Schemas are dicts: compared, but left out of the hash so an Endpoint stays hashable.
    contract: Contract | None = field(default=None, hash=False)
    response_info_statuses: tuple[int, ...] = ()
    syntax_error: CellSyntaxError | None = None

    @property
    def label(self) -> str:
        return f"{self.verb} {self.path.raw}"


@dataclass(frozen=True)
class SeedCell:
    number: int
    source: str


@dataclass(frozen=True)
class NotebookApi:
    """Everything the server needs from one notebook, immutable."""

    name: str
    kernel_name: str
    language: str
    seeds: tuple[SeedCell, ...]
    endpoints: tuple[Endpoint, ...]
    source_text: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def syntax_errors(self) -> tuple[CellSyntaxError, ...]:
        """The first syntax error of each route that has one (Python notebooks only)."""
        return tuple(e.syntax_error for e in self.endpoints if e.syntax_error is not None)

    def kernel_identity(self) -> tuple[object, ...]:
        """What decides whether a kernel built for this API can serve another version."""
        return (self.kernel_name, self.language, self.seeds)


def load_notebook(
    path: str | Path,
    *,
    kernel_name: str | None = None,
    comment_prefix: str | None = None,
) -> NotebookApi:
    """Read `path` and parse it; every failure is a NotebookError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotebookError(f"cannot read notebook {path}: {exc}") from exc
    return parse_notebook_text(
        text, name=path.name, kernel_name=kernel_name, comment_prefix=comment_prefix
    )


def parse_notebook_text(
    text: str,
    *,
    name: str,
    kernel_name: str | None = None,
    comment_prefix: str | None = None,
) -> NotebookApi:
    """Parse notebook JSON text; `name` is the file name used in messages and titles."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(
            f"{name} is not valid notebook JSON (line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); was the file saved completely?"
        ) from exc
    try:
        notebook = nbformat.from_dict(raw)  # type: ignore[no-untyped-call]
        if notebook.get("nbformat", 0) < 4:
            notebook = nbformat.convert(notebook, 4)  # type: ignore[no-untyped-call]
        cells = list(notebook["cells"])
    except (KeyError, TypeError, ValueError, AttributeError, nbformat.ValidationError) as exc:
        raise NotebookError(f"{name} is not an nbformat v4 notebook: {exc}") from exc
    for position, cell in enumerate(cells, start=1):
        if not isinstance(cell, Mapping):
            raise NotebookError(
                f"{name}: item {position} of `cells` is not a notebook cell: {cell!r:.60}"
            )
    metadata = notebook.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise NotebookError(f"{name}: metadata must be a JSON object")
    return _describe(cells, metadata, name, text, kernel_name, comment_prefix)


def comment_prefix_for(language: str) -> str:
    """The line-comment prefix Kernel Gateway assumes for a kernel language."""
    return _COMMENT_PREFIXES.get(language.lower(), "#")


@dataclass
class _Draft:
    verb: str
    path: PathTemplate
    sources: list[str] = field(default_factory=list)
    cell_numbers: list[int] = field(default_factory=list)
    info_sources: list[str] = field(default_factory=list)
    info_cell_numbers: list[int] = field(default_factory=list)
    markdown_above: str | None = None
    first_comment: list[str] = field(default_factory=list)
    options: RouteOptions = RouteOptions()
    contract: Contract | None = None


def _describe(
    cells: list[Any],
    metadata: Mapping[str, Any],
    name: str,
    text: str,
    kernel_name: str | None,
    comment_prefix: str | None,
) -> NotebookApi:
    kernelspec = _mapping(metadata.get("kernelspec"))
    language = str(
        _mapping(metadata.get("language_info")).get("name")
        or kernelspec.get("language")
        or "python"
    )
    prefix = comment_prefix if comment_prefix is not None else comment_prefix_for(language)
    escaped = re.escape(prefix)
    verbs = "|".join(VERBS)
    endpoint_re = re.compile(rf"{escaped}\s+({verbs})\s+(/.*)")
    info_re = re.compile(rf"{escaped}\s+ResponseInfo\s+({verbs})\s+(/.*)")

    drafts: dict[tuple[str, str], _Draft] = {}
    infos: list[tuple[int, str, str, str]] = []
    seeds: list[SeedCell] = []
    warnings: list[str] = []
    problems: list[str] = []
    previous_markdown: str | None = None
    number = 0
    for cell in cells:
        source = _cell_source(cell)
        kind = cell.get("cell_type")
        if kind == "markdown":
            previous_markdown = source
            continue
        if kind != "code" or not source.strip():
            previous_markdown = None
            continue
        number += 1
        info = info_re.match(source)
        endpoint = None if info else endpoint_re.match(source)
        if info:
            infos.append((number, info.group(1), info.group(2).strip(), source))
        elif endpoint:
            try:
                _add_endpoint_cell(
                    drafts, endpoint, source, number, previous_markdown, name, prefix, warnings
                )
            except NotebookError as exc:
                problems.append(str(exc))
        else:
            seeds.append(SeedCell(number, source))
        previous_markdown = None

    for number, verb, raw_path, source in infos:
        target = drafts.get((verb, raw_path))
        if target is None:
            warnings.append(
                f"{name} cell {number}: `ResponseInfo {verb} {raw_path}` has no "
                f"`{verb} {raw_path}` endpoint cell and is ignored"
            )
        elif target.options.batch is not None:
            problems.append(
                f"{name} cell {number}: `{verb} {raw_path}` is batched, so each answer sets its "
                "own status and headers (see `# cellserve: batch`); remove this ResponseInfo cell"
            )
        else:
            target.info_sources.append(source)
            target.info_cell_numbers.append(number)

    if problems:
        raise NotebookError.of(problems)
    if not drafts:
        raise NotebookError(
            f"{name} declares no endpoints: start a code cell with a line like "
            f"`{prefix} GET /hello` to serve it"
        )
    endpoints = tuple(_finish(draft, language) for draft in drafts.values())
    return NotebookApi(
        name=name,
        kernel_name=kernel_name or str(kernelspec.get("name") or "python3"),
        language=language,
        seeds=tuple(seeds),
        endpoints=endpoints,
        source_text=text,
        warnings=tuple(warnings),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _cell_source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _add_endpoint_cell(
    drafts: dict[tuple[str, str], _Draft],
    annotation: re.Match[str],
    source: str,
    number: int,
    markdown_above: str | None,
    name: str,
    prefix: str,
    warnings: list[str],
) -> None:
    verb, raw_path = annotation.group(1), annotation.group(2).strip()
    template = _parse_path(raw_path, name, number, source)
    comments = _comment_lines_after_annotation(source, prefix)
    draft = drafts.get((verb, raw_path))
    if draft is None:
        draft = drafts[(verb, raw_path)] = _Draft(verb, template)
        declared = _declared(markdown_above, template, name, number, warnings)
        draft.markdown_above, draft.contract = declared
        draft.first_comment = comments
    draft.options = _parse_directives(comments, name, number, draft.options)
    draft.sources.append(source)
    draft.cell_numbers.append(number)


def _declared(
    markdown: str | None, template: PathTemplate, name: str, number: int, warnings: list[str]
) -> tuple[str | None, Contract | None]:
    """The markdown above an endpoint without its YAML block, and the Contract it declares."""
    if markdown is None:
        return None, None
    try:
        text, first_line, rest = split_declaration(markdown)
        if text is None:
            return markdown, None
        contract = parse_declaration(text, first_line, template.param_names)
        if contract is None:
            warnings.append(
                f"{name}, markdown cell above cell {number}, line {first_line - 1}: the yaml "
                "block has none of the keys path, query, body, responses, so it is read as "
                "documentation, not as the route's declaration"
            )
            return markdown, None
        return rest, contract
    except DeclarationError as exc:
        raise NotebookError(
            f"{name}, markdown cell above cell {number}, line {exc.line}: {exc}"
        ) from exc


def _parse_path(raw_path: str, name: str, number: int, source: str) -> PathTemplate:
    try:
        return PathTemplate.parse(raw_path)
    except ValueError as exc:
        first_line = source.splitlines()[0]
        raise NotebookError(f"{name} cell {number} (`{first_line}`): {exc}") from exc


def _comment_lines_after_annotation(source: str, prefix: str) -> list[str]:
    lines = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if not stripped.startswith(prefix):
            break
        lines.append(stripped[len(prefix) :].strip())
    return lines


def _parse_directives(
    comments: list[str], name: str, number: int, options: RouteOptions
) -> RouteOptions:
    """`options` updated with the ``# cellserve: ...`` lines of one cell."""
    stream = options.stream
    timeout = options.timeout
    job = options.job
    batch: dict[str, float] | None = None
    if options.batch is not None:
        batch = {"max_size": options.batch.max_size, "max_wait_ms": options.batch.max_wait * 1000}
    for comment in comments:
        match = _DIRECTIVE.match(comment)
        if not match:
            continue
        for word in match.group(1).replace(",", " ").split():
            key, _, value = word.partition("=")
            if key == "stream" and not value:
                stream = True
            elif key == "job" and not value:
                job = True
            elif key == "timeout" and value:
                timeout = _positive(value, f"{name} cell {number}: `timeout={value}`", "seconds")
            elif key == "batch" and not value:
                batch = batch or {}
            elif key in _BATCH_KEYS and value:
                if batch is None:
                    raise NotebookError(
                        f"{name} cell {number}: `{word}` needs `batch` before it, as in "
                        f"`# cellserve: batch {word}`"
                    )
                what = f"{name} cell {number}: `{word}`"
                if key == "max_size":
                    if not value.isdecimal() or int(value) < 1:
                        raise NotebookError(f"{what} must be a whole number of requests, ≥ 1")
                    batch[key] = int(value)
                else:
                    batch[key] = _positive(value, what, "milliseconds", zero=True)
            else:
                raise NotebookError(
                    f"{name} cell {number}: unknown directive `{word}` (known: `stream`, "
                    "`job`, `timeout=SECONDS`, `batch`, `max_size=N`, `max_wait_ms=MS`)"
                )
    if stream and job:
        raise NotebookError(
            f"{name} cell {number}: `stream` and `job` exclude each other: a job's progress is "
            "read from its job URL; keep one"
        )
    if batch is not None and (stream or job):
        raise NotebookError(
            f"{name} cell {number}: a route cannot both `{'stream' if stream else 'job'}` and "
            "`batch`; choose one"
        )
    options_batch = None
    if batch is not None:
        options_batch = BatchOptions(
            max_size=int(batch.get("max_size", BatchOptions.max_size)),
            max_wait=batch.get("max_wait_ms", 0.0) / 1000,
        )
    return RouteOptions(stream=stream, timeout=timeout, job=job, batch=options_batch)


_BATCH_KEYS = ("max_size", "max_wait_ms")


def _positive(value: str, what: str, unit: str, *, zero: bool = False) -> float:
    """`value` as a finite number > 0 (≥ 0 with `zero`), else a NotebookError about `what`."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        sign = "≥ 0" if zero else "positive"
        raise NotebookError(f"{what} must be a {sign} number of {unit}")
    return number


def _finish(draft: _Draft, language: str) -> Endpoint:
    summary, description = _docs_from(draft.markdown_above, draft.first_comment)
    response_info = "".join(s + "\n" for s in draft.info_sources) or None
    return Endpoint(
        verb=draft.verb,
        path=draft.path,
        source="".join(s + "\n" for s in draft.sources),
        cell_numbers=tuple(draft.cell_numbers),
        response_info=response_info,
        summary=summary,
        description=description,
        options=draft.options,
        contract=draft.contract,
        response_info_statuses=response_info_statuses(response_info or "", language),
        syntax_error=_first_syntax_error(draft, language),
    )


def _first_syntax_error(draft: _Draft, language: str) -> CellSyntaxError | None:
    if language.lower() != "python":
        return None
    label = f"{draft.verb} {draft.path.raw}"
    cells = [
        *((n, source, label) for n, source in zip(draft.cell_numbers, draft.sources, strict=True)),
        *(
            (n, source, f"ResponseInfo {label}")
            for n, source in zip(draft.info_cell_numbers, draft.info_sources, strict=True)
        ),
    ]
    for number, source, route in cells:
        error = find_syntax_error(source, cell=number, route=route)
        if error is not None:
            return error
    return None


def _docs_from(markdown: str | None, comments: list[str]) -> tuple[str | None, str | None]:
    """Summary and description: the markdown cell above wins, else the comment lines."""
    if markdown and markdown.strip():
        lines = [line.lstrip("#").strip() for line in markdown.strip().splitlines()]
    else:
        lines = [c for c in comments if c and not _DIRECTIVE.match(c)]
    if not lines:
        return None, None
    description = "\n".join(lines[1:]).strip() or None
    return lines[0], description
