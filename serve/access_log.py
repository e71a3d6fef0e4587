"""The ``--log_file`` request log: one JSON line for every response the server sends.

A row (:class:`steam_persona.common.atomic.JsonlLog`, which adds ``time``) holds ``event``
"request", ``method``, ``path``, ``status`` (as sent; 499, nginx's "client closed request", when the client
left before its response began: what the app answered then was never sent), ``ms`` (from the request's arrival to its
response's end, or to the client's leaving), ``request_id`` (the response's ``x-request-id``,
:mod:`steam_persona.serve.request_id`) and, when known, ``error_code``, ``prompt_tokens``,
``stream`` (noted in ``scope["state"]`` by :mod:`steam_persona.serve.middleware`) and
``completion_tokens`` (generated so far, noted by the engine through
:func:`note_completion_tokens`, which may also note the ``prompt_tokens`` the engine evaluates: the
count in the response's ``usage``, fill-in-the-middle tokens of a ``suffix`` included). A client that left before its response's end (a stream closed
after some chunks or before any was read, a non-streamed request given up) adds
``"disconnected": true``. A request cut by a forced quit (a second Ctrl-C) gets its row at once
(:func:`write_cut`), with ``"forced_quit": true`` and ``error_code`` "shutting_down" where the
protocol could still tell its client. Never keys or text.

:class:`AccessLog` is pure ASGI and sits just inside the request id and outside CORS, so that
preflights are logged too. Bytes that are not HTTP never reach the app: the protocol writes their
row with :func:`write_unparsed` (no method, path or time: there was no request). Bytes that break
HTTP after a request's headers (a bad chunk of a chunked body) get the protocol's 400 while the app
runs: the protocol notes it under :data:`PROTOCOL_ANSWER`, and the request's one row says that
400 (its ``error_code`` "invalid_http"), not what the app answered unsent.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Awaitable, Callable

from steam_persona.common.atomic import JsonlLog
from steam_persona.serve.request_id import STATE_KEY as REQUEST_ID

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: a row's status for a client that left before its response began (nginx's "client closed request")
CLIENT_CLOSED = 499
#: ``scope["state"]`` keys copied into a row besides method, path, status and time.
LOGGED = (REQUEST_ID, "error_code", "prompt_tokens", "stream")
#: ``scope["state"]`` key of the answer the HTTP protocol sent in the app's stead (``{"status",
#: "error_code"}``; :mod:`steam_persona.serve.protocol`).
PROTOCOL_ANSWER = "protocol_answer"
#: ``scope["state"]`` key of the request's open row (:func:`write_cut` writes it from outside the app).
EXCHANGE = "access_exchange"
#: Per request: a list the engine fills with a getter of its completion tokens so far and its prompt tokens.
_TOKENS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("completion_tokens", default=None)


def note_completion_tokens(count: Callable[[], int], prompt_tokens: int | None = None) -> None:
    """Give this request's row ``completion_tokens = count()`` and, when given, ``prompt_tokens``
    (called by an engine as generation starts; a no-op outside a logged request, e.g. in ``steam-train chat``)."""
    slot = _TOKENS.get()
    if slot is not None:
        slot[:] = [count, prompt_tokens]


def write_unparsed(log: JsonlLog, request_id: str) -> None:
    """The row of a 400 ``invalid_http`` answer to bytes that were not an HTTP request."""
    log.write(event="request", method=None, path=None, status=400, ms=None, request_id=request_id,
              error_code="invalid_http")


def write_cut(state: dict[str, Any]) -> bool:
    """A forced quit (:mod:`steam_persona.serve.cli`): write the row of the request whose
    ``scope["state"]`` this is now, with ``"forced_quit": true`` (the process ends before its app
    does); what the protocol sent it last is noted under :data:`PROTOCOL_ANSWER`. Returns whether a
    row was written (``False``: no ``--log_file``, or its row is out already)."""
    ex = state.get(EXCHANGE)
    if ex is None or ex.written:
        return False
    ex.forced_quit = True
    ex.write()
    return True


class _Exchange:
    """One request's facts while its response goes out."""

    def __init__(self, scope: dict[str, Any], log: JsonlLog) -> None:
        self.scope, self.log, self.start = scope, log, time.perf_counter()
        self.status: int | None = None
        self.disconnected = self.written = self.left_before_start = self.forced_quit = False
        self.tokens: list[Any] = []
        scope.setdefault("state", {})[EXCHANGE] = self

    def write(self) -> None:
        self.written = True
        self.log.write(**self.row())

    def row(self) -> dict[str, Any]:
        state = self.scope.get("state", {})
        status = CLIENT_CLOSED if self.left_before_start else self.status
        row = {"event": "request", "method": self.scope["method"], "path": self.scope["path"], "status": status,
               "ms": round((time.perf_counter() - self.start) * 1000, 1),
               **{k: v for k, v in state.items() if k in LOGGED}}
        if self.tokens:
            row["completion_tokens"] = self.tokens[0]()
            if self.tokens[1] is not None:
                row["prompt_tokens"] = self.tokens[1]
        if PROTOCOL_ANSWER in state:  # the server closed the connection, not the client
            row.update(state[PROTOCOL_ANSWER])
        elif self.disconnected:
            row["disconnected"] = True
        if self.forced_quit:
            row["forced_quit"] = True
        return row


class AccessLog:
    """Write one row to ``log`` per HTTP response (see the module docstring).

    Args:
        app: the ASGI app to wrap.
        log: the JSON-lines log.
    """

    def __init__(self, app: Any, log: JsonlLog) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ex = _Exchange(scope, self.log)

        async def watched_receive() -> Message:
            message = await receive()
            # after the response's end uvicorn answers every receive with a disconnect: not a client's leaving
            if message["type"] == "http.disconnect" and not ex.written:
                ex.disconnected = True
                ex.left_before_start = ex.left_before_start or ex.status is None
            return message

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body") and not ex.written:
                ex.write()

        token = _TOKENS.set(ex.tokens)
        try:
            await self.app(scope, watched_receive, logged_send)
        finally:
            _TOKENS.reset(token)
            if not ex.written:  # the response never ended: its client left (or the server stopped it)
                ex.write()
