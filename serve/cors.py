"""CORS for browsers (``--cors_origins``): starlette's ``CORSMiddleware``, with refused preflights
answered as every other 4xx, and every ``X-Stainless-*`` header allowed.

The OpenAI SDKs (openai-python, openai-node: Stainless-generated) send a family of ``X-Stainless-*``
headers that grows with their versions (``-Helper-Method`` from ``chat.completions.stream()`` and
``.parse()``, ``-Helper``, ``-Poll-Helper``, ``-Timeout`` …); starlette allows only listed names
or all, so names with that prefix are taken out of a preflight's ``Access-Control-Request-Headers``
before starlette's check and added to its ``Access-Control-Allow-Headers``.

Starlette answers a preflight it refuses (an origin, method or header not allowed) with a
plain-text ``400 Disallowed CORS origin``; here it is an OpenAI-shaped 400 ``cors_not_allowed``
(``{"error": {"message", "type", "param", "code"}}``, :mod:`steam_persona.serve.errors`) with
starlette's own headers and reasons kept, and its code noted for the ``--log_file`` row.

An ``Origin`` is compared with the list case-insensitively, as the keyless guard
(:mod:`steam_persona.serve.local_guard`) compares it: one that differs from a listed origin only in
case is served with CORS headers, or, if not listed, refused by both.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from steam_persona.serve.errors import error_body
from steam_persona.serve.local_guard import origin_key

#: The error code of a refused preflight.
REFUSED = "cors_not_allowed"
#: Request headers with this prefix are allowed whatever their name (the OpenAI SDKs' own).
SDK_HEADER_PREFIX = "x-stainless-"


class OpenAICORSMiddleware(CORSMiddleware):
    """``CORSMiddleware`` (same arguments) whose refused preflights are OpenAI-shaped 400s."""

    def is_allowed_origin(self, origin: str) -> bool:
        """starlette's test, with ``Origin`` compared as the keyless guard compares it
        (:func:`~steam_persona.serve.local_guard.origin_key`: case-insensitive; the list is lower case
        already). The answer's ``Access-Control-Allow-Origin`` is still the ``Origin`` as sent, which is
        what a browser compares it with."""
        return super().is_allowed_origin(origin) or origin_key(origin) in self.allow_origins

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        # starlette's own test for a preflight
        if headers is None or scope["method"] != "OPTIONS" or "origin" not in headers \
                or "access-control-request-method" not in headers:
            return await super().__call__(scope, receive, send)
        sdk_headers, headers = _without_sdk_headers(headers)
        response = self.preflight_response(request_headers=headers)
        if response.status_code == 200 and sdk_headers:
            allowed = response.headers["access-control-allow-headers"]  # starlette lists the safelisted ones at least
            response.headers["access-control-allow-headers"] = ", ".join([allowed, *sdk_headers])
        if response.status_code == 400:
            scope.setdefault("state", {})["error_code"] = REFUSED
            response = self._refusal(response)
        await response(scope, receive, send)

    def _refusal(self, plain: Response) -> JSONResponse:
        """Starlette's plain-text refusal (body ``Disallowed CORS origin, method, …``) as OpenAI's error,
        naming what was refused and what is allowed (not the origins: the list is not the caller's business)."""
        refused = plain.body.decode("utf-8").removeprefix("Disallowed CORS ")
        kept = {k: v for k, v in plain.headers.items() if k not in ("content-type", "content-length")}
        message = (f"CORS preflight refused ({refused} not allowed): this server allows the origins given by its "
                   f"--cors_origins, the methods {', '.join(self.allow_methods)} and the headers "
                   f"{', '.join(sorted(self.allow_headers))}, {SDK_HEADER_PREFIX}*")
        return JSONResponse(error_body(message, code=REFUSED), status_code=400, headers=kept)


def _without_sdk_headers(headers: Headers) -> tuple[list[str], Headers]:
    """``(the requested X-Stainless-* names, the preflight's headers without them)``."""
    requested = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
    sdk = [h for h in requested if h.startswith(SDK_HEADER_PREFIX)]
    if not sdk:
        return [], headers
    rest = MutableHeaders(raw=list(headers.raw))
    others = [h for h in requested if not h.startswith(SDK_HEADER_PREFIX)]
    if others:
        rest["access-control-request-headers"] = ", ".join(others)
    else:
        del rest["access-control-request-headers"]
    return sdk, rest
