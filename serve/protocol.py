"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for request headers and OpenAI-shaped answers
to requests that are not HTTP.

uvicorn times out idle keep-alive connections, but stops the timer at the first byte of a request:
a client that sends half a request line and then nothing holds its connection for ever (the
slow-loris attack; bodies are timed in :mod:`steam_persona.serve.body`). Here every connection must
complete its request headers within ``header_timeout`` seconds of opening, or of its previous
response's end, or it is closed. Bytes h11 cannot parse (a negative ``Content-Length``, TLS sent to
plain HTTP) get uvicorn's 400 with an OpenAI error body instead of plain text (and an ``x-request-id``, as
every response has), and a row in the ``--log_file`` log (:func:`steam_persona.serve.access_log.write_unparsed`).
Bytes that break HTTP after a request's headers (a bad chunk size line of a chunked body) get the
same 400 with that request's id, and the request keeps its one row, written by the access log once
the app has ended (:data:`steam_persona.serve.access_log.PROTOCOL_ANSWER`).
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from steam_persona.common.atomic import JsonlLog
from steam_persona.serve.access_log import PROTOCOL_ANSWER, write_unparsed
from steam_persona.serve.errors import RequestError, error_bytes
from steam_persona.serve.request_id import HEADER as REQUEST_ID, STATE_KEY as REQUEST_ID_KEY, new_id, request_id


def h11_protocol(header_timeout: float, log: JsonlLog | None = None) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass for uvicorn's ``http=`` setting (see the module docstring); ``log``
    is the ``--log_file`` request log, if any."""

    class Protocol(H11Protocol):
        _armed = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self._armed += 1
            self.loop.call_later(header_timeout, self._deadline, self._armed)

        def _deadline(self, armed: int) -> None:
            # still waiting for the headers of the request this timer was armed for (h11: IDLE)
            if armed == self._armed and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.timeout_keep_alive_handler()  # uvicorn's own way of closing an idle connection

        def send_400_response(self, msg: str) -> None:
            # a request whose headers were parsed is running in the app (its body broke HTTP)
            cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
            if cycle is not None and cycle.response_started:  # the app's answer is under way: only closing is left
                self.transport.close()
                return
            body = error_bytes(RequestError(f"{msg} Send HTTP/1.1 with valid headers.", code="invalid_http"))
            # the request's own id, which the app's request-id middleware then keeps
            rid = new_id() if cycle is None else cycle.scope["state"].setdefault(
                REQUEST_ID_KEY, request_id(cycle.scope["headers"]))
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close"), (REQUEST_ID, rid.encode())]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()
            if cycle is not None:
                cycle.scope["state"][PROTOCOL_ANSWER] = {"status": 400, "error_code": "invalid_http"}
            elif log is not None:
                write_unparsed(log, rid)

    return Protocol
