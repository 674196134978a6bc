"""syntax.py: endpoint cells compiled as IPython runs them, without a kernel."""

from __future__ import annotations

import pytest

from cellserve.syntax import find_syntax_error


@pytest.mark.parametrize(
    "source",
    [
        "# GET /x\nprint(1)",
        "# GET /x\n%time x = 1\n!echo hi\nx?",
        "# GET /x\nawait something()",  # top-level await, as IPython allows
        "%%bash\necho ((",  # a cell magic's body is not Python
    ],
)
def test_cells_ipython_can_run_compile(source: str) -> None:
    assert find_syntax_error(source, cell=3, route="GET /x") is None


def test_a_syntax_error_names_the_route_cell_and_line_not_a_file() -> None:
    error = find_syntax_error("# GET /x\nprint(1)\ndef broken(:", cell=4, route="GET /x")
    assert error is not None
    assert (error.kind, error.cell, error.line) == ("SyntaxError", 4, 3)
    assert error.evalue == "invalid syntax (GET /x, cell 4, line 3)"
    assert (
        error.describe("api.ipynb")
        == "api.ipynb cell 4, line 3: `GET /x`: SyntaxError: invalid syntax"
    )


@pytest.mark.parametrize(
    ("source", "kind", "message"),
    [
        ("# GET /x\n  x = 1", "IndentationError", "unexpected indent"),
        ("# GET /x\nreturn 1", "SyntaxError", "'return' outside function"),
    ],
)
def test_compiler_errors_are_found_too(source: str, kind: str, message: str) -> None:
    error = find_syntax_error(source, cell=1, route="GET /x")
    assert error is not None
    assert (error.kind, error.message, error.line) == (kind, message, 2)


@pytest.mark.parametrize("expression", ["-" * 100_000 + "1", "1+" * 100_000 + "1"])
def test_code_nested_too_deeply_to_parse_is_an_error_of_its_cell(expression: str) -> None:
    # CPython's parser gives up with MemoryError or RecursionError; IPython could not run it.
    error = find_syntax_error(f"# GET /x\nx = {expression}", cell=2, route="GET /x")
    assert error is not None
    assert (error.cell, error.route) == (2, "GET /x")
    assert error.kind in ("RecursionError", "MemoryError")
