"""declaration.py: the YAML block in the markdown above an endpoint, and its mistakes."""

from __future__ import annotations

import pytest

from cellserve.declaration import Contract, DeclaredResponse, Parameter, RequestBody
from cellserve.exceptions import NotebookError
from cellserve.notebook import NotebookApi, parse_notebook_text
from tests.servers import notebook_text

DECLARED = """Price of a house.

In dollars.

```yaml
path:
  zip: integer
query:
  rooms: {type: integer, minimum: 1, default: 3, description: bedrooms and more}
  kind: {enum: [yes, no, on], required: true, example: "yes"}
body:
  schema:
    type: object
    required: [size]
    properties: {size: {type: number}}
  example: {size: 120}
responses:
  200:
    description: The price
    schema: {type: object, properties: {price: {type: number}}}
    example: {price: 1.5}
  404: No such zip code
  default: {content_type: text/plain}
```
"""


def parse(markdown: str, path: str = "/price/:zip", verb: str = "POST") -> NotebookApi:
    cells = ["import json", ("markdown", markdown), f"# {verb} {path}\nprint(1)"]
    return parse_notebook_text(notebook_text(cells), name="api.ipynb")


def contract_of(markdown: str, path: str = "/price/:zip") -> Contract:
    contract = parse(markdown, path).endpoints[0].contract
    assert contract is not None
    return contract


def test_a_full_declaration() -> None:
    endpoint = parse(DECLARED).endpoints[0]
    assert endpoint.summary == "Price of a house."
    assert endpoint.description == "In dollars."  # the YAML block is not part of the docs
    assert endpoint.contract == Contract(
        parameters=(
            Parameter("zip", "path", {"type": "integer"}, True),
            Parameter(
                "rooms",
                "query",
                {"type": "integer", "minimum": 1, "default": 3},
                False,
                "bedrooms and more",
            ),
            # YAML 1.2 booleans: yes/no/on stay strings.
            Parameter("kind", "query", {"enum": ["yes", "no", "on"]}, True, example="yes"),
        ),
        body=RequestBody(
            {"type": "object", "required": ["size"], "properties": {"size": {"type": "number"}}},
            example={"size": 120},
        ),
        responses=(
            DeclaredResponse(
                "200",
                "The price",
                schema={"type": "object", "properties": {"price": {"type": "number"}}},
                example={"price": 1.5},
            ),
            DeclaredResponse("404", "No such zip code"),
            DeclaredResponse("default", "Any other status", content_type="text/plain"),
        ),
    )


def test_a_declared_endpoint_stays_hashable_and_comparable() -> None:
    first, second = parse(DECLARED).endpoints[0], parse(DECLARED).endpoints[0]
    assert first == second and hash(first) == hash(second)
    assert parse(DECLARED.replace("minimum: 1", "minimum: 2")).endpoints[0] != first


def test_undeclared_path_parameters_stay_strings_and_no_block_means_no_contract() -> None:
    contract = contract_of("Price.\n\n```yaml\nquery:\n  q: string\n```", path="/a/:x/:y")
    assert [(p.name, p.location, dict(p.schema)) for p in contract.parameters] == [
        ("x", "path", {"type": "string"}),
        ("y", "path", {"type": "string"}),
        ("q", "query", {"type": "string"}),
    ]
    assert not contract_of("```yaml\n```").validates_requests
    assert parse("Just docs.\n\n```python\nx = 1\n```").endpoints[0].contract is None


def test_local_references_are_followed() -> None:
    contract = contract_of(
        "```yaml\nbody:\n  schema:\n    $defs: {size: {type: number}}\n"
        "    properties: {size: {$ref: '#/$defs/size'}}\n  example: {size: 3}\n```"
    )
    assert contract.body is not None


def test_dates_stay_text() -> None:
    contract = contract_of("```yaml\nquery:\n  day: {type: string, example: 2024-01-31}\n```")
    assert contract.parameters[1].example == "2024-01-31"


@pytest.mark.parametrize(
    ("block", "line", "fragment"),
    [
        # Lines count from 1 at the top of the markdown cell; the fence is line 3.
        ("query:\n  q: {type: integer\n", 6, "not valid YAML"),
        ("query: {}\nbdy: 1", 5, "bdy: unknown key; known keys: `path`, `query`"),
        ("query:\n  q: integr", 5, "query.q.type: not a valid JSON Schema"),
        ("query:\n  q:\n    type: integer\n    maximum: high", 7, "query.q.maximum: not a valid"),
        ("query:\n  q: {type: integer, example: many}", 5, "query.q.example: does not match"),
        ("query:\n  q: {type: integer, default: x}", 5, "query.q.default: does not match"),
        ("query:\n  q: {type: string, required: yes}", 5, "query.q.required: true or false"),
        ("path:\n  id: integer", 5, "path.id: not a parameter of this path (its parameters: :zip)"),
        ("path:\n  zip: {type: integer, required: false}", 5, "always required"),
        ("body:\n  type: object", 4, "body: a mapping with a `schema`"),
        (
            "body:\n  schema: {type: object, required: [a]}\n  example: {b: 1}",
            6,
            "body.example: does not match the schema: 'a' is a required property",
        ),
        ("responses:\n  2000: big", 5, "responses.2000: a status code from 100 to 599"),
        (
            "body:\n  schema:\n    $defs: {a: {type: string}}\n    $ref: '#/$defs/b'",
            7,
            "body.schema.$ref: `#/$defs/b` does not point inside this schema",
        ),
        (
            "body:\n  schema: {items: {$ref: 'https://example.com/s.json'}}",
            5,
            "body.schema.items.$ref: `https://example.com/s.json` does not point inside",
        ),
        ("responses:\n  200: {descr: x}", 5, "responses.200.descr: unknown key"),
    ],
)
def test_a_bad_declaration_names_the_cell_and_line(block: str, line: int, fragment: str) -> None:
    with pytest.raises(NotebookError) as caught:
        parse(f"Price.\n\n```yaml\n{block}\n```\n")
    message = str(caught.value)
    assert message.startswith(f"api.ipynb, markdown cell above cell 2, line {line}: "), message
    assert fragment in message


@pytest.mark.parametrize("block", ["price: 1.5", "- a list", "just text", "a: {{ jinja }}"])
def test_yaml_without_declaration_keys_stays_documentation(block: str) -> None:
    # A notebook written for Kernel Gateway may show an example answer as YAML.
    api = parse(f"Price.\n\nAnswers:\n\n```yaml\n{block}\n```")
    (endpoint,) = api.endpoints
    assert endpoint.contract is None
    assert endpoint.description is not None and block in endpoint.description
    (warning,) = api.warnings
    assert warning.startswith("api.ipynb, markdown cell above cell 2, line 5: the yaml block")


def test_an_unclosed_block_runs_to_the_end_of_the_cell_as_in_commonmark() -> None:
    endpoint = parse("Price.\n```yaml\nquery:\n  q: integer\n").endpoints[0]
    assert endpoint.summary == "Price."
    assert endpoint.contract is not None
    assert [p.name for p in endpoint.contract.parameters] == ["zip", "q"]


def test_only_requests_that_can_break_the_declaration_are_checked() -> None:
    assert not contract_of("```yaml\nresponses: {200: fine}\n```").validates_requests
    assert contract_of("```yaml\npath: {zip: integer}\n```").validates_requests
    assert contract_of("```yaml\nquery: {q: string}\n```").validates_requests


def test_every_bad_cell_is_reported_at_once() -> None:
    cells = [
        ("markdown", "```yaml\nquery: {q: nope}\n```"),
        "# GET /a\nprint(1)",
        "# GET /b/:\nprint(1)",
        ("markdown", "```yaml\nbody: 3\n```"),
        "# POST /c\nprint(1)",
    ]
    with pytest.raises(NotebookError) as caught:
        parse_notebook_text(notebook_text(cells), name="api.ipynb")
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("api.ipynb, markdown cell above cell 1, line 2:")
    assert problems[1].startswith("api.ipynb cell 2 (`# GET /b/:`)")
    assert problems[2].startswith("api.ipynb, markdown cell above cell 3, line 2:")
    assert str(caught.value).endswith("(and 2 more; `cellserve check` lists them all)")


def test_a_closing_fence_may_be_indented_and_followed_by_spaces() -> None:
    endpoint = parse("Price.\n```yaml\nquery:\n  q: integer\n  ```  \nIn dollars.").endpoints[0]
    assert endpoint.contract is not None
    assert endpoint.description == "In dollars."
