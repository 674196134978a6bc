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
