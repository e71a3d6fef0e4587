"""One ASGI middleware in front of llama-cpp-python's app: auth, then request rewriting.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streams pass through untouched and the
``include_usage`` context variable reaches the generation thread. For ``POST`` JSON endpoints it
reads the body once and answers 400 itself for bad JSON and for bodies the library's own request
schema rejects (its route wrapper would answer 500); for chat requests it normalises the messages
(:mod:`serve.messages`), applies the persona (:mod:`serve.persona`), checks the prompt fits the
context (the library raises that error only once a stream has begun, as a broken
stream), and passes the rewritten body on. With ``--log_file`` it writes one JSON line per
response.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from serve import auth
from serve.chat_handler import INCLUDE_USAGE, ChatHandler
from serve.errors import RequestError, error_bytes, from_validation_error
from serve.messages import normalise_messages
from serve.persona import apply_persona
from trainer.io import JsonlLog

logger = logging.getLogger("steam_persona.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Paths served without a key (Docker / Dify health checks).
OPEN_PATHS = ("/health",)
#: Request facts that go into the JSON-lines log besides method, path, status and time.
_LOGGED = ("error_code", "prompt_tokens", "stream")


def _request_models() -> dict[str, Any]:
    """POST path → the library's pydantic request model for it."""
    from llama_cpp.server import types

    return {"/v1/chat/completions": types.CreateChatCompletionRequest,
            "/v1/completions": types.CreateCompletionRequest,
            "/v1/embeddings": types.CreateEmbeddingRequest,
            "/extras/tokenize": types.TokenizeInputRequest,
            "/extras/tokenize/count": types.TokenizeInputRequest,
            "/extras/detokenize": types.DetokenizeInputRequest}


class SteamMiddleware:
    """Auth + request preparation for the library app.

    Args:
        app: the ASGI app to wrap.
        api_key: required key, or ``None`` for no auth.
        persona: system prompt applied when a chat request has none (``None``: leave as is).
        persona_mode: ``"replace"`` or ``"prepend"`` (see :func:`serve.persona.apply_persona`).
        handler: the model's :class:`~serve.chat_handler.ChatHandler` (prompt token counting).
        n_ctx: the context size in tokens.
        alias: the served model id; completions answer with it whatever ``model`` a client sent
            (one model is resident; the library would otherwise echo the client's name or the path).
        log: a JSON-lines request log, or ``None``.
    """

    def __init__(self, app: Any, *, api_key: str | None, persona: str | None, persona_mode: str,
                 handler: ChatHandler, n_ctx: int, alias: str, log: JsonlLog | None = None) -> None:
        self.app, self.api_key, self.persona, self.persona_mode = app, api_key, persona, persona_mode
        self.handler, self.n_ctx, self.alias = handler, n_ctx, alias
        self.models = _request_models()
        self.log = log

    def _logging_send(self, scope: Scope, send: Send) -> Send:
        """Wrap ``send`` to write one JSON line per finished response: method, path, status,
        milliseconds, and the error code or prompt size when known (never keys or text)."""
        start, fields = time.perf_counter(), scope.setdefault("state", {})
        status = 0

        async def logged(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.log.write(event="request", method=scope["method"], path=scope["path"], status=status,
                               ms=round((time.perf_counter() - start) * 1000, 1),
                               **{k: v for k, v in fields.items() if k in _LOGGED})
        return logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.log is not None:
            send = self._logging_send(scope, send)
        path, method = scope["path"], scope["method"]
        if self.api_key and method != "OPTIONS" and path not in OPEN_PATHS:
            if not auth.key_ok(auth.presented_key(scope["headers"]), self.api_key):
                scope.setdefault("state", {})["error_code"] = "invalid_api_key"
                return await _reply(send, RequestError(
                    "Incorrect API key provided; send it as 'Authorization: Bearer KEY'",
                    status=401, code="invalid_api_key"))
        if method != "POST" or path not in self.models:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        include_usage = False
        try:
            try:
                data = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestError(f"The request body is not valid JSON ({e}); send a JSON object",
                                   code="invalid_json") from None
            if not isinstance(data, dict):
                raise RequestError("The request body must be a JSON object", code="invalid_json")
            options = data.pop("stream_options", None)
            if path in ("/v1/chat/completions", "/v1/completions"):
                data["model"] = self.alias
            if path == "/v1/chat/completions":
                data["messages"] = apply_persona(normalise_messages(data.get("messages")), self.persona, self.persona_mode)
            try:
                # The library's route wrapper turns its own validation errors into 500s; check first.
                self.models[path].model_validate(data)
            except ValidationError as e:
                raise from_validation_error(e) from None
            if data.get("logprobs"):
                # llama.cpp needs logits_all=True for them (n_ctx × n_vocab floats); it would fail mid-stream
                raise RequestError("logprobs are not served by this server (they need logits_all); drop 'logprobs'",
                                   param="logprobs", code="unsupported_parameter")
            if path == "/v1/chat/completions":
                state = scope.setdefault("state", {})
                state["prompt_tokens"], state["stream"] = self._check_context(data), bool(data.get("stream"))
                include_usage = bool(data.get("stream")) and isinstance(options, dict) and bool(options.get("include_usage"))
        except RequestError as err:
            scope.setdefault("state", {})["error_code"] = err.code
            return await _reply(send, err)
        body = json.dumps(data, ensure_ascii=False).encode("utf-8")
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        token = INCLUDE_USAGE.set(include_usage)
        try:
            await self.app({**scope, "headers": headers}, _replay(body, receive), send)
        finally:
            INCLUDE_USAGE.reset(token)

    def _check_context(self, data: dict[str, Any]) -> int:
        """Return the prompt's token count; raise a 400 when it does not fit the context."""
        messages = data["messages"]
        n_prompt = self.handler.prompt_tokens(messages, data.get("tools"), data.get("tool_choice"))
        logger.debug("chat request: %d messages, %d prompt tokens, stream=%s", len(messages), n_prompt, data.get("stream"))
        if n_prompt >= self.n_ctx:
            max_tokens = data.get("max_tokens") if isinstance(data.get("max_tokens"), int) else 0
            raise RequestError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
                f"{n_prompt + (max_tokens or 0)} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="messages", code="context_length_exceeded")
        return n_prompt


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then the real one (so disconnects still arrive)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _reply(send: Send, err: RequestError) -> None:
    body = error_bytes(err)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
