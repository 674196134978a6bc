"""Token auth in front of every route: notebook routes, 404s, docs, static files, admin.

Accepted as ``Authorization: token X``, ``Authorization: Bearer X`` or ``?token=X``, compared
in constant time. CORS preflights (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) pass without a token; any other request needs it.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from cellserve.response import error_response


class TokenAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_preflight(scope) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "a valid token is required: send `Authorization: Bearer <token>` or `?token=<token>`",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        ok = False
        for candidate in _offered_tokens(scope):
            # Compare every candidate, so timing says nothing about which one was close.
            ok |= hmac.compare_digest(candidate, self._token)
        return ok


def _is_preflight(scope: Scope) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    if scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


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
