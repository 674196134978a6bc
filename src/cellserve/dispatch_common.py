"""Helpers shared by the server and the in-kernel dispatcher; the standard library only.

The kernel receives this module as source, before ``kernel_dispatch.py``, and runs both in
one namespace, so nothing here may import cellserve or anything outside the standard library.
The server uses the same code, so both execution paths truncate stdout and honour a trailing
semicolon alike.
"""

from __future__ import annotations

import io
import tokenize
from typing import Any


class LimitedText(io.TextIOBase):
    """stdout for one request: keeps at most `limit` characters, remembers what it dropped.

    A full text stream (``encoding``, ``writelines``, ``fileno``...), so code that inspects
    ``sys.stdout`` behaves as it does under ``execute_request``. The server collects
    ``execute_request`` output with it too, so both paths truncate alike.
    """

    encoding = "UTF-8"

    def __init__(self, limit: int, underlying: Any = None) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.room = limit
        self.truncated = False
        self._underlying = underlying

    def write(self, text: str) -> int:
        if len(text) > self.room:
            self.truncated = True
            text = text[: self.room]
        self.room -= len(text)
        if text:
            self.parts.append(text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        if self._underlying is None:
            raise io.UnsupportedOperation("fileno")
        return int(self._underlying.fileno())

    @property
    def text(self) -> str:
        return "".join(self.parts)


def hides_value(code: str) -> bool:
    """IPython hides a cell's value when its last token is a semicolon (comments aside)."""
    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type not in _IGNORED_TOKENS:
                last = token
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


_IGNORED_TOKENS = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
)
