"""A route's declared parameters, request body and responses, from the markdown cell above it.

The declaration is a fenced YAML block in the markdown cell directly above the endpoint cell,
next to the summary and description. Jupyter renders it as a highlighted code block, so the
contract reads as documentation in the notebook itself::

    Predict a price.

    ```yaml
    path:
      zip: integer                      # a type name is enough...
    query:
      rooms: {type: integer, minimum: 1, default: 3}
      kind: {enum: [house, flat], required: true, example: house}
    body:
      schema:                           # any JSON Schema (2020-12)
        type: object
        required: [size]
        properties: {size: {type: number}}
      example: {size: 120}              # prefills Swagger UI's "Try it out"
    responses:
      200:
        description: The price in dollars
        schema: {type: object, properties: {price: {type: number}}}
        example: {price: 433322.34}
      400: A form body with a missing feature   # ...and a description is enough
    ```

A YAML block without any of the four keys is left alone as documentation (a notebook
written for Kernel Gateway may show an example answer that way). Parameters take a JSON
Schema plus ``required``, ``description`` and ``example``. Path parameters are always
required. The body is JSON (``application/json``); it is required unless ``required: false``.
Examples and defaults must match their schema. A mistake is a DeclarationError with the
line in the markdown cell.

YAML is read as YAML 1.2 reads it: only ``true``/``false`` are booleans (``yes``, ``no``,
``on`` stay strings) and dates stay strings, so every value is plain JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from cellserve.schemas import schema_validator

_FENCE_OPEN = re.compile(r"\s{0,3}(`{3,}|~{3,})\s*(yaml|yml)\s*\Z", re.IGNORECASE)
_SECTIONS = ("path", "query", "body", "responses")
_SECTION_LINE = re.compile(r"^(path|query|body|responses)\s*:", re.MULTILINE)
_PARAMETER_KEYS = ("required", "description", "example")
_BODY_KEYS = ("schema", "example", "required", "description")
_RESPONSE_KEYS = ("description", "schema", "example", "content_type")
_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class DeclarationError(ValueError):
    """A mistake in a declaration; `line` counts from 1 at the top of the markdown cell."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Parameter:
    name: str
    location: Literal["path", "query"]
    schema: Mapping[str, Any]
    required: bool
    description: str | None = None
    example: Any = None

    @cached_property
    def validator(self) -> Draft202012Validator:
        """Its schema's validator, built at its first request (not compared or hashed)."""
        return schema_validator(self.schema)


@dataclass(frozen=True)
class RequestBody:
    schema: Mapping[str, Any]
    required: bool = True
    description: str | None = None
    example: Any = None

    @cached_property
    def validator(self) -> Draft202012Validator:
        """Its schema's validator, built at its first request (not compared or hashed)."""
        return schema_validator(self.schema)


@dataclass(frozen=True)
class DeclaredResponse:
    status: str
    description: str
    content_type: str = "application/json"
    schema: Mapping[str, Any] | None = None
    example: Any = None


@dataclass(frozen=True)
class Contract:
    """What a route declares; requests to it are checked against it before a kernel is used."""

    parameters: tuple[Parameter, ...] = ()
    body: RequestBody | None = None
    responses: tuple[DeclaredResponse, ...] = ()

    @cached_property
    def validates_requests(self) -> bool:
        """Whether a request can break it (a path parameter left a string never can)."""
        return self.body is not None or any(
            p.location == "query" or dict(p.schema) != {"type": "string"} for p in self.parameters
        )


def path_parameter(name: str) -> Parameter:
    """A path parameter declared nowhere: a required string, as Kernel Gateway passes it."""
    return Parameter(name, "path", {"type": "string"}, True)


def split_declaration(markdown: str) -> tuple[str | None, int, str]:
    """(YAML text or None, line of its first YAML line, the markdown without the block).

    As in CommonMark, a block that is never closed runs to the end of the cell.
    """
    lines = markdown.split("\n")
    for start, line in enumerate(lines):
        opened = _FENCE_OPEN.match(line)
        if not opened:
            continue
        fence = opened.group(1)
        for end in range(start + 1, len(lines)):
            closing = lines[end].strip()
            if closing.startswith(fence) and not closing.strip(fence[0]):
                rest = "\n".join(lines[:start] + lines[end + 1 :])
                return "\n".join(lines[start + 1 : end]), start + 2, rest
        return "\n".join(lines[start + 1 :]), start + 2, "\n".join(lines[:start])
    return None, 0, markdown


def parse_declaration(text: str, first_line: int, path_params: Sequence[str]) -> Contract | None:
    """The Contract in YAML `text`, whose first line is line `first_line` of its cell.

    None when the block uses none of the keys `path`, `query`, `body`, `responses`: it is
    then documentation (say, an example answer), as it was before cellserve read it.
    """
    try:
        reader = _Reader(text, first_line)
    except DeclarationError:
        if not _SECTION_LINE.search(text):
            return None  # not YAML we could read, and not meant for us either
        raise
    document = reader.data
    if document is None:
        return Contract()
    if not isinstance(document, dict) or not any(key in _SECTIONS for key in document):
        return None
    reader.only_keys(document, (), _SECTIONS)
    parameters = [
        *reader.parameters(document.get("path"), "path", path_params),
        *reader.parameters(document.get("query"), "query", path_params),
    ]
    missing = [name for name in path_params if name not in {p.name for p in parameters}]
    parameters += [path_parameter(name) for name in missing]
    parameters.sort(key=lambda p: p.location != "path")
    return Contract(
        parameters=tuple(parameters),
        body=reader.body(document.get("body")),
        responses=reader.responses(document.get("responses")),
    )


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's booleans and no timestamps: values stay plain JSON."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"\A(?:true|True|TRUE|false|False|FALSE)\Z"), list("tTfF")
)


class _Reader:
    """Walks the parsed YAML, turning every mistake into a DeclarationError with its line."""

    def __init__(self, text: str, first_line: int) -> None:
        self.first_line = first_line
        loader = _Loader(text)
        try:
            self.root = loader.get_single_node()
            self.data = None if self.root is None else loader.construct_document(self.root)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = first_line + (mark.line if mark is not None else 0)
            problem = getattr(exc, "problem", None) or str(exc)
            raise DeclarationError(line, f"this is not valid YAML: {problem}") from exc
        finally:
            loader.dispose()
        try:
            json.dumps(self.data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise DeclarationError(first_line, f"values must be plain JSON: {exc}") from exc

    def line(self, keys: Sequence[object]) -> int:
        """The line of the entry at `keys` (of its key, for a mapping entry)."""
        node = shown = self.root
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if k.value == str(key)), None)
                if pair is not None:
                    shown, node = pair
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(key, int)
                and key < len(node.value)
            ):
                shown = node = node.value[key]
        return self.first_line + (shown.start_mark.line if shown is not None else 0)

    def error(self, keys: Sequence[object], message: str) -> DeclarationError:
        where = ".".join(str(k) for k in keys)
        return DeclarationError(self.line(keys), f"{where}: {message}" if where else message)

    def only_keys(
        self, value: Mapping[Any, Any], keys: Sequence[object], known: Sequence[str]
    ) -> None:
        for key in value:
            if key not in known:
                raise self.error([*keys, key], f"unknown key; known keys: {_known(known)}")

    def schema(self, value: Any, keys: Sequence[object]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(keys, "a schema is a mapping, e.g. {type: integer}")
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise self.error([*keys, *exc.path], f"not a valid JSON Schema: {exc.message}") from exc
        for where, reference in _references(value, ()):
            if not _resolves(value, reference):
                raise self.error(
                    [*keys, *where],
                    f"`{reference}` does not point inside this schema; only local references "
                    "such as `#/$defs/name` are followed",
                )
        return value

    def matches(self, value: Any, schema: Mapping[str, Any], keys: Sequence[object]) -> None:
        """Raise when an example or default does not satisfy its own schema."""
        for problem in schema_validator(schema).iter_errors(value):
            where = [*keys, *problem.absolute_path]
            raise self.error(where, f"does not match the schema: {problem.message}")

    def parameters(
        self, section: Any, location: Literal["path", "query"], path_params: Sequence[str]
    ) -> list[Parameter]:
        if section is None:
            return []
        if not isinstance(section, dict):
            raise self.error([location], "a mapping of parameter name to type or schema")
        found = []
        for name, spec in section.items():
            keys = [location, name]
            if location == "path" and name not in path_params:
                names = ", ".join(f":{n}" for n in path_params) or "none"
                raise self.error(keys, f"not a parameter of this path (its parameters: {names})")
            if isinstance(spec, str):
                spec = {"type": spec}
            if not isinstance(spec, dict):
                raise self.error(keys, "a type name (integer) or a schema ({type: integer})")
            schema = {k: v for k, v in spec.items() if k not in _PARAMETER_KEYS}
            required = spec.get("required", location == "path")
            if not isinstance(required, bool):
                raise self.error([*keys, "required"], "true or false")
            if location == "path" and not required:
                raise self.error([*keys, "required"], "path parameters are always required")
            description = spec.get("description")
            if description is not None and not isinstance(description, str):
                raise self.error([*keys, "description"], "a description is text")
            self.schema(schema, keys)
            for extra in ("example", "default"):
                if extra in spec:
                    self.matches(spec[extra], schema, [*keys, extra])
            found.append(
                Parameter(str(name), location, schema, required, description, spec.get("example"))
            )
        return found

    def body(self, section: Any) -> RequestBody | None:
        if section is None:
            return None
        if not isinstance(section, dict) or "schema" not in section:
            raise self.error(["body"], "a mapping with a `schema` (and an `example`)")
        self.only_keys(section, ["body"], _BODY_KEYS)
        schema = self.schema(section["schema"], ["body", "schema"])
        if "example" in section:
            self.matches(section["example"], schema, ["body", "example"])
        required = section.get("required", True)
        if not isinstance(required, bool):
            raise self.error(["body", "required"], "true or false")
        return RequestBody(schema, required, section.get("description"), section.get("example"))

    def responses(self, section: Any) -> tuple[DeclaredResponse, ...]:
        if section is None:
            return ()
        if not isinstance(section, dict):
            raise self.error(["responses"], "a mapping of status code to description or details")
        found = []
        for status, spec in section.items():
            keys = ["responses", status]
            code = _status_key(status)
            if code is None:
                raise self.error(keys, "a status code from 100 to 599, or `default`")
            if isinstance(spec, str):
                spec = {"description": spec}
            if not isinstance(spec, dict):
                raise self.error(
                    keys, "a description, or a mapping with `description`, `schema`, `example`"
                )
            self.only_keys(spec, keys, _RESPONSE_KEYS)
            schema = None
            if "schema" in spec:
                schema = self.schema(spec["schema"], [*keys, "schema"])
                if "example" in spec:
                    self.matches(spec["example"], schema, [*keys, "example"])
            description = spec.get("description") or _phrase(code)
            content_type = spec.get("content_type", "application/json")
            if not isinstance(description, str) or not isinstance(content_type, str):
                raise self.error(keys, "`description` and `content_type` are text")
            found.append(
                DeclaredResponse(code, description, content_type, schema, spec.get("example"))
            )
        return tuple(found)


def _references(schema: Any, where: tuple[object, ...]) -> list[tuple[tuple[object, ...], str]]:
    """Every ``$ref`` in `schema`, with the keys leading to it."""
    found: list[tuple[tuple[object, ...], str]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                found.append(((*where, key), value))
            else:
                found += _references(value, (*where, key))
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _references(item, (*where, index))
    return found


def _resolves(root: Any, reference: str) -> bool:
    """Whether `reference` is a JSON Pointer fragment (``#/a/b``) naming a part of `root`."""
    if reference == "#":
        return True
    if not reference.startswith("#/"):
        return False
    node = root
    for token in reference[2:].split("/"):
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdecimal() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def _status_key(status: object) -> str | None:
    if status == "default":
        return "default"
    text = str(status)
    if isinstance(status, int | str) and text.isdecimal() and 100 <= int(text) <= 599:
        return text
    return None


def _phrase(status: str) -> str:
    if status == "default":
        return "Any other status"
    try:
        return HTTPStatus(int(status)).phrase
    except ValueError:
        return f"Status {status}"


def _known(keys: Sequence[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys)
