"""The fast path's two Jupyter messages, framed by hand: a ``comm_msg`` out, its answer back.

jupyter_client's ``Session`` handles every message type and every packer, and pays for it on
each request: four JSON dumps through a fallback-cleaning packer, a header with a parsed date,
and on the way back a full decode of header, parent and metadata with date extraction. The
fast path needs one message shape each way, so this module frames them directly, with the
same wire format and the same HMAC signature (https://jupyter-client.readthedocs.io, "The
Wire Protocol"):

    [DELIM, signature, header, parent_header, metadata, content]

Answers are recognised by their IOPub topic (``comm-<comm id>``, set by the kernel's comm)
before anything is decoded; only their parent header and content are parsed, after the
signature is checked.
"""

from __future__ import annotations

import hmac
import itertools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from jupyter_client import protocol_version  # type: ignore[attr-defined]

DELIM = b"<IDS|MSG>"
_EMPTY = b"{}"


class BadMessage(Exception):
    """A message on the comm's topic that is unsigned, wrongly signed or malformed."""


class CommWire:
    """Frames for one comm of one kernel, signed with the kernel's key.

    `auth` is the session's HMAC object (``Session.auth``), or None for an unsigned session.
    """

    def __init__(self, auth: hmac.HMAC | None, session: str, username: str, comm_id: str) -> None:
        self._auth = auth
        self._session = session
        self._username = username
        self.comm_id = comm_id
        self.topic = f"comm-{comm_id}".encode("ascii")
        self._prefix = f"{uuid.uuid4().hex}_"
        self._counter = itertools.count()

    def comm_msg(self, data: dict[str, Any]) -> tuple[str, list[bytes]]:
        """The msg_id and frames of a ``comm_msg`` carrying `data` to the comm."""
        msg_id = f"{self._prefix}{next(self._counter)}"
        header = json.dumps(
            {
                "msg_id": msg_id,
                "msg_type": "comm_msg",
                "username": self._username,
                "session": self._session,
                "date": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "version": protocol_version,
            }
        ).encode()
        content = json.dumps(
            {"comm_id": self.comm_id, "data": data}, ensure_ascii=False, allow_nan=False
        ).encode("utf-8", "surrogateescape")
        parts = [header, _EMPTY, _EMPTY, content]
        return msg_id, [DELIM, self._sign(parts), *parts]

    def answer(self, frames: list[bytes]) -> tuple[str, dict[str, Any]] | None:
        """(parent msg_id, data) of a comm message on this comm's topic, else None.

        Raises BadMessage when a message on the topic fails its signature or is malformed.
        """
        if not frames or frames[0] != self.topic:
            return None
        try:
            start = frames.index(DELIM) + 1
            signature, header, parent, metadata, content = frames[start : start + 5]
        except ValueError:
            raise BadMessage("a message without a delimiter or with too few frames") from None
        if self._auth is not None and not hmac.compare_digest(
            signature, self._sign([header, parent, metadata, content])
        ):
            raise BadMessage("a message with an invalid signature")
        try:
            msg_id = json.loads(parent)["msg_id"]
            data = json.loads(content)["data"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"a malformed comm message: {exc}") from None
        return str(msg_id), data

    def _sign(self, parts: list[bytes]) -> bytes:
        if self._auth is None:
            return b""
        digest = self._auth.copy()
        for part in parts:
            digest.update(part)
        return digest.hexdigest().encode()
