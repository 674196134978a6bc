"""The pure stages import nothing that talks to a kernel: checked from their source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import cellserve

PACKAGE = Path(cellserve.__file__).parent
JUPYTER_BOUNDARY = (
    "jupyter_client",
    "nbclient",
    "zmq",
    "IPython",
    "ipykernel",
    "cellserve.kernels",
    "cellserve.kernel_dispatch",
    "cellserve.pool",
)
PURE = ["cells", "response", "scheduler", "request", "routing", "notebook", "dispatch_common"]


def imported_modules(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE)
def test_pure_stage_does_not_import_the_jupyter_boundary(module: str) -> None:
    crossing = {
        name
        for name in imported_modules(module)
        for boundary in JUPYTER_BOUNDARY
        if name == boundary or name.startswith(boundary + ".")
    }
    assert crossing == set(), f"{module}.py imports {sorted(crossing)}"


def test_the_dispatcher_helpers_need_only_the_standard_library() -> None:
    # dispatch_common.py runs inside every kernel, where cellserve may not be installed.
    outside = {
        name
        for name in imported_modules("dispatch_common")
        if name.split(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set()
