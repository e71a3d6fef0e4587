"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for
every client mistake, so that Dify and the OpenAI SDK show the message instead of a bare 500.

Shape source: OpenAI API reference, "Error codes" (``invalid_request_error``, ``invalid_api_key``,
``context_length_exceeded``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class RequestError(Exception):
    """A client mistake found before the request reaches llama.cpp.

    Attributes:
        status: HTTP status (400, 401, 404 …).
        message: one sentence saying what is wrong and how to fix it.
        param: the request field at fault (``"messages[1].content[0]"``) or ``None``.
        code: OpenAI error code (``"invalid_json"``, ``"context_length_exceeded"`` …) or ``None``.
        type: OpenAI error type.
        headers: extra response headers (``Retry-After`` on a 503) or ``None``.
    """

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def response(self) -> JSONResponse:
        """The HTTP answer: :meth:`body` with :attr:`status` and :attr:`headers`."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


#: Seconds a client is told to wait (``Retry-After``) while llama-server is down or the server shuts
#: down (the OpenAI SDK waits that long before its retry, instead of 0.5–1 s: time for a restart).
RETRY_AFTER_S = 5


def shutting_down() -> RequestError:
    """503 ``shutting_down`` with ``Retry-After``: the answer to a request that the server stops before
    it generated anything (worth sending again, to the restarted server)."""
    return RequestError("The server is shutting down; send the request again", status=503, type="server_error",
                        code="shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(err: RequestError) -> bytes:
    return json.dumps(err.body(), ensure_ascii=False).encode("utf-8")


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def from_validation_error(exc: Any) -> RequestError:
    """A 400 ``invalid_value`` naming the first bad field of a pydantic ``ValidationError``."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _loc(tuple(first.get("loc", ())))
    msg = f"{param}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return RequestError(msg, param=param, code="invalid_value")


#: The message of a 404 for a path no route serves (OpenAI endpoints such as ``/v1/responses`` or
#: ``/v1/embeddings`` on other servers included): what to call instead, without echoing the path.
NOT_SERVED = ("This path is not served here; this server answers POST /v1/chat/completions, POST /v1/completions "
              "and GET /v1/models (the Responses, Assistants, audio and image APIs are not served)")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = NOT_SERVED if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
    return JSONResponse(error_body(message, type=kind, code=code), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    """Answer ``HTTPException`` (404 unknown path, 405, 503 …) in the OpenAI shape instead of
    FastAPI's ``{"detail": ...}``. Request problems are caught earlier, in :mod:`steam_persona.serve.middleware`
    (the library's route wrapper answers 500 to whatever it does not recognise); anything else
    becomes a fixed 500 there too."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)

