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
On a forced quit (a second Ctrl-C) :meth:`cut` tells each running request's client, and writes
its row, before the process ends.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from steam_persona.common.atomic import JsonlLog
from steam_persona.serve.access_log import PROTOCOL_ANSWER, write_cut, write_unparsed
from steam_persona.serve.errors import RETRY_AFTER_S, RequestError, error_bytes
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

        def cut(self) -> bool:
            """A forced quit (a second Ctrl-C; the process ends right after): `cut_request` on this
            connection. Returns whether a request was running."""
            return cut_request(self)

    return Protocol


def cut_request(proto: H11Protocol) -> bool:
    """End `proto`'s running request with 503 ``shutting_down``, as the last SSE event of a stream that began
    (then the stream's end), else as its whole answer, and write its ``--log_file`` row now
    (:func:`~steam_persona.serve.access_log.write_cut`). Called on the event loop, between two of its
    callbacks, so never inside another write. Returns whether a request was running."""
    cycle = proto.cycle
    if cycle is None or cycle.response_complete:
        return False
    state = cycle.scope.setdefault("state", {})
    err = RequestError("The server was stopped (forced quit) before this request finished; send it again",
                       status=503, type="server_error", code="shutting_down")
    try:
        if proto.transport.is_closing():  # its client left: nobody to tell
            pass
        elif not cycle.response_started:
            body = error_bytes(err)
            rid = state.setdefault(REQUEST_ID_KEY, request_id(cycle.scope["headers"]))
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close"),
                       (REQUEST_ID, rid.encode())]
            proto.transport.write(b"".join(proto.conn.send(event) for event in (
                h11.Response(status_code=503, headers=headers, reason=b"Service Unavailable"),
                h11.Data(data=body), h11.EndOfMessage())))
            state[PROTOCOL_ANSWER] = {"status": 503, "error_code": "shutting_down"}
        elif state.get("stream") and proto.conn.our_state is h11.SEND_BODY:
            event = b"data: " + error_bytes(err) + b"\n\n"  # as routes end a stream with an error
            proto.transport.write(proto.conn.send(h11.Data(data=event)) + proto.conn.send(h11.EndOfMessage()))
            state[PROTOCOL_ANSWER] = {"error_code": "shutting_down"}
    except h11.LocalProtocolError:  # a state h11 cannot send in: the connection just ends
        pass
    write_cut(state)
    return True
