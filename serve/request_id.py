"""``x-request-id`` on every response, so that a client's error can be matched to its access-log line.

OpenAI's API answers every request with an ``x-request-id`` header (the openai SDK shows it as
``response._request_id`` and ``APIStatusError.request_id``). As vLLM does, a client's own
``X-Request-Id`` is echoed when it is sane (printable ASCII, at most :data:`MAX_LEN` characters);
otherwise an id of OpenAI's form, ``req_`` and 32 hex digits, is made. The id is put in
``scope["state"]["request_id"]`` for the JSON-lines access log (:mod:`steam_persona.serve.access_log`).

Pure ASGI and the outermost of our middleware, so that every answer the app sends carries it:
successes, OpenAI-shaped errors, streams and CORS preflights.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

#: The response (and request) header.
HEADER = b"x-request-id"
#: Longest client-sent id echoed (longer ones are replaced).
MAX_LEN = 128
#: ``scope["state"]`` key of the request's id.
STATE_KEY = "request_id"
_SANE = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_LEN)


def new_id() -> str:
    """A fresh id of OpenAI's form: ``req_`` and 32 lower-case hex digits."""
    return "req_" + uuid.uuid4().hex


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The id for a request with these raw ASGI headers: its first ``X-Request-Id`` when sane, else :func:`new_id`."""
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _SANE.fullmatch(value) else new_id()
    return new_id()


class RequestIdMiddleware:
    """Give each HTTP request an id (:func:`request_id`) and add it to its response's headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        rid = state[STATE_KEY] = state.get(STATE_KEY) or request_id(scope["headers"])  # the protocol's 400 may have set it
        header = (HEADER, rid.encode("ascii"))

        async def with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*kept, header]}
            await send(message)
        await self.app(scope, receive, with_id)
