"""Check a request against its route's declared Contract, before any kernel is involved.

Query and path values arrive as text; each is converted to the declared type first (``"3"`` to
``3`` for an integer, ``"true"`` to ``True`` for a boolean), then checked with the JSON Schema
(2020-12) validator. The cell still receives Kernel Gateway's ``REQUEST`` shape (strings in
lists); a declared default fills in a query parameter the client left out (``fill_defaults``).

JSON bodies are checked against the body schema; form and multipart bodies reach the cell
unchecked, as Kernel Gateway passes them, since their values are lists of strings.

Request values are untrusted, so none of them can turn a check into a 500 (the validators
come from schemas.py, which hardens jsonschema's): an integer past Python's conversion limit
stays text (and breaks its declared type), a body too deep for a recursive schema is a
problem, and at most ``MAX_PROBLEMS`` problems are listed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from jsonschema import Draft202012Validator
from python_multipart.multipart import parse_options_header

from cellserve.declaration import Contract, Parameter, RequestBody

_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_PROBLEMS = 50
"""Problems listed at most. A large body can break its schema once per item; listing each
would cost the server far more than the request cost the client."""


@dataclass(frozen=True)
class Problem:
    """One way a request breaks the contract: where (``in`` and ``at``) and what."""

    location: str
    at: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"in": self.location, "at": self.at, "message": self.message}


def apply_contract(
    contract: Contract, request: MutableMapping[str, Any], request_json: str, raw_body: bytes
) -> list[Problem] | str:
    """The problems of a request, or, when there are none, the ``REQUEST`` JSON to send:
    `request_json` itself, or `request` encoded again with the declared defaults added."""
    problems = check_request(contract, request, raw_body)
    if problems:
        return problems
    return json.dumps(request) if fill_defaults(contract, request["args"]) else request_json


def check_request(contract: Contract, request: Mapping[str, Any], raw_body: bytes) -> list[Problem]:
    """Problems of `request` (the ``REQUEST`` value, `raw_body` its body as received): at
    most ``MAX_PROBLEMS + 1``, the one past the limit telling that there are more."""
    problems: list[Problem] = []
    media_type, charset = _content_type(request["headers"].get("Content-Type", ""))
    args: Mapping[str, list[str]] = request["args"]
    for parameter in contract.parameters:
        if parameter.location == "path":
            problems += _check_value(parameter, request["path"][parameter.name])
        elif parameter.name in args:
            problems += _check_query(parameter, args[parameter.name])
        elif parameter.required and "default" not in parameter.schema:
            problems.append(Problem("query", parameter.name, "a required parameter is missing"))
    if contract.body is not None and media_type not in _FORMS:
        problems += _check_body(contract.body, request["body"], media_type, charset, raw_body)
    return problems[: MAX_PROBLEMS + 1]


def fill_defaults(contract: Contract, args: MutableMapping[str, list[str]]) -> bool:
    """Add the declared default of each query parameter missing from `args`, as text (the
    shape the cell reads); True if any was added."""
    added = False
    for parameter in contract.parameters:
        schema = parameter.schema
        if parameter.location == "query" and parameter.name not in args and "default" in schema:
            default = schema["default"]
            values = default if isinstance(default, list) else [default]
            args[parameter.name] = [_as_text(v) for v in values]
            added = True
    return added


def _check_query(parameter: Parameter, values: list[str]) -> list[Problem]:
    if _is_array(parameter.schema):
        items = parameter.schema.get("items", {})
        converted = [_convert(v, items if isinstance(items, Mapping) else {}) for v in values]
        return _schema_problems(parameter.validator, converted, "query", parameter.name)
    if len(values) > 1:
        return [Problem("query", parameter.name, f"given {len(values)} times; expects one value")]
    return _check_value(parameter, values[0])


def _check_value(parameter: Parameter, text: str) -> list[Problem]:
    value = _convert(text, parameter.schema)
    return _schema_problems(parameter.validator, value, parameter.location, parameter.name)


def _check_body(
    declared: RequestBody, body: Any, media_type: str, charset: str, raw_body: bytes
) -> list[Problem]:
    if not raw_body:
        if declared.required:
            return [Problem("body", "", "a JSON body is required (Content-Type: application/json)")]
        return []
    if media_type != "application/json":
        shown = media_type or "none"
        return [Problem("body", "", f"send JSON with Content-Type: application/json (got {shown})")]
    if isinstance(body, str) and not _is_json(raw_body, charset):
        return [Problem("body", "", "the body is not valid JSON")]
    return _schema_problems(declared.validator, body, "body", None)


def _schema_problems(
    validator: Draft202012Validator, value: Any, location: str, name: str | None
) -> list[Problem]:
    problems = []
    try:
        # Validation stops once the list is past the limit: the cost of a hostile body is bounded.
        errors = list(islice(validator.iter_errors(value), MAX_PROBLEMS + 1))
    except RecursionError:  # a recursive schema ($ref: '#') follows the body down
        message = "nested too deeply to be checked against the declared schema"
        return [Problem(location, "" if name is None else name, message)]
    for error in errors:
        if name is None:
            at = "".join(f"/{_escape(part)}" for part in error.absolute_path)
        else:
            at = name + "".join(f"[{part}]" for part in error.absolute_path)
        problems.append(Problem(location, at, error.message))
    return sorted(problems, key=lambda p: p.at)


def _convert(text: str, schema: Mapping[str, Any]) -> Any:
    """`text` as the first declared type it reads as; unchanged when none fits."""
    declared = schema.get("type", "string")
    for kind in declared if isinstance(declared, list) else [declared]:
        if kind in ("integer", "number") and _INTEGER.match(text):
            integer = _integer(text)
            if integer is not None:
                return integer
        if kind == "number" and _NUMBER.match(text):
            number = float(text)
            if math.isfinite(number):
                return number
        if kind == "boolean" and text in ("true", "false"):
            return text == "true"
        if kind == "null" and text in ("", "null"):
            return None
        if kind == "string":
            return text
    return text


def _integer(text: str) -> int | None:
    """`text` as an int; None past Python's conversion limit (4300 digits by default)."""
    try:
        return int(text)
    except ValueError:
        return None


def _content_type(content_type: str | list[str]) -> tuple[str, str]:
    """The media type and charset, read as request.py reads them to decode the body."""
    first = content_type[0] if isinstance(content_type, list) else content_type
    media_type, options = parse_options_header(first)
    charset = options.get(b"charset", b"utf-8")
    return media_type.decode("latin-1").lower(), charset.decode("latin-1")


def _is_array(schema: Mapping[str, Any]) -> bool:
    declared = schema.get("type")
    return declared == "array" or (isinstance(declared, list) and "array" in declared)


def _is_json(raw: bytes, charset: str) -> bool:
    """Whether `raw` is JSON text in `charset` (a body that is not arrives as its text)."""
    try:
        json.loads(raw.decode(charset))
    except (LookupError, ValueError):
        return False
    return True


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _escape(part: object) -> str:
    """A JSON Pointer token (RFC 6901)."""
    return str(part).replace("~", "~0").replace("/", "~1")
