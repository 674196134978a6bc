"""Reading a request body against the size limit, whatever its Content-Length says.

A server in front (hypercorn's h11) rejects malformed lengths itself, but a mounted app may
sit behind a server that passes them on: they must never become a 500.
"""

from __future__ import annotations

import pytest
from starlette.types import Message

from cellserve.endpoint import _BodyTooLarge, _read_body


def scope_with_length(length: str) -> dict[str, object]:
    return {"type": "http", "headers": [(b"content-length", length.encode("latin-1"))]}


async def one_chunk() -> Message:
    return {"type": "http.request", "body": b"abc", "more_body": False}


@pytest.mark.anyio
@pytest.mark.parametrize("length", ["\u00b2", "3 ", "-1", "0x3", ""])
async def test_a_length_that_is_not_ascii_digits_is_ignored(length: str) -> None:
    assert await _read_body(scope_with_length(length), one_chunk, limit=10) == b"abc"


@pytest.mark.anyio
@pytest.mark.parametrize("length", ["11", "9" * 5000])
async def test_a_declared_length_past_the_limit_is_refused_before_reading(length: str) -> None:
    async def never() -> Message:
        raise AssertionError("the body was read")

    with pytest.raises(_BodyTooLarge):
        await _read_body(scope_with_length(length), never, limit=10)
