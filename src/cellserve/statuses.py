"""The HTTP statuses a ResponseInfo cell can answer, read from its code without running it.

A ResponseInfo cell prints ``{"status": ..., "headers": ...}``. The status is often computed::

    print(json.dumps({"status": 400 if price_error is not None else 200}))

    code = HTTPStatus.CREATED if created else 409
    print(json.dumps({"status": code}))

For Python the cell's syntax tree is read: every expression in a status position (a ``"status"``
dict key, a ``status=`` keyword, a ``x["status"] = ...`` assignment) is followed through
conditional expressions, ``and``/``or``, dict lookups and plain names assigned in the same cell,
collecting the integer literals and ``HTTPStatus`` members it can take. Other languages, and
cells Python cannot parse, fall back to literal ``"status": NNN`` text.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from http import HTTPStatus

_STATUS_IN_SOURCE = re.compile(r"""["']status["']\s*:\s*([1-5][0-9][0-9])\b""")
_KEY = "status"


def response_info_statuses(source: str, language: str = "python") -> tuple[int, ...]:
    """The statuses `source` visibly sets, sorted; ``()`` when none can be found."""
    tree = _parse(source) if language.lower() == "python" else None
    if tree is None:
        found = {int(code) for code in _STATUS_IN_SOURCE.findall(source)}
    else:
        found = _Finder(tree).statuses()
    return tuple(sorted(code for code in found if 100 <= code <= 599))


def _parse(source: str) -> ast.Module | None:
    # IPython magics and shell escapes are not Python; they never set the status.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n")]
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # last two: nested too deeply
        return None


class _Finder:
    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.assignments: dict[str, list[ast.expr]] = {}
        for node in ast.walk(tree):
            for target, value in _assigned(node):
                if isinstance(target, ast.Name):
                    self.assignments.setdefault(target.id, []).append(value)

    def statuses(self) -> set[int]:
        found: set[int] = set()
        for expression in self._status_expressions():
            found |= self._values(expression, frozenset())
        return found

    def _status_expressions(self) -> Iterator[ast.expr]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if _is_status_key(key):
                        yield value
            elif isinstance(node, ast.Call):
                yield from (k.value for k in node.keywords if k.arg == _KEY)
            for target, value in _assigned(node):
                if isinstance(target, ast.Subscript) and _is_status_key(target.slice):
                    yield value

    def _values(self, node: ast.expr, seen: frozenset[str]) -> set[int]:
        """The integers `node` can evaluate to, as far as literals and local names show."""
        if isinstance(node, ast.Constant):
            value = node.value
            return {value} if isinstance(value, int) and not isinstance(value, bool) else set()
        if isinstance(node, ast.IfExp):
            return self._values(node.body, seen) | self._values(node.orelse, seen)
        if isinstance(node, ast.BoolOp):
            return set().union(*(self._values(v, seen) for v in node.values))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            return set().union(*(self._values(v, seen) for v in node.value.values))
        if isinstance(node, ast.Call) and len(node.args) == 1:  # int(x), HTTPStatus(x)
            return self._values(node.args[0], seen)
        if isinstance(node, ast.Attribute) and node.attr in HTTPStatus.__members__:
            return {int(HTTPStatus[node.attr])}
        if isinstance(node, ast.Name) and node.id not in seen:
            inner = seen | {node.id}
            return set().union(*(self._values(v, inner) for v in self.assignments.get(node.id, [])))
        return set()


def _is_status_key(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value == _KEY


def _assigned(node: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs of an assignment statement."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield target, node.value
    elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None:
        yield node.target, node.value
