"""``cellserve check | routes | openapi``: look at a notebook's API without serving it.

Each command reads notebooks and prints; none binds a port. ``check --seed`` starts one
kernel per notebook to run and time the seed cells, then stops it.

Exit status: 0 when all is well, 1 when a notebook has errors (or, with ``check --strict``,
warnings), 2 for a usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from cellserve.check import CheckResult, Severity, check_notebook, seed_timings
from cellserve.exceptions import CellserveError, NotebookError, SeedError
from cellserve.notebook import NotebookApi, load_notebook
from cellserve.openapi import Section, openapi_document
from cellserve.routing import RouteTable, check_reserved

_NUMBERING = (
    "Cell numbers count code cells from 1, skipping empty ones: cell N is the one Jupyter "
    "labels [N] after Restart Kernel and Run All Cells."
)


def add_commands(commands: Any) -> None:
    """Register the commands on `commands`, the parser's subparsers action."""
    check = commands.add_parser(
        "check",
        help="list every problem of one or more notebooks (exit 1 if any)",
        description="Find every problem that would stop a notebook from serving, or make a "
        f"route misbehave, without serving it. {_NUMBERING} Exit status: 0 when no notebook "
        "has an error, 1 otherwise (or, with --strict, when any has a warning).",
    )
    check.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", type=Path)
    check.add_argument(
        "--seed", action="store_true", help="also run the seed cells in a kernel and time each"
    )
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    _add_parsing_options(check)
    check.set_defaults(run=run_check)

    routes = commands.add_parser(
        "routes",
        help="list a notebook's routes: verb, path, cells, summary",
        description=f"List the routes in the order requests are matched. {_NUMBERING}",
    )
    routes.add_argument("notebook", metavar="NOTEBOOK", type=Path)
    _add_parsing_options(routes)
    routes.set_defaults(run=run_routes)

    openapi = commands.add_parser(
        "openapi",
        help="print a notebook's OpenAPI 3.1 document",
        description="Print the OpenAPI 3.1 document the server would publish at /openapi.json.",
    )
    openapi.add_argument("notebook", metavar="NOTEBOOK", type=Path)
    openapi.add_argument("--server-url", default="/", help="the API's base URL (default /)")
    openapi.add_argument("--title", help="the document's title (default: the file name)")
    openapi.add_argument(
        "--auth", action="store_true", help="declare the token the server will require"
    )
    _add_parsing_options(openapi)
    openapi.set_defaults(run=run_openapi)


def _add_parsing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel-name", help="kernelspec to use instead of the notebook's")
    parser.add_argument("--comment-prefix", help="annotation comment prefix (default by language)")


def run_check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.notebooks:
        result = check_notebook(
            path, kernel_name=args.kernel_name, comment_prefix=args.comment_prefix
        )
        for finding in result.findings:
            print(f"{finding.severity.value}: {finding.message}")
        timed = _report_seeds(result, path) if args.seed and not result.errors else True
        print(_summary(path, result))
        failed |= not timed or bool(result.errors) or (args.strict and bool(result.warnings))
    return 1 if failed else 0


def _report_seeds(result: CheckResult, path: Path) -> bool:
    assert result.api is not None
    api = result.api
    try:
        timings = asyncio.run(seed_timings(api, path.resolve().parent))
    except SeedError as exc:
        print(f"{Severity.ERROR.value}: {api.name} {exc}")
        if exc.traceback:
            print(exc.traceback.rstrip(), file=sys.stderr)
        return False
    except CellserveError as exc:
        print(f"{Severity.ERROR.value}: {api.name}: {exc}")
        return False
    for timing in timings:
        print(f"seed: {api.name} cell {timing.cell}: {timing.seconds:.2f} s")
    print(f"seed: {api.name}: {len(timings)} cells in {sum(t.seconds for t in timings):.2f} s")
    return True


def _summary(path: Path, result: CheckResult) -> str:
    counts = [_count(result.errors, "error"), _count(result.warnings, "warning")]
    if result.api is not None:
        counts.insert(0, _count(len(result.api.endpoints), "route"))
    return f"{path.name}: {', '.join(counts)}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def run_routes(args: argparse.Namespace) -> int:
    api = _load(args)
    if api is None:
        return 1
    rows = [("VERB", "PATH", "CELLS", "SUMMARY")]
    for endpoint in RouteTable(api.endpoints).endpoints:
        cells = ",".join(str(n) for n in endpoint.cell_numbers)
        rows.append((endpoint.verb, endpoint.path.raw, cells, endpoint.summary or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for verb, path, cells, summary in rows:
        columns = (verb.ljust(widths[0]), path.ljust(widths[1]), cells.ljust(widths[2]), summary)
        print("  ".join(columns).rstrip())
    return 0


def run_openapi(args: argparse.Namespace) -> int:
    api = _load(args)
    if api is None:
        return 1
    document = openapi_document(
        [Section("", api)],
        title=args.title or api.name,
        server_url=args.server_url,
        auth=args.auth,
    )
    try:
        print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # e.g. `cellserve openapi nb.ipynb | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _load(args: argparse.Namespace) -> NotebookApi | None:
    """The notebook's API as the server would load it, or None after printing why not."""
    try:
        api = load_notebook(
            args.notebook, kernel_name=args.kernel_name, comment_prefix=args.comment_prefix
        )
        check_reserved(api)
    except NotebookError as exc:
        for problem in exc.problems:
            print(f"cellserve: {problem}", file=sys.stderr)
        return None
    return api
