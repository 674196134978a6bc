"""Turn an HTTP request into the ``REQUEST`` string a notebook cell reads.

The value has Kernel Gateway's shape, so existing notebooks keep working::

    {"body": ..., "args": {"q": ["1", ""]}, "path": {"zip": "94110"},
     "headers": {"Content-Type": "application/json", "X-Many": ["a", "b"]}}

Fixed and extended on purpose: ``; charset=...`` does not stop JSON or form parsing; JSON or
form bodies that cannot be decoded are a 400; multipart file parts arrive under ``files``
instead of vanishing; binary bodies arrive base64-encoded with ``"body_encoding": "base64"``.

Hostile input gets a 400 with a reason, never a crash: an unknown charset or one that is not
a text encoding (``base64``, ``rot13``...); JSON nested deeper than ``MAX_JSON_DEPTH`` levels;
a JSON integer longer than Python's conversion limit (``sys.get_int_max_str_digits()``,
4300 digits by default). Bodies over ``INLINE_BODY_LIMIT`` bytes are parsed in a worker
thread (``build_request``), so parsing one never stalls the server's other clients.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_BINARY = "application/octet-stream"

MAX_JSON_DEPTH = 256
"""Deepest JSON nesting accepted (arrays and objects); deeper is a 400. Far below Python's
recursion limit, so notebook code can still walk the value recursively."""

INLINE_BODY_LIMIT = 64 * 1024
"""Bodies up to this many bytes are parsed on the event loop; larger ones in a thread."""

_TOKEN_PARAM = re.compile(r"([?&])token=[^&#\s]*(&?)")
_HIDDEN = "[hidden]"


class BadRequest(Exception):
    """The request cannot be represented faithfully; answered with 400 and this reason."""


@dataclass(frozen=True)
class RequestParts:
    """The raw pieces of an HTTP request that ``REQUEST`` is built from."""

    headers: Iterable[tuple[bytes, bytes]]
    query_string: bytes
    body: bytes
    path_params: Mapping[str, str] = field(default_factory=dict)


async def build_request(
    parts: RequestParts, *, token: str | None = None
) -> tuple[dict[str, Any], str]:
    """The ``REQUEST`` value and its JSON text; built in a worker thread when the body is
    larger than ``INLINE_BODY_LIMIT``, so that parsing it never stalls other clients."""
    if len(parts.body) <= INLINE_BODY_LIMIT:
        return _value_and_json(parts, token)
    return await anyio.to_thread.run_sync(_value_and_json, parts, token)


def _value_and_json(parts: RequestParts, token: str | None) -> tuple[dict[str, Any], str]:
    value = build_request_value(parts, token=token)
    return value, json.dumps(value)


def build_request_json(parts: RequestParts, *, token: str | None = None) -> str:
    """The JSON string assigned to ``REQUEST``; raise BadRequest for undecodable input."""
    return json.dumps(build_request_value(parts, token=token))


def build_request_value(parts: RequestParts, *, token: str | None = None) -> dict[str, Any]:
    """The ``REQUEST`` value before encoding; raise BadRequest for undecodable input.

    `token` is the server's auth token, if it has one: the notebook never sees it. The
    ``token`` query argument and the ``Authorization`` header are left out, a ``token=``
    parameter is cut from URLs in any header (the ``Referer`` of a page opened as
    ``/docs?token=X``), and the token's text anywhere else in a header becomes ``[hidden]``.
    """
    headers = _title_case_headers(parts.headers)
    args = _parse_query(parts.query_string)
    if token is not None:
        headers.pop("Authorization", None)
        args.pop("token", None)
        headers = {
            _without_token_text(name, token): _without_token(value, token)
            for name, value in headers.items()
        }
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
    return fold_headers(
        (_title_case(name.decode("latin-1")), value.decode("latin-1")) for name, value in raw
    )


def _title_case(name: str) -> str:
    return "-".join(word.capitalize() for word in name.split("-"))


def fold_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Headers as a JSON object, Tornado's shape: a repeated name holds the list of its values."""
    headers: dict[str, Any] = {}
    for name, value in pairs:
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            headers[name] = [previous, value]
    return headers


def _without_token(value: str | list[str], token: str) -> str | list[str]:
    if isinstance(value, list):
        return [_without_token_text(item, token) for item in value]
    return _without_token_text(value, token)


def _without_token_text(text: str, token: str) -> str:
    if "token=" in text:
        # `?token=X&a=1` → `?a=1`; `?a=1&token=X` → `?a=1`; `?token=X` → ``.
        text = _TOKEN_PARAM.sub(lambda m: m.group(1) if m.group(2) else "", text)
    for form in _token_forms(token):
        if form in text:
            text = text.replace(form, _HIDDEN)
    return text


@functools.lru_cache(maxsize=8)
def _token_forms(token: str) -> tuple[str, ...]:
    """The ways `token` can be spelled in a header, longest first (worked out once per token,
    not once per header of every request)."""
    return tuple(sorted({token, quote(token, safe=""), quote_plus(token)}, key=len, reverse=True))


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
    codec = _text_codec(charset)
    try:
        text = body.decode(codec)
    except (UnicodeError, ValueError) as exc:
        if media_type in (_JSON, _FORM):
            raise BadRequest(f"the {media_type} body is not valid {charset}") from exc
        return _base64_body(body)
    if media_type == _JSON:
        return {"body": _parse_json(text)}
    if media_type == _FORM:
        try:
            fields = parse_qs(text, keep_blank_values=True, encoding=codec, errors="strict")
        except (UnicodeError, ValueError) as exc:
            raise BadRequest(f"a form field is not valid {charset} once percent-decoded") from exc
        return {"body": fields}
    return {"body": text}


def _text_codec(charset: str) -> str:
    """The codec for a text `charset`; BadRequest for unknown ones and bytes-to-bytes codecs."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError) as exc:  # ValueError: a NUL in the name
        raise BadRequest(f"unknown charset {charset!r} in Content-Type") from exc
    # base64, hex, zlib, rot13... are codecs.lookup()-able but do not turn bytes into text;
    # "undefined" turns nothing into text.
    if not getattr(info, "_is_text_encoding", True) or info.name == "undefined":
        raise BadRequest(f"charset {charset!r} in Content-Type is not a text encoding")
    return info.name


def _parse_json(text: str) -> Any:
    """The parsed JSON value, or `text` itself when it is not JSON (Kernel Gateway's rule)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError as exc:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:  # an integer past Python's digit limit
        raise BadRequest(
            f"the JSON body has an integer longer than {sys.get_int_max_str_digits()} digits"
        ) from exc
    # Nesting deeper than the limit needs more brackets than the limit: count them first.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (stops counting past the limit)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending and deepest <= MAX_JSON_DEPTH:
        item, level = pending.pop()
        deepest = max(deepest, level)
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest if isinstance(value, dict | list) else 0


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
