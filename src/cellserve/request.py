"""Turn an HTTP request into the ``REQUEST`` string a notebook cell reads.

The value has Kernel Gateway's shape, so existing notebooks keep working::

    {"body": ..., "args": {"q": ["1", ""]}, "path": {"zip": "94110"},
     "headers": {"Content-Type": "application/json", "X-Many": ["a", "b"]}}

Fixed and extended on purpose: ``; charset=...`` does not stop JSON or form parsing; JSON or
form bodies that cannot be decoded are a 400; multipart file parts arrive under ``files``
instead of vanishing; binary bodies arrive base64-encoded with ``"body_encoding": "base64"``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from python_multipart.multipart import MultipartParser, parse_options_header

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_BINARY = "application/octet-stream"


class BadRequest(Exception):
    """The request cannot be represented faithfully; answered with 400 and this reason."""


@dataclass(frozen=True)
class RequestParts:
    """The raw pieces of an HTTP request that ``REQUEST`` is built from."""

    headers: Iterable[tuple[bytes, bytes]]
    query_string: bytes
    body: bytes
    path_params: Mapping[str, str] = field(default_factory=dict)


def build_request_json(parts: RequestParts, *, hide_credentials: bool = False) -> str:
    """The JSON string assigned to ``REQUEST``; raise BadRequest for undecodable input."""
    return json.dumps(build_request_value(parts, hide_credentials=hide_credentials))


def build_request_value(parts: RequestParts, *, hide_credentials: bool = False) -> dict[str, Any]:
    """The ``REQUEST`` value before encoding; raise BadRequest for undecodable input.

    With `hide_credentials`, the ``token`` query argument and the ``Authorization`` header are
    left out so the notebook never sees the server's auth token.
    """
    headers = _title_case_headers(parts.headers)
    args = _parse_query(parts.query_string)
    if hide_credentials:
        headers.pop("Authorization", None)
        args.pop("token", None)
    content_type = headers.get("Content-Type", "")
    if isinstance(content_type, list):
        content_type = content_type[0]
    value: dict[str, Any] = {
        "body": "",
        "args": args,
        "path": dict(parts.path_params),
        "headers": headers,
    }
    value.update(_parse_body(parts.body, content_type))
    return value


def _title_case_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Header names as Tornado spells them (``x-kgc-test`` → ``X-Kgc-Test``); repeats → list."""
    headers: dict[str, Any] = {}
    for raw_name, raw_value in raw:
        name = "-".join(word.capitalize() for word in raw_name.decode("latin-1").split("-"))
        value = raw_value.decode("latin-1")
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            headers[name] = [previous, value]
    return headers


def _parse_query(query_string: bytes) -> dict[str, list[str]]:
    try:
        return parse_qs(
            query_string.decode("latin-1"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
        )
    except UnicodeDecodeError as exc:
        raise BadRequest("the query string is not valid UTF-8 once percent-decoded") from exc


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    media_type_bytes, options = parse_options_header(content_type)
    media_type = media_type_bytes.decode("latin-1").lower()
    charset = options.get(b"charset", b"utf-8").decode("latin-1")
    if not body:
        return {"body": ""}
    if media_type == _MULTIPART:
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary parameter")
        return _parse_multipart(body, boundary)
    if media_type == _BINARY:
        return _base64_body(body)
    try:
        text = body.decode(_known_charset(charset))
    except UnicodeDecodeError as exc:
        if media_type in (_JSON, _FORM):
            raise BadRequest(f"the {media_type} body is not valid {charset}") from exc
        return _base64_body(body)
    if media_type == _JSON:
        try:
            return {"body": json.loads(text)}
        except json.JSONDecodeError:
            return {"body": text}
    if media_type == _FORM:
        try:
            fields = parse_qs(text, keep_blank_values=True, encoding=charset, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"a form field is not valid {charset} once percent-decoded") from exc
        return {"body": fields}
    return {"body": text}


def _known_charset(charset: str) -> str:
    try:
        return codecs.lookup(charset).name
    except LookupError as exc:
        raise BadRequest(f"unknown charset {charset!r} in Content-Type") from exc


def _base64_body(body: bytes) -> dict[str, Any]:
    return {"body": base64.b64encode(body).decode("ascii"), "body_encoding": "base64"}


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def _parse_multipart(body: bytes, boundary: bytes) -> dict[str, Any]:
    """Form fields go to ``body`` as lists (Kernel Gateway's shape); file parts to ``files``."""
    parts: list[_Part] = []
    header_name = bytearray()
    header_value = bytearray()

    def on_header_end() -> None:
        parts[-1].headers[header_name.decode("latin-1").lower()] = header_value.decode("latin-1")
        header_name.clear()
        header_value.clear()

    callbacks: Any = {
        "on_part_begin": lambda: parts.append(_Part()),
        "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
        "on_header_field": lambda data, start, end: header_name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: header_value.extend(data[start:end]),
        "on_header_end": on_header_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except (ValueError, binascii.Error) as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc

    fields: dict[str, list[str]] = {}
    files: list[dict[str, Any]] = []
    for part in parts:
        _, disposition = parse_options_header(part.headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None:
            files.append(
                {
                    "name": name,
                    "filename": filename.decode("utf-8", "replace"),
                    "content_type": part.headers.get("content-type", _BINARY),
                    "size": len(part.data),
                    "content": base64.b64encode(part.data).decode("ascii"),
                }
            )
            continue
        try:
            fields.setdefault(name, []).append(part.data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(f"multipart field {name!r} is not valid UTF-8") from exc
    result: dict[str, Any] = {"body": fields}
    if files:
        result["files"] = files
    return result
