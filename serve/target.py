"""The absolute-form request target (``GET http://127.0.0.1:8000/v1/models HTTP/1.1``, as a client
configured with a proxy sends): RFC 9112 §3.2.2 says a server MUST accept it. uvicorn's h11 protocol
passes the whole URL on as the path, which no route has (404 ``unknown_url``).

:class:`AbsoluteFormMiddleware`, the outermost, routes such a request by its path and query, as the
origin-form ``GET /v1/models`` is routed. Whatever the authority names, the request is answered here by
its path, as uvicorn's httptools protocol and nginx do: this server is no proxy and forwards nothing.
As RFC 9112 §3.2.2 also says, the authority replaces the ``Host`` header, so the checks on ``Host``
(:mod:`steam_persona.serve.local_guard`) judge the name the client asked for.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

_SCHEMES = (b"http://", b"https://")


def origin_form(scope: dict[str, Any]) -> None:
    """Rewrite an http ``scope`` whose target is in absolute form to its origin form, in place (the
    query string is already apart: uvicorn splits the target at ``?``)."""
    raw = scope.get("raw_path") or b""
    if not raw.lower().startswith(_SCHEMES):
        return
    url = urlsplit(raw.decode("latin-1"))
    path = url.path or "/"
    scope["raw_path"], scope["path"] = path.encode("latin-1"), unquote(path)
    headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
    scope["headers"] = [(b"host", url.netloc.rpartition("@")[2].encode("latin-1")), *headers]


class AbsoluteFormMiddleware:
    """ASGI middleware: :func:`origin_form` on every http request (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            origin_form(scope)
        await self.app(scope, receive, send)
