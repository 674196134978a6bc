"""cellserve: serve a Jupyter notebook's annotated cells as a fast, reliable HTTP API.

from cellserve import app_from_notebook
app = app_from_notebook("house_prices.ipynb", kernels=2)
"""

import cellserve.lean_start  # noqa: F401  (first: see its docstring)
from cellserve.app import app_from_notebook, lifespan
from cellserve.exceptions import (
    CellserveError,
    ExecutionTimeout,
    KernelDied,
    KernelError,
    KernelOutOfMemory,
    NotebookError,
    RequestFailed,
    SeedError,
    SettingsError,
    Unavailable,
)
from cellserve.multi import app_from_notebooks
from cellserve.settings import Settings

__version__ = "0.1.0"

__all__ = [
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
]
