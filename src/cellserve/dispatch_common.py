"""Helpers shared by the server and the in-kernel dispatcher; the standard library only.

The kernel receives this module as source, before ``kernel_dispatch.py``, and runs both in
one namespace, so nothing here may import cellserve or anything outside the standard library.
The server uses the same code, so both execution paths limit output, honour a trailing
semicolon and treat text UTF-8 cannot encode alike.
"""

from __future__ import annotations

import io
import json
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

    def admit(self, bundle: Any) -> bool:
        """Count a value's or display's MIME bundle against the same limit; False once over."""
        size = bundle_size(bundle)
        if size > self.room:
            self.truncated = True
            self.room = 0
            return False
        self.room -= size
        return True

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


def bundle_size(bundle: Any) -> int:
    """Characters in a MIME bundle: text as is, base64 images as encoded, the rest as JSON."""
    return sum(
        len(value) if isinstance(value, str) else len(json.dumps(value, default=str))
        for value in bundle.values()
    )


def utf8_safe(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates) replaced by U+FFFD.

    Surrogate pairs are joined into the character they stand for, as browsers do.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value


def make_output_encodable(session: Any) -> None:
    """Let a kernel's `session` send messages holding lone surrogates, as U+FFFD.

    jupyter_client's packer encodes JSON as strict UTF-8: a cell printing ``"\\ud800"``
    would lose the whole message (its stdout, value, or the dispatcher's answer).
    """
    pack = session.pack

    def pack_encodable(obj: Any) -> bytes:
        try:
            return bytes(pack(obj))
        except UnicodeEncodeError:
            return bytes(pack(_encodable(obj)))

    session.pack = pack_encodable


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
