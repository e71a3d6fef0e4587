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


#: What a union-typed request field takes, in OpenAI's terms (pydantic's messages name its branches).
_EXPECTED = {
    "tool_choice": "'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}",
    "function_call": "'none', 'auto' or {\"name\": ...}",
    "stop": "a string or an array of strings",
    "prompt": "a string or an array of one string",
}
#: pydantic error types that mean "wrong JSON type" → what was expected, in OpenAI's words.
_TYPES = {"string_type": "a string", "float_type": "a number", "float_parsing": "a number", "int_type": "an integer",
          "int_parsing": "an integer", "int_from_float": "an integer", "bool_type": "a boolean",
          "bool_parsing": "a boolean", "list_type": "an array", "dict_type": "an object", "model_type": "an object"}
#: Type names pydantic puts into an error's ``loc`` for the branch of a union (``"str"``, ``"list[str]"``).
_BRANCH_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def json_type(value: Any) -> str:
    """``"a string"``, ``"an integer"`` … : a JSON value's type in OpenAI's error wording."""
    for kind, name in ((str, "a string"), (bool, "a boolean"), (int, "an integer"), (float, "a decimal"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null"


def invalid_type(param: str, expected: str, value: Any, hint: str = "") -> RequestError:
    """400 ``invalid_type`` naming ``param``, in OpenAI's words: "Invalid type for 'param': expected
    <expected>, but got <value's JSON type> instead<hint>."."""
    return RequestError(f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead{hint}.",
                        param=param, code="invalid_type")


def _is_branch(part: Any) -> bool:
    """Whether a ``loc`` part names a union branch (``"literal['none','auto']"``, ``"list[str]"``, a
    model class name) rather than a request field or index."""
    return isinstance(part, str) and ("[" in part or part[:1].isupper() or part in _BRANCH_NAMES)


def _loc(loc: tuple[Any, ...]) -> str:
    """The request field path a client wrote (``tools[0].function.name``) of a pydantic ``loc``,
    without its union branch names."""
    out = ""
    for p in (str(p) for p in loc if p != "body" and not _is_branch(p)):
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def from_validation_error(exc: Any) -> RequestError:
    """A 400 for the first bad field of a pydantic ``ValidationError``, in OpenAI's words and codes
    (``invalid_type``, ``invalid_value``, ``missing_required_parameter``), ``param`` the field's path.

    A union field (``tool_choice``, ``stop``, ``prompt``) gets one error per branch; the one that went
    deepest (the branch whose type the value had: ``tool_choice.function.name`` missing from an
    object) is reported, or, when none did, what the field takes (:data:`_EXPECTED`).
    """
    errors = exc.errors() or [{"loc": (), "msg": "invalid request", "type": "value_error"}]
    first = errors[0]
    if any(_is_branch(p) for p in first.get("loc", ())):
        field = _loc(first["loc"])
        branches = [e for e in errors if _loc(e["loc"]) == field
                    or _loc(e["loc"]).startswith((field + ".", field + "["))]
        deepest = max(branches, key=lambda e: len(_loc(e["loc"])))
        if _loc(deepest["loc"]) == field:
            return _union_error(field, first.get("input"), branches)
        first = deepest
    return _field_error(_loc(tuple(first.get("loc", ()))), first)


def _union_error(field: str, value: Any, branches: list[dict[str, Any]]) -> RequestError:
    expected = _EXPECTED.get(field) or " or ".join(dict.fromkeys(_expected(e) for e in branches))
    if isinstance(value, str) and any(e["type"] == "literal_error" for e in branches):
        return RequestError(f"Invalid value for '{field}': expected {expected}.", param=field, code="invalid_value")
    return invalid_type(field, expected, value)


def _field_error(param: str, error: dict[str, Any]) -> RequestError:
    kind = error.get("type")
    top = param.split(".")[0].split("[")[0]
    hint = f" ('{top}' takes {_EXPECTED[top]})" if top in _EXPECTED and top != param else ""
    if kind == "missing":
        return RequestError(f"Missing required parameter: '{param}'{hint}.", param=param,
                            code="missing_required_parameter")
    if kind in _TYPES:
        return invalid_type(param, _TYPES[kind], error.get("input"), hint)
    return RequestError(f"Invalid value for '{param}': expected {_expected(error)}{hint}.", param=param,
                        code="invalid_value")


def _expected(error: dict[str, Any]) -> str:
    """What a pydantic error says the value should be (``"'function'"``, ``"a valid string"``)."""
    msg = str(error.get("msg", "a valid value"))
    return _TYPES.get(error.get("type"), msg.removeprefix("Input should be ").removeprefix("Value error, "))


#: The message of a 404 for a path no route serves (OpenAI endpoints such as ``/v1/responses`` or
#: ``/v1/embeddings`` on other servers included): what to call instead, without echoing the path.
NOT_SERVED = ("This path is not served here; this server answers POST /v1/chat/completions, POST /v1/completions "
              "and GET /v1/models (the Responses, Assistants, audio and image APIs are not served)")


def _not_allowed(request: Request, allow: str) -> str:
    """A 405's message in the style of the 404's: the path, the methods it takes and the one sent."""
    methods = " or ".join(sorted(m.strip() for m in allow.split(",") if m.strip())) or "no method"  # a set upstream
    return f"{request.url.path} takes {methods} only; you sent {request.method}"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {401: "invalid_api_key", 404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    message = NOT_SERVED if exc.status_code == 404 and exc.detail == "Not Found" else str(exc.detail)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        allow = next((v for k, v in headers.items() if k.lower() == "allow"), "")
        message = _not_allowed(request, allow)
        # OPTIONS is answered on every served path (204, see middleware), so Allow lists it too
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(sorted({m.strip() for m in allow.split(",") if m.strip()} | {"OPTIONS"}))
    return JSONResponse(error_body(message, type=kind, code=code), status_code=exc.status_code,
                        headers=headers or None)


def install(app: FastAPI) -> None:
    """Answer ``HTTPException`` (404 unknown path, 405, 503 …) in the OpenAI shape instead of
    FastAPI's ``{"detail": ...}``. Request problems are caught earlier, in :mod:`steam_persona.serve.middleware`
    (the library's route wrapper answers 500 to whatever it does not recognise); anything else
    becomes a fixed 500 there too."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)

