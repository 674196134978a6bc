"""JupyterLab integration: a launcher entry that serves the folder's notebook APIs.

With ``jupyter-server-proxy`` installed beside cellserve, JupyterLab's launcher shows a
*cellserve* tile. It starts (once) a cellserve server for every notebook in Jupyter's folder
that declares endpoints, behind Jupyter's own login, with reload on save, and opens the docs
page. A notebook ``prices.ipynb`` is then served at ``<jupyter>/cellserve/prices/<route>``.

jupyter-server-proxy finds ``server_proxy`` through the ``jupyter_serverproxy_servers`` entry
point and runs the command it returns with ``{port}`` and ``{base_url}`` filled in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellserve.exceptions import NotebookError
from cellserve.notebook import load_notebook

PROXY_NAME = "cellserve"
FOLDER_VARIABLE = "CELLSERVE_JUPYTER_FOLDER"
"""Serve this folder's notebooks instead of the folder Jupyter was started in."""


def server_proxy() -> dict[str, Any]:
    """jupyter-server-proxy's description of the cellserve process and its launcher tile."""
    folder = os.environ.get(FOLDER_VARIABLE) or os.getcwd()
    return {
        "command": [
            sys.executable,
            "-m",
            "cellserve.jupyter",
            folder,
            "--port",
            "{port}",
            "--base-url",
            "{base_url}" + PROXY_NAME + "/",
        ],
        # The process sees the whole path (base URL included), so its docs and OpenAPI
        # `servers` carry URLs that work through the proxy.
        "absolute_url": True,
        # How long the proxy waits for the port. cellserve listens before seeding (routes
        # answer 503 until seeded), so this bounds only the start of Python and cellserve.
        "timeout": 300,
        "launcher_entry": {
            "title": "Notebook API",
            "icon_path": str(Path(__file__).with_name("jupyter_icon.svg")),
            "path_info": PROXY_NAME + "/docs",
            "category": "Other",
        },
        "new_browser_tab": True,
    }


def notebooks_with_endpoints(folder: Path) -> dict[str, Path]:
    """``{prefix: path}`` for every notebook in `folder` that declares at least one endpoint;
    the others are skipped, each with a line on stderr saying why."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.ipynb")):
        if path.stem.startswith(("_", ".")) or "=" in path.stem:
            # A prefix cannot start with "_" (cellserve's own paths) or hold "=" (PREFIX=PATH).
            print(f"cellserve: not serving {path.name}: rename it to serve it", file=sys.stderr)
            continue
        try:
            load_notebook(path)
        except NotebookError as exc:
            print(f"cellserve: not serving {path.name}: {exc}", file=sys.stderr)
            continue
        found[path.stem] = path
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cellserve.jupyter FOLDER --port P --base-url URL``: what the tile runs."""
    from cellserve import cli

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m cellserve.jupyter FOLDER [cellserve serve options]")
        return 2
    folder, options = Path(args[0]), args[1:]
    notebooks = notebooks_with_endpoints(folder)
    if not notebooks:
        print(
            f"cellserve: no notebook in {folder.resolve()} declares an endpoint; start a code "
            "cell with a line like `# GET /hello`, save, and open the launcher tile again",
            file=sys.stderr,
        )
        return 2
    pairs = [f"{prefix}={path}" for prefix, path in notebooks.items()]
    return cli.main(["serve", *pairs, "--reload", *options])


if __name__ == "__main__":
    raise SystemExit(main())
