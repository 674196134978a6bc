"""openapi.py: a valid OpenAPI 3.1 document, and Kernel Gateway's Swagger 2.0 shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nbformat
import pytest
from openapi_spec_validator import validate

from cellserve.exceptions import NotebookError
from cellserve.notebook import NotebookApi, parse_notebook_text
from cellserve.openapi import Section, kernel_gateway_swagger, openapi_document

HOUSE_PRICES: list[str | tuple[str, str]] = [
    "import json",
    ("markdown", "## Predict a price\n\nGiven a zip code and a size."),
    "# GET /price/:zip/:size\nprint(json.dumps({'price': 1}))",
    '# ResponseInfo GET /price/:zip/:size\nprint(json.dumps({"status": 200, "headers": {}}))',
    "# POST /houses\n# Add a house.\n# Answers 201 with its id.\nprint(1)",
    "# ResponseInfo POST /houses\n"
    'print(json.dumps({"status": 201 if ok else 409, "headers": {"Location": "/h/1"}}))\n'
    "# also 'status': 409",
    "# DELETE /houses/:id\nprint(1)",
    "# PATCH /houses/:id\nprint(1)",
    "# GET /\nprint('root')",
]


def api(cells: Sequence[str | tuple[str, str]], name: str = "house_prices.ipynb") -> NotebookApi:
    notebook = nbformat.v4.new_notebook()
    for cell in cells:
        if isinstance(cell, tuple):
            notebook.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(cell))
    return parse_notebook_text(nbformat.writes(notebook), name=name)


def document(
    *sections: Section, auth: bool = False, server_url: str = "", title: str = "house_prices"
) -> dict[str, Any]:
    return openapi_document(sections, title=title, server_url=server_url, auth=auth)


@pytest.mark.parametrize("auth", [False, True])
def test_document_validates(auth: bool) -> None:
    doc = document(Section("", api(HOUSE_PRICES)), auth=auth)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "house_prices"


def test_paths_use_brace_syntax_and_declare_path_parameters() -> None:
    doc = document(Section("", api(HOUSE_PRICES)))
    assert list(doc["paths"]) == ["/price/{zip}/{size}", "/houses", "/houses/{id}", "/"]
    operation = doc["paths"]["/price/{zip}/{size}"]["get"]
    assert operation["parameters"] == [
        {"name": "zip", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "size", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    assert set(doc["paths"]["/houses/{id}"]) == {"delete", "patch"}
    assert "parameters" not in doc["paths"]["/houses"]["post"]


def test_docs_come_from_markdown_and_comments() -> None:
    doc = document(Section("", api(HOUSE_PRICES)))
    get = doc["paths"]["/price/{zip}/{size}"]["get"]
    assert get["summary"] == "Predict a price"
    assert get["description"].startswith("Given a zip code and a size.\n\n")
    assert get["description"].endswith("Served by house_prices.ipynb cell(s) 2.")
    post = doc["paths"]["/houses"]["post"]
    assert post["summary"] == "Add a house."
    assert post["description"].startswith("Answers 201 with its id.")
    assert "summary" not in doc["paths"]["/"]["get"]


def test_response_info_statuses_are_declared() -> None:
    doc = document(Section("", api(HOUSE_PRICES)))
    post = doc["paths"]["/houses"]["post"]["responses"]
    assert {"201", "409"} <= set(post)
    assert "200" not in post
    assert post["201"]["description"] == "Set by the ResponseInfo cell"
    get = doc["paths"]["/price/{zip}/{size}"]["get"]["responses"]
    assert "200" in get
    plain = doc["paths"]["/"]["get"]["responses"]
    assert plain["200"]["description"] == "What the cell prints"


def test_server_errors_and_request_bodies_by_verb() -> None:
    doc = document(Section("", api(HOUSE_PRICES)))
    get = doc["paths"]["/"]["get"]
    post = doc["paths"]["/houses"]["post"]
    assert {"404", "500", "503", "504"} <= set(get["responses"])
    assert "400" in get["responses"]  # a query string that is not UTF-8, with any verb
    assert "413" not in get["responses"]
    assert "requestBody" not in get
    assert {"400", "413"} <= set(post["responses"])
    assert "application/json" in post["requestBody"]["content"]
    assert "405" not in post["responses"]


def test_auth_adds_401_and_security_schemes() -> None:
    doc = document(Section("", api(HOUSE_PRICES)), auth=True)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["token"] == {"type": "apiKey", "in": "query", "name": "token"}
    assert schemes["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}, {"token": []}]
    for operations in doc["paths"].values():
        for operation in operations.values():
            assert "401" in operation["responses"]


def test_no_auth_no_security() -> None:
    doc = document(Section("", api(HOUSE_PRICES)))
    assert "components" not in doc
    assert "security" not in doc
    assert all("401" not in op["responses"] for ops in doc["paths"].values() for op in ops.values())


def test_operation_ids_are_unique_and_server_url_is_kept() -> None:
    doc = document(Section("", api(HOUSE_PRICES)), server_url="/base")
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert doc["servers"] == [{"url": "/base"}]
    assert document(Section("", api(HOUSE_PRICES)))["servers"] == [{"url": "/"}]


def test_several_sections_are_prefixed_and_tagged() -> None:
    prices = api(HOUSE_PRICES)
    plots = api(["# GET /plot/:kind\nprint(1)"], name="plot.ipynb")
    doc = document(Section("/prices", prices), Section("/plots", plots), title="cellserve")
    validate(doc)
    assert "/prices/houses" in doc["paths"]
    assert "/plots/plot/{kind}" in doc["paths"]
    assert [t["name"] for t in doc["tags"]] == ["prices", "plots"]
    assert doc["paths"]["/plots/plot/{kind}"]["get"]["tags"] == ["plots"]


def test_operation_ids_stay_unique_for_similar_paths() -> None:
    validate(document(Section("", api(["# GET /a-b\nprint(1)", "# GET /a_b\nprint(2)"]))))


def test_two_notebooks_with_the_same_file_name_give_a_valid_document() -> None:
    notebook = api(["# GET /x\nprint(1)"], name="api.ipynb")
    validate(document(Section("/v1", notebook), Section("/v2", notebook)))


def test_braces_in_a_path_are_refused_at_parse_time() -> None:
    with pytest.raises(NotebookError, match=r"not '\{name\}'"):
        api(["# GET /a{b}\nprint(1)"])


# -- Kernel Gateway's swagger.json ------------------------------------------------------------


def test_kernel_gateway_swagger_shape() -> None:
    simple = api(
        [("markdown", "# GET /ghost"), "# GET /name\nprint(1)", "# POST /name\nx = 1"],
        name="simple_api.ipynb",
    )
    assert kernel_gateway_swagger(simple) == {
        "info": {"version": "0.0.0", "title": "simple_api"},
        "paths": {
            "/name": {
                "get": {"responses": {"200": {"description": "Success"}}},
                "post": {"responses": {"200": {"description": "Success"}}},
            }
        },
        "swagger": "2.0",
    }


def test_kernel_gateway_swagger_keeps_colon_params_and_title_up_to_first_dot() -> None:
    spec = kernel_gateway_swagger(api(["# GET /hello/:name\nprint(1)"], name="kgc_api.v2.ipynb"))
    assert spec["info"]["title"] == "kgc_api"
    assert list(spec["paths"]) == ["/hello/:name"]


# -- declared contracts -----------------------------------------------------------------------

DECLARED = [
    "import json",
    (
        "markdown",
        "## Price\n\n```yaml\npath:\n  zip: {type: integer, example: 94110}\nquery:\n"
        "  rooms: {type: integer, default: 3, description: how many}\n"
        "  kind: {enum: [house, flat], required: true, example: flat}\n"
        "body:\n  schema: {type: object, required: [size], properties: {size: {type: number}}}\n"
        "  example: {size: 120}\nresponses:\n  200:\n    description: The price\n"
        "    schema: {type: object, properties: {price: {type: number}}}\n"
        "    example: {price: 1.5}\n  404: No such zip code\n```",
    ),
    "# POST /price/:zip\nprint(1)",
    '# ResponseInfo POST /price/:zip\nprint(json.dumps({"status": 404 if gone else 200}))',
    "# GET /plain\nprint(1)",
    "# ResponseInfo GET /plain\nprint(json.dumps(compute_info()))",
]


def test_declared_contract_gives_typed_parameters_body_and_responses() -> None:
    doc = document(Section("", api(DECLARED)))
    validate(doc)
    operation = doc["paths"]["/price/{zip}"]["post"]
    assert operation["summary"] == "Price"
    assert "yaml" not in operation["description"]
    assert operation["parameters"] == [
        {
            "name": "zip",
            "in": "path",
            "required": True,
            "schema": {"type": "integer"},
            "example": 94110,
        },
        {
            "name": "rooms",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "default": 3},
            "description": "how many",
        },
        {
            "name": "kind",
            "in": "query",
            "required": True,
            "schema": {"enum": ["house", "flat"]},
            "example": "flat",
        },
    ]
    body = operation["requestBody"]
    assert body["required"] is True
    # Swagger UI's "Try it out" starts from the example.
    assert body["content"]["application/json"]["example"] == {"size": 120}
    assert body["content"]["application/json"]["schema"]["required"] == ["size"]
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["example"] == {"price": 1.5}
    assert responses["404"] == {"description": "No such zip code"}
    problems = responses["422"]["content"]["application/json"]["schema"]["properties"]["problems"]
    assert problems["maxItems"] == 50  # what a 422 lists at most


def test_statuses_the_response_info_code_cannot_show_fall_back_to_200_and_default() -> None:
    doc = document(Section("", api(DECLARED)))
    responses = doc["paths"]["/plain"]["get"]["responses"]
    assert responses["200"]["description"] == "What the cell prints"
    assert responses["default"]["description"] == "Whatever status the ResponseInfo cell sets"
    assert list(responses)[-1] == "default"
    assert "422" not in responses  # nothing declared, nothing checked
