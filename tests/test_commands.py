"""``cellserve check | routes | openapi`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from openapi_spec_validator import validate

from cellserve import app_from_notebook
from tests.processes import CELLSERVE, run_quick
from tests.servers import ServerThread, write_notebook

GOOD = [
    "import json",
    ("markdown", "Greet someone.\n\n```yaml\nquery:\n  loud: boolean\n```"),
    "# GET /hello/:name\nprint('hello')",
    "# GET /hello/world\nprint('world')",
    ("markdown", "Add a user."),
    "# POST /users\nprint(1)",
    '# ResponseInfo POST /users\nprint(json.dumps({"status": 201 if True else 409}))',
]


def cellserve(*args: str | Path, timeout: float = 30) -> tuple[int, str, str]:
    result = run_quick([CELLSERVE, *map(str, args)], timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def test_check_passes_a_good_notebook(tmp_path: Path) -> None:
    code, out, err = cellserve("check", write_notebook(tmp_path / "good.ipynb", GOOD))
    assert (code, err) == (0, "")
    assert out == "good.ipynb: 3 routes, 0 errors, 0 warnings\n"


def test_check_fails_on_a_duplicate_route_naming_both_cells(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "dup.ipynb",
        [
            "import json",
            "# GET /users/:id\nprint(1)",
            "# GET /users/:name\nprint(2)",
            "# POST /users/:user\nprint(3)",
            "# GET /users/:id\nprint(4)",  # a copy: joined with cell 2, as Kernel Gateway does
        ],
    )
    code, out, _ = cellserve("check", path)
    assert code == 1
    assert out.splitlines() == [
        "error: dup.ipynb cells 2, 5 repeat `GET /users/:id`; the server joins them into one "
        "route (Kernel Gateway's rule), which is rarely meant for cells apart: rename one, or "
        "put the parts of one route in consecutive cells",
        "error: dup.ipynb cell 3: `GET /users/:name` repeats `GET /users/:id` (cells 2, 5) under "
        "other parameter names and is never reached; remove one or merge them",
        "error: dup.ipynb cell 4: `POST /users/:user` is never reached: `/users/:id` (cells 2, 5) "
        "matches the same requests first and answers POST with 405; spell the path `/users/:id`",
        "dup.ipynb: 3 routes, 3 errors, 0 warnings",
    ]


def test_check_accepts_a_route_split_over_consecutive_cells(tmp_path: Path) -> None:
    # Kernel Gateway joins cells with the same annotation; consecutive ones are one route.
    path = write_notebook(
        tmp_path / "split.ipynb",
        ["# GET /multi\nx = 1", ("markdown", "Then print it."), "# GET /multi\nprint(x)"],
    )
    assert cellserve("check", path) == (0, "split.ipynb: 1 route, 0 errors, 0 warnings\n", "")


def test_check_fails_on_endpoint_syntax_errors_naming_cell_line_and_route(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "typo.ipynb",
        [
            "x = 1",
            ("markdown", "Numbering skips this markdown cell and the empty code cell below."),
            "",
            "# GET /ok\nprint(x)",
            "# GET /typo\nif x:\nprint(x)",
            "# ResponseInfo GET /ok\nprint('{' +)",
        ],
    )
    code, out, _ = cellserve("check", path)
    assert code == 1
    assert out.splitlines() == [
        "error: typo.ipynb cell 4, line 2: `ResponseInfo GET /ok`: SyntaxError: invalid syntax",
        "error: typo.ipynb cell 3, line 3: `GET /typo`: IndentationError: expected an indented "
        "block after 'if' statement on line 2",
        "typo.ipynb: 2 routes, 2 errors, 0 warnings",
    ]


def test_check_lists_every_load_error_and_reserved_paths(tmp_path: Path) -> None:
    broken = write_notebook(
        tmp_path / "broken.ipynb",
        [
            ("markdown", "```yaml\nquery:\n  n: {type: integer, default: many}\n```"),
            "# GET /a\nprint(1)",
            "# GET /b/:\nprint(1)",
            "# GET /c\n# cellserve: fast\nprint(1)",
        ],
    )
    reserved = write_notebook(tmp_path / "reserved.ipynb", ["# GET /_cellserve/x\nprint(1)"])
    code, out, _ = cellserve("check", broken, reserved)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("error: broken.ipynb, markdown cell above cell 1, line 3: ")
    assert "query.n.default: does not match the schema: 'many' is not of type 'integer'" in lines[0]
    assert lines[1].startswith("error: broken.ipynb cell 2 (`# GET /b/:`): ")
    assert lines[2].startswith("error: broken.ipynb cell 3: unknown directive `fast`")
    assert lines[3] == "broken.ipynb: 3 errors, 0 warnings"
    assert lines[4].startswith("error: reserved.ipynb cell 1: `GET /_cellserve/x` is under")
    assert lines[5] == "reserved.ipynb: 1 route, 1 error, 0 warnings"


def test_check_strict_fails_on_warnings(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "warn.ipynb",
        [
            "import json",
            ("markdown", "```yaml\nresponses: {200: Fine}\n```"),
            "# GET /x\nprint(1)",
            "# ResponseInfo GET /x\nprint(json.dumps({'status': 200 if ok else 404}))",
            "# ResponseInfo GET /y\nprint('{}')",
        ],
    )
    code, out, _ = cellserve("check", path)
    assert code == 0
    assert out.splitlines() == [
        "warning: warn.ipynb cell 4: `ResponseInfo GET /y` has no `GET /y` endpoint cell and is "
        "ignored",
        "warning: warn.ipynb cell 2: `GET /x` can answer 404 (its ResponseInfo cell), which its "
        "declared responses leave out",
        "warn.ipynb: 1 route, 0 errors, 2 warnings",
    ]
    assert cellserve("check", "--strict", path)[0] == 1


def test_check_seed_times_each_seed_cell_and_fails_on_a_seed_error(tmp_path: Path) -> None:
    good = write_notebook(tmp_path / "good.ipynb", [*GOOD, "import time\ntime.sleep(0.2)"])
    bad = write_notebook(tmp_path / "bad.ipynb", ["x = 1", "1 / 0", "# GET /x\nprint(x)"])
    code, out, err = cellserve("check", "--seed", good, bad, timeout=180)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("seed: good.ipynb cell 1: ")
    slept = lines[1]
    assert slept.startswith("seed: good.ipynb cell 6: ") and slept.endswith(" s")
    assert float(slept.split(": ")[-1].removesuffix(" s")) >= 0.2
    assert lines[2].startswith("seed: good.ipynb: 2 cells in ")
    assert lines[3] == "good.ipynb: 3 routes, 0 errors, 0 warnings"
    assert lines[4] == "error: bad.ipynb seed cell 2 raised ZeroDivisionError: division by zero"
    assert "ZeroDivisionError" in err  # the traceback, apart from the findings


def test_routes_prints_verb_path_cells_summary_in_matching_order(tmp_path: Path) -> None:
    code, out, _ = cellserve("routes", write_notebook(tmp_path / "good.ipynb", GOOD))
    assert code == 0
    assert out.splitlines() == [
        "VERB  PATH          CELLS  SUMMARY",
        "GET   /hello/world  3",
        "POST  /users        4      Add a user.",
        "GET   /hello/:name  2      Greet someone.",
    ]


def test_routes_and_openapi_refuse_a_broken_notebook(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "broken.ipynb", ["# GET /b/:\nprint(1)"])
    for command in ("routes", "openapi"):
        code, out, err = cellserve(command, path)
        assert (code, out) == (1, "")
        assert err.startswith("cellserve: broken.ipynb cell 1 (`# GET /b/:`): ")


def test_openapi_prints_the_document_the_server_publishes(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "good.ipynb", GOOD)
    code, out, _ = cellserve("openapi", path, "--server-url", "/api", "--auth")
    assert code == 0
    document = json.loads(out)
    validate(document)
    assert document["servers"] == [{"url": "/api"}]
    assert document["info"]["title"] == "good.ipynb"
    assert set(document["paths"]) == {"/hello/{name}", "/hello/world", "/users"}
    hello = document["paths"]["/hello/{name}"]["get"]
    assert hello["parameters"][1] == {
        "name": "loud",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
    }
    assert set(document["paths"]["/users"]["post"]["responses"]) >= {"201", "409", "401"}


def test_openapi_is_what_the_server_publishes(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "good.ipynb", GOOD)
    code, out, _ = cellserve("openapi", path)
    assert code == 0
    with ServerThread(app_from_notebook(path)) as server:
        served = httpx.get(server.url + "/openapi.json", timeout=60).json()
    printed = json.loads(out)
    assert printed.pop("servers") == [{"url": "/"}]
    served.pop("servers")
    assert printed == served


def test_the_projects_own_notebooks_pass_check() -> None:
    root = Path(__file__).resolve().parents[1]
    notebooks = sorted([*root.glob("examples/*/*.ipynb"), *root.glob("benchmarks/*.ipynb")])
    assert notebooks
    code, out, _ = cellserve("check", "--strict", *notebooks)
    assert code == 0, out
    assert out.count(" 0 errors, 0 warnings") == len(notebooks)
