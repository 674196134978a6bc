"""notebook.py: Kernel Gateway's annotation grammar on in-memory notebooks (no kernels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest

from cellserve.exceptions import NotebookError
from cellserve.notebook import (
    VERBS,
    BatchOptions,
    NotebookApi,
    PathTemplate,
    RouteOptions,
    comment_prefix_for,
    load_notebook,
    parse_notebook_text,
)
from tests.servers import Cell, notebook_text


def parse(cells: Sequence[Cell], name: str = "api.ipynb", **kwargs: Any) -> NotebookApi:
    metadata = kwargs.pop("metadata", None)
    return parse_notebook_text(notebook_text(cells, metadata), name=name, **kwargs)


def labels(api: NotebookApi) -> list[str]:
    return [e.label for e in api.endpoints]


# -- the annotation grammar -------------------------------------------------------------------


def test_annotated_cell_is_an_endpoint_and_other_code_cells_are_seeds() -> None:
    api = parse(["import json", "# GET /x\nprint(1)", "y = 2"])
    assert labels(api) == ["GET /x"]
    (endpoint,) = api.endpoints
    assert endpoint.source == "# GET /x\nprint(1)\n"
    assert endpoint.cell_numbers == (2,)
    assert [(s.number, s.source) for s in api.seeds] == [(1, "import json"), (3, "y = 2")]


@pytest.mark.parametrize(
    "source",
    [
        "#GET /x",  # no space after the prefix
        "# get /x",  # verb must be upper case
        "\n# GET /x",  # annotation must be at the very start of the cell
        " # GET /x",
        "# HEAD /x",
        "# OPTIONS /x",
        "# GET x",  # path must start with '/'
        "# GET/x",  # space needed after the verb
        "print(1)  # GET /x",
    ],
)
def test_not_an_annotation_so_the_cell_is_a_seed(source: str) -> None:
    api = parse([source, "# GET /real\nprint(1)"])
    assert labels(api) == ["GET /real"]
    assert [s.source for s in api.seeds] == [source]


def test_extra_spaces_are_allowed_and_the_path_is_stripped() -> None:
    api = parse(["#   GET    /roomy   \nprint(1)"])
    assert api.endpoints[0].path.raw == "/roomy"


def test_windows_line_ending_is_not_part_of_the_path() -> None:
    api = parse(["# GET /crlf\r\nprint(1)"])
    assert api.endpoints[0].path.raw == "/crlf"


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_is_accepted_including_patch(verb: str) -> None:
    api = parse([f"# {verb} /thing\nprint(1)"])
    assert labels(api) == [f"{verb} /thing"]
    assert "PATCH" in VERBS


def test_endpoints_keep_notebook_order_of_first_appearance() -> None:
    api = parse(["# POST /b\n1", "# GET /a\n2", "# GET /b\n3", "# POST /b\n4"])
    assert labels(api) == ["POST /b", "GET /a", "GET /b"]


# -- joining cells ----------------------------------------------------------------------------


def test_cells_with_same_verb_and_path_are_joined_like_kernel_gateway() -> None:
    # Kernel Gateway's unit test: two `# POST /foo/:bar` cells give
    # "# POST /foo/:bar\n# POST /foo/:bar\n".
    api = parse(["# POST /foo/:bar", "x = 1", "# POST /foo/:bar"])
    (endpoint,) = api.endpoints
    assert endpoint.source == "# POST /foo/:bar\n# POST /foo/:bar\n"
    assert endpoint.cell_numbers == (1, 3)
    assert [s.number for s in api.seeds] == [2]


def test_join_ignores_annotation_spacing_but_not_verb() -> None:
    api = parse(["# GET /x\na = 1", "#  GET   /x  \nb = 2", "# POST /x\nc = 3"])
    assert labels(api) == ["GET /x", "POST /x"]
    assert api.endpoints[0].source == "# GET /x\na = 1\n#  GET   /x  \nb = 2\n"


# -- ResponseInfo -----------------------------------------------------------------------------


def test_response_info_cell_is_attached_and_never_seeded() -> None:
    info = '# ResponseInfo GET /x\nprint(json.dumps({"status": 201}))'
    api = parse(["import json", "# GET /x\nprint(1)", info])
    (endpoint,) = api.endpoints
    assert endpoint.response_info == info + "\n"
    assert [s.number for s in api.seeds] == [1]
    assert api.warnings == ()


def test_response_info_before_its_endpoint_still_attaches() -> None:
    api = parse(["#  ResponseInfo  GET  /x \nprint('{}')", "# GET /x\nprint(1)"])
    assert api.endpoints[0].response_info == "#  ResponseInfo  GET  /x \nprint('{}')\n"


def test_several_response_info_cells_are_joined() -> None:
    api = parse(["# GET /x\n1", "# ResponseInfo GET /x\na", "# ResponseInfo GET /x\nb"])
    assert api.endpoints[0].response_info == "# ResponseInfo GET /x\na\n# ResponseInfo GET /x\nb\n"


def test_orphan_response_info_is_a_warning_naming_file_and_cell() -> None:
    api = parse(["# GET /x\nprint(1)", "# ResponseInfo POST /x\nprint('{}')"], name="shop.ipynb")
    assert api.endpoints[0].response_info is None
    assert api.seeds == ()
    (warning,) = api.warnings
    assert "shop.ipynb" in warning
    assert "cell 2" in warning
    assert "POST /x" in warning


def test_declared_statuses_are_read_from_the_response_info_source() -> None:
    info = (
        "# ResponseInfo POST /x\n"
        "status = {\"status\": 201} if ok else {'status': 404}\n"
        'print(json.dumps({"status": 201, "headers": {"Location": "/x/1"}}))'
    )
    api = parse(["# POST /x\nok = True", info, "# GET /x\nprint(1)"])
    post, get = api.endpoints
    assert post.response_info_statuses == (201, 404)
    assert get.response_info_statuses == ()


# -- cells that are not code ------------------------------------------------------------------


def test_markdown_and_raw_cells_are_ignored_for_routing_and_seeding() -> None:
    api = parse([("markdown", "# GET /ghost"), ("raw", "# GET /phantom"), "# GET /x\nprint(1)"])
    assert labels(api) == ["GET /x"]
    assert api.seeds == ()
    # Cell numbers count code cells only, as Jupyter's [N] prompts after Run All.
    assert api.endpoints[0].cell_numbers == (1,)


def test_blank_code_cells_are_not_seeds() -> None:
    api = parse(["", "   \n", "# GET /x\nprint(1)"])
    assert api.seeds == ()


# -- language, prefix, kernel -----------------------------------------------------------------


def test_scala_uses_double_slash_comments() -> None:
    metadata = {"kernelspec": {"name": "spylon"}, "language_info": {"name": "scala"}}
    api = parse(["// GET /x\nprintln(1)", "# GET /y\n1"], metadata=metadata)
    assert labels(api) == ["GET /x"]
    assert [s.source for s in api.seeds] == ["# GET /y\n1"]
    assert api.language == "scala"


def test_comment_prefix_override_is_taken_literally() -> None:
    # A regex metacharacter in the prefix must not be live.
    api = parse(["% GET /x\ndisp(1)", "%% GET /y\n1"], comment_prefix="%")
    assert labels(api) == ["GET /x"]
    with pytest.raises(NotebookError):
        parse(["a GET /x\n1"], comment_prefix=".")


@pytest.mark.parametrize(
    ("language", "prefix"),
    [("python", "#"), ("Scala", "//"), ("R", "#"), ("julia", "#"), ("bash", "#"), ("", "#")],
)
def test_comment_prefix_for(language: str, prefix: str) -> None:
    assert comment_prefix_for(language) == prefix


def test_language_falls_back_to_kernelspec_then_python() -> None:
    api = parse(["// GET /x\n1"], metadata={"kernelspec": {"name": "k", "language": "scala"}})
    assert api.language == "scala"
    api = parse(["# GET /x\n1"], metadata={})
    assert (api.language, api.kernel_name) == ("python", "python3")


def test_kernel_name_from_kernelspec_and_override() -> None:
    metadata = {"kernelspec": {"name": "conda-env-py"}, "language_info": {"name": "python"}}
    assert parse(["# GET /x\n1"], metadata=metadata).kernel_name == "conda-env-py"
    forced = parse(["# GET /x\n1"], metadata=metadata, kernel_name="python3")
    assert forced.kernel_name == "python3"


def test_kernel_identity_follows_seeds_not_endpoints() -> None:
    a = parse(["x = 1", "# GET /x\nprint(x)"])
    b = parse(["x = 1", "# GET /x\nprint(x + 1)"])
    c = parse(["x = 2", "# GET /x\nprint(x)"])
    assert a.kernel_identity() == b.kernel_identity()
    assert a.kernel_identity() != c.kernel_identity()


# -- errors -----------------------------------------------------------------------------------


def test_no_endpoints_names_the_file_and_shows_the_annotation() -> None:
    with pytest.raises(NotebookError, match=r"empty\.ipynb.*`# GET /hello`"):
        parse(["x = 1", ("markdown", "# GET /ghost")], name="empty.ipynb")


def test_no_endpoints_hint_uses_the_language_prefix() -> None:
    metadata = {"language_info": {"name": "scala"}}
    with pytest.raises(NotebookError, match="`// GET /hello`"):
        parse(["val x = 1"], metadata=metadata)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/a/:", "needs a name"),
        ("/a b", "spaces"),
        ("/a/:id/b/:id", "used twice"),
        ("/a?x=1", "'?'"),
        ("/:1st", "needs a name"),
        ("/a/:na-me", "needs a name"),
    ],
)
def test_malformed_path_names_file_and_cell(path: str, reason: str) -> None:
    with pytest.raises(NotebookError) as caught:
        parse(["x = 1", f"# GET {path}\nprint(1)"], name="bad.ipynb")
    message = str(caught.value)
    assert "bad.ipynb cell 2" in message
    assert f"# GET {path}" in message
    assert reason in message


def test_invalid_json_names_file_line_and_column() -> None:
    text = '{\n  "cells": [\n    {oops}\n  ]\n}'
    with pytest.raises(NotebookError, match=r"broken\.ipynb .*line 3, column 6"):
        parse_notebook_text(text, name="broken.ipynb")


@pytest.mark.parametrize(
    "text", ["[]", "3", "null", '{"nbformat": 4}', '{"cells": 5, "nbformat": 4}']
)
def test_json_that_is_not_a_notebook_is_a_notebook_error(text: str) -> None:
    with pytest.raises(NotebookError, match=r"odd\.ipynb"):
        parse_notebook_text(text, name="odd.ipynb")


@pytest.mark.parametrize(
    "text",
    [
        "{}",  # nbformat.convert raises jsonschema's ValidationError
        '{"nbformat": 3}',
        '{"nbformat": 4, "cells": [null]}',  # AttributeError: 'NoneType' ... 'get'
        '{"nbformat": 4, "cells": ["x"]}',
        '{"nbformat": 4, "cells": [], "metadata": {"kernelspec": "python3"}}',
    ],
)
def test_malformed_notebook_structure_is_a_notebook_error(text: str) -> None:
    with pytest.raises(NotebookError, match=r"odd\.ipynb"):
        parse_notebook_text(text, name="odd.ipynb")


def test_nbformat_v3_notebook_is_converted() -> None:
    cell = nbformat.v3.new_code_cell(input="# GET /old\nprint(1)", language="python")
    old = nbformat.v3.new_notebook(worksheets=[nbformat.v3.new_worksheet(cells=[cell])])
    api = parse_notebook_text(nbformat.writes(old, version=3), name="old.ipynb")
    assert labels(api) == ["GET /old"]


def test_load_notebook_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "disk.ipynb"
    path.write_text(notebook_text(["# GET /x\nprint(1)"]), encoding="utf-8")
    api = load_notebook(path)
    assert (api.name, labels(api)) == ("disk.ipynb", ["GET /x"])
    assert api.source_text == path.read_text(encoding="utf-8")
    with pytest.raises(NotebookError, match=r"missing\.ipynb"):
        load_notebook(tmp_path / "missing.ipynb")
    (tmp_path / "latin.ipynb").write_bytes(b'{"cells": "\xe9"}')
    with pytest.raises(NotebookError, match=r"latin\.ipynb"):
        load_notebook(tmp_path / "latin.ipynb")


# -- docs: summary and description ------------------------------------------------------------


def test_summary_and_description_from_markdown_directly_above() -> None:
    api = parse(
        [
            ("markdown", "## Predict a price\n\nGiven a zip code.\nIn dollars."),
            "# GET /price/:zip\n# ignored comment\nprint(1)",
        ]
    )
    endpoint = api.endpoints[0]
    assert endpoint.summary == "Predict a price"
    assert endpoint.description == "Given a zip code.\nIn dollars."


def test_markdown_not_directly_above_is_not_used() -> None:
    api = parse([("markdown", "## Title"), "x = 1", "# GET /x\nprint(x)"])
    assert (api.endpoints[0].summary, api.endpoints[0].description) == (None, None)
    api = parse([("markdown", "## Title"), ("raw", "raw"), "# GET /x\nprint(1)"])
    assert api.endpoints[0].summary is None


def test_summary_and_description_from_comments_after_the_annotation() -> None:
    api = parse(
        ["# GET /x\n# Say hello.\n# cellserve: stream\n# To everyone.\nprint(1)\n# not doc"]
    )
    endpoint = api.endpoints[0]
    assert endpoint.summary == "Say hello."
    assert endpoint.description == "To everyone."


def test_single_line_docs_have_no_description_and_no_docs_is_none() -> None:
    assert parse([("markdown", "Hello"), "# GET /x\n1"]).endpoints[0].description is None
    endpoint = parse(["# GET /x\nprint(1)"]).endpoints[0]
    assert (endpoint.summary, endpoint.description) == (None, None)


# -- directives -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comments", "options"),
    [
        ("", RouteOptions()),
        ("# cellserve: stream\n", RouteOptions(stream=True)),
        ("# cellserve: timeout=30\n", RouteOptions(timeout=30.0)),
        ("# cellserve: stream, timeout=2.5\n", RouteOptions(stream=True, timeout=2.5)),
        ("# Docs first.\n# cellserve: timeout=1\n", RouteOptions(timeout=1.0)),
        ("# cellserve: batch\n", RouteOptions(batch=BatchOptions())),
        (
            "# cellserve: batch max_size=8 max_wait_ms=2.5, timeout=3\n",
            RouteOptions(timeout=3.0, batch=BatchOptions(max_size=8, max_wait=0.0025)),
        ),
        ("# cellserve: batch\n# cellserve: max_wait_ms=0\n", RouteOptions(batch=BatchOptions())),
    ],
)
def test_directives(comments: str, options: RouteOptions) -> None:
    api = parse([f"# GET /x\n{comments}print(1)"])
    assert api.endpoints[0].options == options


def test_directive_after_code_is_just_a_comment() -> None:
    api = parse(["# GET /x\nprint(1)\n# cellserve: bogus"])
    assert api.endpoints[0].options == RouteOptions()


@pytest.mark.parametrize(
    ("directive", "fragment"),
    [
        ("cellserve: fast", "unknown directive `fast`"),
        ("cellserve: stream=yes", "unknown directive `stream=yes`"),
        ("cellserve: timeout", "unknown directive `timeout`"),
        ("cellserve: timeout=0", "`timeout=0` must be a positive"),
        ("cellserve: timeout=-3", "`timeout=-3` must be a positive"),
        ("cellserve: timeout=soon", "`timeout=soon` must be a positive"),
        ("cellserve: max_size=4", "`max_size=4` needs `batch` before it"),
        ("cellserve: batch max_size=0", "`max_size=0` must be a whole number"),
        ("cellserve: batch max_size=2.5", "`max_size=2.5` must be a whole number"),
        ("cellserve: batch max_size=\u00b2", "`max_size=\u00b2` must be a whole number"),
        ("cellserve: batch max_wait_ms=-1", "`max_wait_ms=-1` must be a ≥ 0 number"),
        ("cellserve: batch max_wait_ms=inf", "`max_wait_ms=inf` must be a ≥ 0 number"),
        ("cellserve: batch stream", "cannot both `stream` and `batch`"),
        ("cellserve: batch=yes", "unknown directive `batch=yes`"),
    ],
)
def test_bad_directive_names_file_and_cell(directive: str, fragment: str) -> None:
    with pytest.raises(NotebookError) as caught:
        parse(["x = 1", f"# GET /x\n# {directive}\nprint(1)"], name="nb.ipynb")
    assert "nb.ipynb cell 2" in str(caught.value)
    assert fragment in str(caught.value)


def test_a_batched_route_cannot_have_a_response_info_cell() -> None:
    cells = ["# POST /x\n# cellserve: batch\nprint('[]')", "# ResponseInfo POST /x\nprint('{}')"]
    with pytest.raises(NotebookError, match="cell 2: `POST /x` is batched") as caught:
        parse(cells)
    assert "remove this ResponseInfo cell" in str(caught.value)


def test_nan_timeout_directive_is_rejected() -> None:
    with pytest.raises(NotebookError, match="timeout=nan"):
        parse(["# GET /x\n# cellserve: timeout=nan\nprint(1)"])


# -- PathTemplate -----------------------------------------------------------------------------


def test_path_template_segments_params_and_openapi_path() -> None:
    template = PathTemplate.parse("/foo/:bar/baz/:quo")
    assert template.param_names == ("bar", "quo")
    assert template.openapi_path == "/foo/{bar}/baz/{quo}"
    assert PathTemplate.parse("/").openapi_path == "/"
    assert PathTemplate.parse("/a:b/c").param_names == ()  # ':' only counts at a segment start
    with pytest.raises(ValueError, match="start with '/'"):
        PathTemplate.parse("x")
