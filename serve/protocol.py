"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for request headers.

uvicorn times out idle keep-alive connections, but stops the timer at the first byte of a request:
a client that sends half a request line and then nothing holds its connection for ever (the
slow-loris attack; bodies are timed in :mod:`steam_persona.serve.body`). Here every connection must
complete its request headers within ``timeout`` seconds of opening, or of its previous response's
end, or it is closed.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def with_header_deadline(timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass (uvicorn's ``http=`` setting) that closes a connection whose
    request headers have not all arrived ``timeout`` seconds after it opened or after its last response."""

    class HeaderDeadlineProtocol(H11Protocol):
        _armed = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self._armed += 1
            self.loop.call_later(timeout, self._deadline, self._armed)

        def _deadline(self, armed: int) -> None:
            # still waiting for the headers of the request this timer was armed for (h11: IDLE)
            if armed == self._armed and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.timeout_keep_alive_handler()  # uvicorn's own way of closing an idle connection

    return HeaderDeadlineProtocol
