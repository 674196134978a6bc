"""validation.py: requests checked against a declared Contract (pure, no kernel)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cellserve.declaration import Contract, parse_declaration
from cellserve.request import MAX_JSON_DEPTH
from cellserve.validation import MAX_PROBLEMS, apply_contract, check_request

CONTRACT = parse_declaration(
    """
path:
  zip: {type: integer, minimum: 10000}
query:
  rooms: {type: integer, minimum: 1, default: 3}
  kind: {enum: [house, flat], required: true}
  near: {type: number}
  new: boolean
  tags: {type: array, items: {type: integer}}
body:
  schema:
    type: object
    required: [size]
    properties: {size: {type: number}, owner: {type: object, properties: {name: {type: string}}}}
""",
    1,
    ["zip"],
)


def request(
    args: dict[str, list[str]] | None = None,
    path: dict[str, str] | None = None,
    body: Any = None,
    content_type: str | None = "application/json",
    raw: bytes | None = None,
) -> tuple[dict[str, Any], bytes]:
    body = {"size": 100} if body is None else body
    if raw is None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    value = {
        "args": {"kind": ["house"]} if args is None else args,
        "path": {"zip": "94110"} if path is None else path,
        "headers": {"Content-Type": content_type} if content_type else {},
        "body": body,
    }
    return value, raw


def problems(contract: Contract = CONTRACT, **kwargs: Any) -> list[dict[str, str]]:
    value, raw = request(**kwargs)
    return [p.as_json() for p in check_request(contract, value, raw)]


def test_a_matching_request_has_no_problems_and_gets_defaults() -> None:
    value, raw = request(args={"kind": ["flat"], "near": ["1.5"], "new": ["true"]})
    sent = apply_contract(CONTRACT, value, "unused", raw)
    # The cell still sees Kernel Gateway's shape: strings in lists, the default filled in.
    assert isinstance(sent, str)
    assert json.loads(sent)["args"] == {
        "kind": ["flat"],
        "near": ["1.5"],
        "new": ["true"],
        "rooms": ["3"],
    }
    value, raw = request(args={"kind": ["flat"], "rooms": ["2"]})
    assert apply_contract(CONTRACT, value, "as built", raw) == "as built"  # nothing to add


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, [("query", "kind", "a required parameter is missing")]),
        ({"kind": ["shed"]}, [("query", "kind", "'shed' is not one of ['house', 'flat']")]),
        (
            {"kind": ["house"], "rooms": ["0"]},
            [("query", "rooms", "0 is less than the minimum of 1")],
        ),
        (
            {"kind": ["house"], "rooms": ["two"]},
            [("query", "rooms", "'two' is not of type 'integer'")],
        ),
        (
            {"kind": ["house"], "near": ["nan"]},
            [("query", "near", "'nan' is not of type 'number'")],
        ),
        ({"kind": ["house"], "new": ["yes"]}, [("query", "new", "'yes' is not of type 'boolean'")]),
        (
            {"kind": ["house"], "near": ["1_0"]},
            [("query", "near", "'1_0' is not of type 'number'")],
        ),
        (
            {"kind": ["house", "flat"]},
            [("query", "kind", "given 2 times; expects one value")],
        ),
        (
            {"kind": ["house"], "tags": ["1", "x"]},
            [("query", "tags[1]", "'x' is not of type 'integer'")],
        ),
    ],
)
def test_query_problems(args: dict[str, list[str]], expected: list[tuple[str, str, str]]) -> None:
    assert problems(args=args) == [{"in": i, "at": a, "message": m} for i, a, m in expected]


def test_typed_path_parameters_are_checked() -> None:
    assert problems(path={"zip": "abc"}) == [
        {"in": "path", "at": "zip", "message": "'abc' is not of type 'integer'"}
    ]
    assert problems(path={"zip": "123"})[0]["message"] == "123 is less than the minimum of 10000"


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ({"size": "big"}, "application/json", [("/size", "'big' is not of type 'number'")]),
        ({}, "application/json; charset=utf-8", [("", "'size' is a required property")]),
        (
            {"size": 1, "owner": {"name": 7}},
            "application/json",
            [("/owner/name", "7 is not of type 'string'")],
        ),
        ([1], "application/json", [("", "[1] is not of type 'object'")]),
        (
            b"",
            "application/json",
            [("", "a JSON body is required (Content-Type: application/json)")],
        ),
        ("{oops", "application/json", [("", "the body is not valid JSON")]),
        (
            "size=1",
            "text/plain",
            [("", "send JSON with Content-Type: application/json (got text/plain)")],
        ),
        ("size=1", None, [("", "send JSON with Content-Type: application/json (got none)")]),
    ],
)
def test_body_problems(
    body: Any, content_type: str | None, expected: list[tuple[str, str]]
) -> None:
    value, raw = request(body=body, content_type=content_type)
    if isinstance(body, str):
        raw = body.encode()
    found = [p.as_json() for p in check_request(CONTRACT, value, raw)]
    assert found == [{"in": "body", "at": at, "message": m} for at, m in expected]


def test_a_json_string_body_is_json_not_a_decoding_failure() -> None:
    contract = parse_declaration("body: {schema: {type: string}}", 1, [])
    value, raw = request(body="hello", args={})
    raw = b'"hello"'
    assert check_request(contract, value, raw) == []
    # Read in the charset it was sent in, as the REQUEST value was.
    value, _ = request(body="café", args={}, content_type="application/json; charset=latin-1")
    assert check_request(contract, value, '"café"'.encode("latin-1")) == []
    assert check_request(contract, value, "café".encode("latin-1"))[0].message == (
        "the body is not valid JSON"
    )


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_form_bodies_reach_the_cell_unchecked(content_type: str) -> None:
    # As Kernel Gateway passes them: lists of strings the cell checks itself.
    value, _ = request(body={"size": ["big"]}, content_type=content_type)
    assert check_request(CONTRACT, value, b"size=big") == []


def test_an_optional_body_may_be_left_out() -> None:
    contract = parse_declaration("body: {schema: {type: object}, required: false}", 1, [])
    value, _ = request(body="", args={})
    assert check_request(contract, value, b"") == []


@pytest.mark.parametrize(
    ("declaration", "location", "value", "message"),
    [
        # Past Python's int conversion limit (4300 digits): text, so not an integer.
        ("query: {n: integer}", "query", "1" * 5000, "is not of type 'integer'"),
        ("query: {n: number}", "query", "1" * 5000, "is not of type 'number'"),
        # Python's JSON parser reads Infinity and NaN; a fractional multipleOf cannot.
        ("body: {schema: {multipleOf: 0.5}}", "body", "Infinity", "inf is not a multiple of 0.5"),
        ("body: {schema: {multipleOf: 0.5}}", "body", "NaN", "nan is not a multiple of 0.5"),
        # Groups nested past the recursion limit of re.compile.
        ("body: {schema: {format: regex}}", "body", json.dumps("(" * 5000), "is not a 'regex'"),
    ],
)
def test_hostile_values_are_problems_not_server_errors(
    declaration: str, location: str, value: str, message: str
) -> None:
    contract = parse_declaration(declaration, 1, [])
    if location == "query":
        found = problems(contract, args={"n": [value]})
    else:
        found = problems(contract, args={}, body=json.loads(value), raw=value.encode())
    (problem,) = found
    assert problem["in"] == location
    assert problem["message"].endswith(message)


def test_a_body_breaking_its_schema_per_item_lists_a_bounded_number_of_problems() -> None:
    contract = parse_declaration("body: {schema: {items: {type: string}}}", 1, [])
    found = problems(contract, args={}, body=[1] * 100_000)
    # One past the limit says that there are more; the rest were never computed.
    assert len(found) == MAX_PROBLEMS + 1
    assert found[0] == {"in": "body", "at": "/0", "message": "1 is not of type 'string'"}


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),
        ([0, -0.0], False),
        ([True, 1], True),  # booleans are not numbers in JSON Schema
        ([[True], [1]], True),
        ([None, 0], True),
        (["1", 1], True),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),
        ([{"a": [1]}, {"a": [1, 2]}], True),
        ([[1, [2]], [1, [2.0]]], False),
    ],
)
def test_unique_items_keeps_json_schemas_equality(items: list[Any], unique: bool) -> None:
    contract = parse_declaration("body: {schema: {uniqueItems: true}}", 1, [])
    assert (problems(contract, args={}, body=items) == []) is unique


def test_unique_items_is_one_pass_over_a_large_array_of_objects() -> None:
    # jsonschema compares every pair of objects: minutes for this array (0.4 MB), on the event
    # loop for bodies up to 64 kB.
    contract = parse_declaration("body: {schema: {uniqueItems: true}}", 1, [])
    houses = [{"id": i, "rooms": [i % 7]} for i in range(20_000)]
    assert problems(contract, args={}, body=houses) == []
    (problem,) = problems(contract, args={}, body=[*houses, {"rooms": [3], "id": 3}])
    assert problem["message"].endswith("has non-unique elements")


def test_unevaluated_keywords_are_one_pass_over_a_large_body() -> None:
    # jsonschema looks each key up in a list: minutes for this object (1.5 MB).
    contract = parse_declaration(
        "body: {schema: {properties: {id: {}}, unevaluatedProperties: {type: integer}}}", 1, []
    )
    assert problems(contract, args={}, body={f"k{i}": i for i in range(100_000)}) == []


def test_a_body_too_deep_for_a_recursive_schema_is_a_problem() -> None:
    contract = parse_declaration("body: {schema: {type: array, items: {$ref: '#'}}}", 1, [])
    body: list[Any] = []
    for _ in range(MAX_JSON_DEPTH - 1):  # as deep as request.py lets a body be
        body = [body]
    assert problems(contract, args={}, body=body) == [
        {
            "in": "body",
            "at": "",
            "message": "nested too deeply to be checked against the declared schema",
        }
    ]
