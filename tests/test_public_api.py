"""The public API is `cellserve.__all__`: exactly these names, all importable, nothing private."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import types

import cellserve
from cellserve import exceptions

INTENDED = {
    "CellserveError",
    "ExecutionTimeout",
    "KernelDied",
    "KernelError",
    "KernelOutOfMemory",
    "NotebookError",
    "RequestFailed",
    "SeedError",
    "Settings",
    "SettingsError",
    "Unavailable",
    "app_from_notebook",
    "app_from_notebooks",
    "lifespan",
}


def test_all_is_exactly_the_intended_names() -> None:
    assert set(cellserve.__all__) == INTENDED
    assert len(cellserve.__all__) == len(INTENDED)  # no duplicates
    assert list(cellserve.__all__) == sorted(cellserve.__all__)


def test_every_name_in_all_is_importable() -> None:
    module = importlib.import_module("cellserve")
    for name in cellserve.__all__:
        value = getattr(module, name)
        assert value is not None
        assert value.__module__.startswith("cellserve."), name
        assert inspect.getdoc(value), f"{name} has no docstring"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from cellserve import *", namespace)
    assert set(namespace) - {"__builtins__"} == INTENDED


def test_nothing_private_or_unlisted_leaks() -> None:
    assert not [name for name in cellserve.__all__ if name.startswith("_")]
    public = {
        name
        for name, value in vars(cellserve).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == INTENDED


def test_every_error_class_is_exported_and_rooted_at_cellserve_error() -> None:
    errors = {
        name
        for name, value in vars(exceptions).items()
        if inspect.isclass(value) and issubclass(value, Exception)
    }
    assert errors <= INTENDED
    for name in errors:
        assert issubclass(getattr(cellserve, name), cellserve.CellserveError)
    assert issubclass(cellserve.KernelDied, cellserve.KernelError)


def test_version_is_the_distributions_version() -> None:
    assert cellserve.__version__ == importlib.metadata.version("cellserve")
