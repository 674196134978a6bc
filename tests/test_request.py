"""request.py: the REQUEST string a cell reads, with Kernel Gateway's parse rules (§4)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cellserve.request import BadRequest, RequestParts, build_request_json

KG_KEYS = {"body", "args", "path", "headers"}


def request(
    *,
    query: bytes = b"",
    body: bytes = b"",
    content_type: str | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
    path: Mapping[str, str] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    raw_headers = list(headers)
    if content_type is not None:
        raw_headers.append((b"content-type", content_type.encode("latin-1")))
    parts = RequestParts(raw_headers, query, body, dict(path or {}))
    text = build_request_json(parts, token=token)
    assert isinstance(text, str)
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def body_of(body: bytes, content_type: str | None) -> Any:
    return request(body=body, content_type=content_type)["body"]


# -- shape ------------------------------------------------------------------------------------


def test_request_is_a_json_string_with_exactly_kernel_gateways_keys() -> None:
    text = build_request_json(RequestParts([], b"", b""))
    assert isinstance(text, str)
    assert json.loads(text) == {"body": "", "args": {}, "path": {}, "headers": {}}


def test_unicode_and_quotes_survive() -> None:
    value = request(body='{"q": "naïve \\"quoted\\" 😀"}'.encode(), content_type="text/plain")
    assert value["body"] == '{"q": "naïve \\"quoted\\" 😀"}'
    assert set(value) == KG_KEYS


def test_path_params_are_passed_through() -> None:
    assert request(path={"zip": "94110", "name": "a/b"})["path"] == {"zip": "94110", "name": "a/b"}


# -- args -------------------------------------------------------------------------------------


def test_args_are_lists_keep_blanks_and_decode_plus_and_utf8() -> None:
    value = request(query=b"person=governor,+rick&e=&x=1&x=2&q=%C3%A9+%2B")
    assert value["args"] == {
        "person": ["governor, rick"],
        "e": [""],
        "x": ["1", "2"],
        "q": ["é +"],
    }


def test_query_that_is_not_utf8_once_decoded_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="query string"):
        request(query=b"q=%FF")


# -- headers ----------------------------------------------------------------------------------


def test_headers_are_title_cased_and_repeats_become_lists() -> None:
    value = request(
        headers=[
            (b"x-kgc-test", b"1"),
            (b"host", b"example.org"),
            (b"x-many", b"a"),
            (b"x-many", b"b"),
            (b"x-many", b"c"),
            (b"if-none-match", b'""9a28a9f1""'),
        ]
    )
    assert value["headers"] == {
        "X-Kgc-Test": "1",
        "Host": "example.org",
        "X-Many": ["a", "b", "c"],
        "If-None-Match": '""9a28a9f1""',
    }


# -- body -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
        (b'["Rick", "Maggie"]', ["Rick", "Maggie"]),
        (b"42", 42),
        (b"not json {", "not json {"),  # invalid JSON → raw string, as Kernel Gateway
    ],
)
def test_json_body(body: bytes, expected: Any) -> None:
    assert body_of(body, "application/json") == expected


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"],
)
def test_json_with_parameters_or_other_case_is_still_parsed(content_type: str) -> None:
    assert body_of(b'{"a": 1}', content_type) == {"a": 1}


def test_json_in_declared_latin1_charset_is_decoded() -> None:
    assert body_of('{"name": "José"}'.encode("latin-1"), "application/json; charset=latin-1") == {
        "name": "José"
    }


def test_json_that_is_not_utf8_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="application/json"):
        body_of(b'{"a": "\xff"}', "application/json")


def test_form_body() -> None:
    form = b"name=Rick+Grimes&e=&k=1&k=2&u=%C3%A9"
    assert body_of(form, "application/x-www-form-urlencoded") == {
        "name": ["Rick Grimes"],
        "e": [""],
        "k": ["1", "2"],
        "u": ["é"],
    }
    assert body_of(b"a=1", "application/x-www-form-urlencoded; charset=utf-8") == {"a": ["1"]}


def test_form_that_is_not_utf8_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        body_of(b"a=\xff", "application/x-www-form-urlencoded")


def test_form_with_invalid_utf8_percent_escape_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        body_of(b"a=%FF", "application/x-www-form-urlencoded")


def test_form_percent_escapes_follow_the_declared_charset() -> None:
    body = body_of(b"a=%E9", "application/x-www-form-urlencoded; charset=latin-1")
    assert body == {"a": ["é"]}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"hola {}", "text/plain", "hola {}"),
        (b"hola", None, "hola"),
        (b"<feed/>", "application/atom+xml", "<feed/>"),
        (b"x", "foo", "x"),
        ("café".encode("latin-1"), "text/plain; charset=latin-1", "café"),
        ("café".encode("utf-16"), "text/plain; charset=utf-16", "café"),
    ],
)
def test_other_bodies_are_text(body: bytes, content_type: str | None, expected: str) -> None:
    value = request(body=body, content_type=content_type)
    assert value["body"] == expected
    assert set(value) == KG_KEYS


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/json", "application/octet-stream", "multipart/form-data"],
)
def test_empty_body_is_an_empty_string(content_type: str | None) -> None:
    value = request(content_type=content_type)
    assert value["body"] == ""
    assert set(value) == KG_KEYS


def test_octet_stream_is_base64() -> None:
    data = bytes(range(256))
    value = request(body=data, content_type="application/octet-stream")
    assert value["body_encoding"] == "base64"
    assert base64.b64decode(value["body"]) == data
    assert set(value) == KG_KEYS | {"body_encoding"}


@pytest.mark.parametrize("content_type", ["text/plain", None, "image/png"])
def test_text_that_is_not_utf8_is_base64(content_type: str | None) -> None:
    value = request(body=b"\x89PNG\xff\x00", content_type=content_type)
    assert value["body_encoding"] == "base64"
    assert base64.b64decode(value["body"]) == b"\x89PNG\xff\x00"


def test_unknown_charset_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="bogus"):
        body_of(b"x", "text/plain; charset=bogus")


def test_first_content_type_wins_when_repeated() -> None:
    value = request(
        body=b'{"a": 1}',
        headers=[(b"content-type", b"application/json"), (b"content-type", b"text/plain")],
    )
    assert value["body"] == {"a": 1}
    assert value["headers"]["Content-Type"] == ["application/json", "text/plain"]


# -- multipart --------------------------------------------------------------------------------

BOUNDARY = "----cellserveBoundary7MA4YWxk"


def multipart(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """Parts are (name, filename, content_type, data)."""
    chunks = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + data + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def test_multipart_fields_and_files() -> None:
    picture = b"\x89PNG\r\n\x1a\n\x00\xff"
    body = multipart(
        ("title", None, None, "Grüße".encode()),
        ("tag", None, None, b"a"),
        ("tag", None, None, b"b"),
        ("photo", "cat.png", "image/png", picture),
        ("notes", "notes.txt", None, b"hello"),
    )
    value = request(body=body, content_type=f"multipart/form-data; boundary={BOUNDARY}")
    assert value["body"] == {"title": ["Grüße"], "tag": ["a", "b"]}
    assert value["files"] == [
        {
            "name": "photo",
            "filename": "cat.png",
            "content_type": "image/png",
            "size": len(picture),
            "content": base64.b64encode(picture).decode("ascii"),
        },
        {
            "name": "notes",
            "filename": "notes.txt",
            "content_type": "application/octet-stream",
            "size": 5,
            "content": base64.b64encode(b"hello").decode("ascii"),
        },
    ]
    assert set(value) == KG_KEYS | {"files"}


def test_multipart_without_files_has_no_files_key() -> None:
    body = multipart(("a", None, None, b"1"))
    value = request(body=body, content_type=f'multipart/form-data; boundary="{BOUNDARY}"')
    assert value["body"] == {"a": ["1"]}
    assert set(value) == KG_KEYS


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"x", "multipart/form-data", "boundary"),
        (b"garbage", f"multipart/form-data; boundary={BOUNDARY}", "malformed multipart"),
        (
            multipart(("a", None, None, b"\xff")),
            f"multipart/form-data; boundary={BOUNDARY}",
            "not valid UTF-8",
        ),
    ],
)
def test_bad_multipart_is_a_bad_request(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        body_of(body, content_type)


# -- credentials ------------------------------------------------------------------------------


def test_credentials_are_visible_by_default_as_in_kernel_gateway() -> None:
    value = request(query=b"token=s3cret&q=1", headers=[(b"authorization", b"token s3cret")])
    assert value["args"] == {"token": ["s3cret"], "q": ["1"]}
    assert value["headers"] == {"Authorization": "token s3cret"}


def test_server_token_drops_token_arg_and_authorization_header() -> None:
    value = request(
        query=b"token=s3cret&q=1",
        headers=[(b"authorization", b"Bearer s3cret"), (b"x-other", b"kept")],
        token="s3cret",
    )
    assert value["args"] == {"q": ["1"]}
    assert value["headers"] == {"X-Other": "kept"}
    assert "s3cret" not in json.dumps(value)


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("http://h/docs?token=s3cret", "http://h/docs"),
        ("http://h/docs?token=s%33cret&a=1", "http://h/docs?a=1"),
        ("http://h/docs?a=1&token=s3cret", "http://h/docs?a=1"),
        ("http://h/docs?a=1&token=s3cret&b=2#top", "http://h/docs?a=1&b=2#top"),
        ("http://h/docs?mytoken=1", "http://h/docs?mytoken=1"),
    ],
)
def test_server_token_is_cut_from_urls_in_headers(referer: str, expected: str) -> None:
    value = request(headers=[(b"referer", referer.encode())], token="s3cret")
    assert value["headers"] == {"Referer": expected}


def test_server_token_text_is_hidden_in_every_header() -> None:
    value = request(
        headers=[
            (b"x-original-uri", b"/x?token=s3cret"),
            (b"cookie", b"a=1; token=s3cret"),
            (b"x-many", b"s3cret"),
            (b"x-many", b"s%2B3cret"),
        ],
        token="s+3cret",
    )
    assert "s+3cret" not in json.dumps(value) and "s%2B3cret" not in json.dumps(value)
    value = request(
        headers=[(b"cookie", b"a=1; token=s3cret"), (b"x-k", b"s3cret")], token="s3cret"
    )
    assert value["headers"] == {"Cookie": "a=1; token=[hidden]", "X-K": "[hidden]"}


# -- hostile bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "charset", ["base64", "rot13", "hex", "zlib", "bz2", "uu", "quopri", "undefined"]
)
@pytest.mark.parametrize(
    "media_type", ["text/plain", "application/json", "application/x-www-form-urlencoded"]
)
def test_charset_that_is_not_a_text_encoding_is_a_bad_request(
    charset: str, media_type: str
) -> None:
    with pytest.raises(BadRequest, match="charset"):
        body_of(b"aGVsbG8=", f"{media_type}; charset={charset}")


def test_json_nested_past_the_limit_is_a_bad_request() -> None:
    from cellserve.request import MAX_JSON_DEPTH

    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert body_of(deepest.encode(), "application/json") is not None
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(BadRequest, match=f"deeper than {MAX_JSON_DEPTH} levels"):
            body_of(("[" * depth + "]" * depth).encode(), "application/json")
    objects = '{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(BadRequest, match="deeper"):
        body_of(objects.encode(), "application/json")


def test_many_brackets_that_do_not_nest_deeply_are_fine() -> None:
    flat = "[" + ",".join(["[]"] * 10_000) + "]"
    assert len(body_of(flat.encode(), "application/json")) == 10_000
    in_strings = json.dumps(["[[[[" * 1000])
    assert body_of(in_strings.encode(), "application/json") == ["[[[[" * 1000]


def test_json_integer_past_pythons_digit_limit_is_a_bad_request() -> None:
    assert body_of(b"9" * 4000, "application/json") == int("9" * 4000)
    with pytest.raises(BadRequest, match="integer longer than 4300 digits"):
        body_of(b"[" + b"9" * 5000 + b"]", "application/json")
