"""Who may reach what: token auth in front of every route and every scope, and a clean
refusal for WebSocket connections, which cellserve does not serve.

Accepted as ``Authorization: token X``, ``Authorization: Bearer X`` or ``?token=X``, compared
in constant time, on notebook routes, 404s, docs, static files, admin endpoints and WebSocket
upgrades alike. CORS preflights get no exemption here: when CORS is configured its middleware
sits in front and answers every preflight itself, the same way for every path; without CORS
a preflight is a request like any other and needs the token, so it reveals nothing about
which routes exist.
"""

from __future__ import annotations

import ctypes
import hmac
import os
import sys
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cellserve.response import error_response
from cellserve.settings import env_names

_POLICY_VIOLATION = 1008


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "a valid token is required: send `Authorization: Bearer <token>` or `?token=<token>`",
            {"WWW-Authenticate": "Bearer"},
        )
        await refuse(response, scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        ok = False
        for candidate in _offered_tokens(scope):
            # Compare every candidate, so timing says nothing about which one was close.
            ok |= hmac.compare_digest(candidate, self._token)
        return ok


class RefuseWebSockets:
    """Answer every WebSocket upgrade with a 404 instead of letting it reach a route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        response = error_response(404, "cellserve serves no WebSocket routes")
        await refuse(response, scope, receive, send)


async def refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send `response`; a WebSocket upgrade gets it as an HTTP denial when the server can
    send one (ASGI's ``websocket.http.response``), else a close before accepting (403)."""
    if scope["type"] != "websocket":
        await response(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # Starlette sends it as websocket.http.response.*
    else:
        await send({"type": "websocket.close", "code": _POLICY_VIOLATION})


def forget_token_variables() -> None:
    """Remove the auth token's environment variables from this process once they are read.

    Child processes (workers, kernels) then do not inherit them; and on Linux their values
    are blanked in the process's original environment block too, which
    ``/proc/<pid>/environ`` shows to every process of the same user, notebook code included.
    """
    names = env_names("auth_token")
    for name in names:
        os.environ.pop(name, None)
    if sys.platform == "linux":
        _blank_original_environment(names)


def _blank_original_environment(names: tuple[str, ...]) -> None:
    try:
        with open("/proc/self/stat", "rb") as stat:
            # Fields after the command name; env_start and env_end are fields 50 and 51.
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])
    except (OSError, IndexError, ValueError):
        return  # no /proc, or a kernel older than 3.5: nothing to blank
    if not 0 < start < end:
        return
    block = ctypes.string_at(start, end - start)
    for name in names:
        entry = name.encode() + b"="
        at = block.find(entry)
        while at != -1:
            if at == 0 or block[at - 1] == 0:  # a whole entry, not the tail of another one
                value = at + len(entry)
                value_end = block.find(b"\0", value)
                length = (value_end if value_end != -1 else len(block)) - value
                ctypes.memset(start + value, ord("*"), length)
            at = block.find(entry, at + 1)


def _offered_tokens(scope: Scope) -> list[bytes]:
    offered = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() in (b"token", b"bearer"):
                offered.append(credential.strip())
    query = scope.get("query_string", b"")
    if b"token=" in query:
        offered.extend(
            value.encode("utf-8")
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if key == "token"
        )
    return offered
