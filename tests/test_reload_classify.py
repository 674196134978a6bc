"""The pure half of reload: how much a change to the notebook needs rebuilt, and its log line."""

from __future__ import annotations

import pytest

from cellserve.exceptions import NotebookError
from cellserve.notebook import NotebookApi, parse_notebook_text
from cellserve.reload import Change, classify, describe_change
from cellserve.routing import check_reserved
from tests.servers import Cell, notebook_text

SEED = "import json\nN = 1"
HELLO = "# GET /hello\nprint('hello')"


def api(*cells: Cell, kernel: str = "python3") -> NotebookApi:
    metadata = {
        "kernelspec": {"name": kernel, "language": "python", "display_name": kernel},
        "language_info": {"name": "python"},
    }
    return parse_notebook_text(notebook_text(cells, metadata), name="api.ipynb")


def test_identical_notebooks_need_nothing() -> None:
    text = notebook_text([SEED, HELLO])
    same = parse_notebook_text(text, name="api.ipynb"), parse_notebook_text(text, name="api.ipynb")
    assert classify(*same) is Change.NONE


def test_markdown_only_needs_new_docs() -> None:
    old, new = api(SEED, HELLO), api(SEED, ("markdown", "# Notes"), HELLO)
    assert classify(old, new) is Change.DOCS
    assert describe_change(old, new) == "docs, outputs or metadata only"


def test_endpoint_edit_needs_new_routes_only() -> None:
    old = api(SEED, HELLO, "# GET /gone\nprint(1)")
    new = api(SEED, "# GET /hello\nprint('hi')", "# POST /new\nprint(2)")
    assert classify(old, new) is Change.ROUTES
    assert describe_change(old, new) == "+POST /new, -GET /gone, ~GET /hello"


def test_response_info_edit_is_a_route_change() -> None:
    info = '# ResponseInfo GET /hello\nprint(json.dumps({"status": 201}))'
    assert classify(api(SEED, HELLO), api(SEED, HELLO, info)) is Change.ROUTES


def test_seed_edit_needs_new_kernels_and_names_the_cell() -> None:
    old, new = api(SEED, HELLO), api("import json\nN = 2", HELLO)
    assert classify(old, new) is Change.KERNELS
    assert describe_change(old, new) == "seed cells changed (1)"


def test_kernel_change_needs_new_kernels() -> None:
    old, new = api(SEED, HELLO), api(SEED, HELLO, kernel="python3-other")
    assert classify(old, new) is Change.KERNELS
    assert "kernel python3 → python3-other" in describe_change(old, new)


@pytest.mark.parametrize("path", ["/_cellserve/health", "/_api", "/_api/x"])
def test_reserved_prefixes_are_refused_with_the_cell(path: str) -> None:
    with pytest.raises(NotebookError, match=r"cell 1: .*rename the route"):
        check_reserved(api(f"# GET {path}\nprint(1)"))


def test_prefix_lookalikes_are_not_reserved() -> None:
    check_reserved(api("# GET /_apix\nprint(1)", "# GET /_cellservex\nprint(1)"))
