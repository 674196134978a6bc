"""Find syntax errors in Python endpoint cells by compiling them, without a kernel.

A cell is compiled as IPython would run it: magics and shell escapes are first turned into
Python by IPython's own input transformer, and top-level ``await`` is allowed.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass

from IPython.core.inputtransformer2 import TransformerManager

_TRANSFORMER = TransformerManager()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class CellSyntaxError:
    """A syntax error in one cell of a route; `line` counts from 1 at the top of the cell."""

    kind: str
    message: str
    cell: int
    line: int | None
    route: str

    @property
    def evalue(self) -> str:
        """The error's text for a response, as Python words it, the route in place of a file."""
        where = f", line {self.line}" if self.line else ""
        return f"{self.message} ({self.route}, cell {self.cell}{where})"

    def describe(self, notebook: str) -> str:
        where = f", line {self.line}" if self.line else ""
        return f"{notebook} cell {self.cell}{where}: `{self.route}`: {self.kind}: {self.message}"


def find_syntax_error(source: str, *, cell: int, route: str) -> CellSyntaxError | None:
    """The first syntax error in the Python cell `source`, or None if it compiles."""
    try:
        code = _TRANSFORMER.transform_cell(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for an invalid escape
            compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError as exc:
        return CellSyntaxError(type(exc).__name__, str(exc.msg), cell, exc.lineno, route)
    except ValueError as exc:  # e.g. a null character in the source
        return CellSyntaxError("SyntaxError", str(exc), cell, None, route)
    except (RecursionError, MemoryError) as exc:  # nested too deeply for CPython's parser
        message = str(exc) or "the code is nested too deeply to parse"
        return CellSyntaxError(type(exc).__name__, message, cell, None, route)
    return None
