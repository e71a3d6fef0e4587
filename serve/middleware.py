"""One ASGI middleware in front of the routes: auth, then request checking and rewriting.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streams pass through untouched and the
``include_usage`` context variable reaches the routes. For ``POST`` JSON endpoints it reads the
body once (:mod:`steam_persona.serve.body`: at most ``max_request_bytes``, within ``read_timeout``; JSON is accepted whatever the ``Content-Type``, since
``curl -d`` sends a form type), answers 4xx itself for every client mistake (:mod:`steam_persona.serve.validate`,
the library's request schema, token ids, grammars, context overflow, tools the chat template hides: :mod:`steam_persona.serve.tool_calls`), and passes the rewritten
request model on (in ``scope["state"]``). For chat requests it normalises the messages (:mod:`steam_persona.serve.messages`) and applies the
persona (:mod:`steam_persona.serve.persona`). Token counting runs on the checks thread, never on the event loop.
A key sent in the query string is refused and removed from the request before anything logs it.
A plain ``OPTIONS`` (not a CORS preflight) on a served path gets 204 with ``Allow``.
HTTP/2's preface (``PRI * HTTP/2.0``, which h11 reads as a request) gets one 505, and the connection is closed.
It notes the request's facts for the ``--log_file`` row in ``scope["state"]`` (:mod:`steam_persona.serve.access_log`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from pydantic import ValidationError

from steam_persona.serve import auth
from steam_persona.serve.body import ClientGone, declared_charset, read_body
from steam_persona.serve.chat_handler import INCLUDE_USAGE, SEEDED
from steam_persona.serve.errors import RequestError, error_bytes, from_validation_error, invalid_type, shutting_down
from steam_persona.serve.grammar import SchemaError
from steam_persona.serve.local_guard import check_local
from steam_persona.serve.messages import normalise_messages
from steam_persona.serve.modelinfo import completion_prompt_tokens
from steam_persona.serve.persona import apply_persona
from steam_persona.serve.request_id import STATE_KEY as REQUEST_ID
from steam_persona.serve.routes import Served
from steam_persona.serve.tool_calls import arguments_as_objects, check_auto_tools
from steam_persona.serve.validate import check_generation, check_stream_options, check_token_ids, parse_json

logger = logging.getLogger("steam_persona.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Paths served without a key (Docker / Dify health checks).
OPEN_PATHS = ("/health",)
#: Query parameters that carry keys in other APIs; never accepted, never logged.
_KEY_PARAMS = frozenset({"api_key", "api-key", "apikey", "key", "access_token", "token", "auth"})
_CHAT, _COMPLETIONS = "/v1/chat/completions", "/v1/completions"
#: Our extension: a chat request's prompt tokens, counted exactly as generation would see them.
CHAT_COUNT = "/extras/tokenize/chat"
#: ``scope["state"]`` key of the checked request model the routes read (the body is parsed once).
BODY = "steam_body"


def _request_models() -> dict[str, Any]:
    """POST path → the library's pydantic request model for it."""
    from llama_cpp.server import types

    return {_CHAT: types.CreateChatCompletionRequest, CHAT_COUNT: types.CreateChatCompletionRequest,
            _COMPLETIONS: types.CreateCompletionRequest,
            "/v1/embeddings": types.CreateEmbeddingRequest, "/extras/tokenize": types.TokenizeInputRequest,
            "/extras/tokenize/count": types.TokenizeInputRequest, "/extras/detokenize": types.DetokenizeInputRequest}


class SteamMiddleware:
    """Auth + request preparation for the routes.

    Args:
        app: the ASGI app to wrap.
        served: the model and its limits (:class:`steam_persona.serve.routes.Served`).
        api_key: required key, or ``None`` for no auth.
        persona: system prompt applied when a chat request has none (``None``: leave as is).
        persona_mode: ``"replace"`` or ``"prepend"`` (see :func:`steam_persona.serve.persona.apply_persona`).
        max_request_bytes: larger bodies get 413 ``request_too_large`` (read no further).
        read_timeout: seconds a body may take to arrive (then 408; see :mod:`steam_persona.serve.body`).
        max_tokens_cap: most tokens one request may generate (see :func:`steam_persona.serve.validate.check_generation`).
        cors_origins: ``--cors_origins``; without ``api_key``, the only foreign origins served
            (:mod:`steam_persona.serve.local_guard`).
        loopback_bind: the server listens on loopback only; without ``api_key``, other ``Host`` names are refused.
    """

    def __init__(self, app: Any, *, served: Served, api_key: str | None, persona: str | None, persona_mode: str,
                 max_request_bytes: int, max_tokens_cap: int, read_timeout: float,
                 cors_origins: tuple[str, ...] = (), loopback_bind: bool = True) -> None:
        self.app, self.served, self.api_key, self.persona, self.persona_mode = app, served, api_key, persona, persona_mode
        self.cors_origins, self.loopback_bind = cors_origins, loopback_bind
        self.max_request_bytes, self.max_tokens_cap, self.read_timeout = max_request_bytes, max_tokens_cap, read_timeout
        self.models = _request_models()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _tracking(send)
        try:
            await self._handle(scope, receive, send)
        except Exception as e:  # noqa: BLE001 -- a bug of ours or the library's: a fixed 500, no traceback text
            logger.error("%s %s failed (x-request-id %s): %s", scope["method"], scope["path"],
                         scope.get("state", {}).get(REQUEST_ID), type(e).__name__)
            logger.debug("traceback", exc_info=e)
            if not send.started:
                await _reply(send, RequestError("The server failed on this request; its log names the error",
                                                status=500, type="server_error"))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        if len(scope["path"]) > 1 and scope["path"].endswith("/"):
            # served as without it: starlette would redirect (307) to an http:// URL built from the Host
            # header, wrong behind a TLS proxy, and a POST client may not follow
            scope["path"] = scope["path"].rstrip("/") or "/"
        try:
            _check_version(scope)
            self._check_access(scope)
            if scope["method"] == "OPTIONS" and (allow := _path_methods(scope)):
                return await _no_content(send, allow)
            if scope["method"] != "POST" or scope["path"] not in self.models:
                return await self.app(scope, receive, send)
            raw = await read_body(receive, scope["headers"], self.max_request_bytes, self.read_timeout)
            # parsing, checking and counting a body of up to --max_request_bytes: one job off the loop
            data, include_usage, state[BODY], n_prompt = await self.served.check(self._prepare, scope["path"], raw,
                                                                                 declared_charset(scope["headers"]))
            include_usage = await self._check_generation(scope["path"], data, include_usage, n_prompt, state)
        except RequestError as err:
            state["error_code"] = err.code
            return await _reply(send, err)
        except ClientGone:  # the access log's row says 499 "disconnected"
            return
        except asyncio.CancelledError:  # uvicorn's shutdown deadline: a body still arriving, or checks running
            return await _reply(send, shutting_down())
        token, seeded = INCLUDE_USAGE.set(include_usage), SEEDED.set(data.get("seed") is not None)
        try:
            await self.app(scope, _replay(b"", receive), send)
        finally:
            INCLUDE_USAGE.reset(token)
            SEEDED.reset(seeded)

    def _check_access(self, scope: Scope) -> None:
        """Refuse keys in the query string, with or without ``--api_key`` (blanking it first: the access
        log prints it), then check the key on every path but :data:`OPEN_PATHS`; without a key, refuse
        web pages that are not allowed (:func:`steam_persona.serve.local_guard.check_local`).

        Raises:
            RequestError: 401 ``invalid_api_key``, its message saying how this server takes a key; 403
                from :func:`~steam_persona.serve.local_guard.check_local`.
        """
        query = scope.get("query_string", b"").decode("latin-1")
        if query and any(name.lower() in _KEY_PARAMS for name, _ in parse_qsl(query, keep_blank_values=True)):
            scope["query_string"] = b""
            send = ("send it as 'Authorization: Bearer KEY'" if self.api_key
                    else "this server checks no key, so send none (a server that does takes 'Authorization: Bearer KEY')")
            raise RequestError("API keys are never taken from the query string (URLs end up in logs and browser "
                               f"history); {send}", status=401, code="invalid_api_key")
        if not self.api_key:
            check_local(scope, self.cors_origins, self.loopback_bind)
        if self.api_key and scope["method"] != "OPTIONS" and scope["path"] not in OPEN_PATHS:
            presented = auth.presented_key(scope["headers"])
            if not presented:
                other = any(name == b"authorization" and value.partition(b" ")[0].lower() != b"bearer"
                            for name, value in scope["headers"])  # a key in another scheme, or none
                raise RequestError(("The Authorization header must read 'Bearer KEY'" if other else
                                    "You didn't provide an API key") + "; send it as 'Authorization: Bearer KEY'",
                                   status=401, code="invalid_api_key")
            if not auth.key_ok(presented, self.api_key):
                raise RequestError("Incorrect API key provided; send it as 'Authorization: Bearer KEY'",
                                   status=401, code="invalid_api_key")

    def _rewrite(self, path: str, raw: bytes, charset: str | None = None) -> tuple[dict[str, Any], Any]:
        """Parse (``charset``: the declared one, for the message when it does not decode), check and
        rewrite a request body for ``path``; return ``(data, include_usage)``.

        Raises:
            RequestError: the 4xx to answer.
        """
        # null means "not set" (OpenAI's clients send it so); the library would pass some on (a None penalty: 500)
        parsed = parse_json(raw, charset)
        data = {k: v for k, v in parsed.items() if v is not None}
        if path == "/v1/embeddings":
            raise RequestError("Embeddings are not served: this is a chat model, loaded without embedding support",
                               status=400, param="input", code="unsupported_endpoint")
        options, include_usage = data.pop("stream_options", None), False
        if path in (_CHAT, _COMPLETIONS):
            include_usage = check_stream_options(options, data.get("stream", False))
            data["model"] = self._model(parsed.get("model", ""))
        if path in (_CHAT, CHAT_COUNT):
            messages = normalise_messages(data.get("messages"))
            if len(messages) >= self.served.n_ctx:  # every message takes at least one template token
                raise self._overflow(len(messages), data, at_least=True)
            data["messages"] = apply_persona(arguments_as_objects(messages), self.persona, self.persona_mode)
        if path == "/extras/detokenize":
            check_token_ids(data.get("tokens"), self.served.n_vocab)
        if path in (_CHAT, _COMPLETIONS):
            check_generation(data, chat=path == _CHAT, n_vocab=self.served.n_vocab, max_tokens_cap=self.max_tokens_cap)
        return data, include_usage

    def _model(self, model: Any) -> str:
        """The served alias, whatever model name a generation request sends (local clients send
        "gpt-4o" and the like; llama-server answers any name too); ``""`` when it sends none.

        Raises:
            RequestError: 400 ``invalid_type`` naming ``model`` when it is not a string (``null`` included).
        """
        if not isinstance(model, str):
            raise invalid_type("model", "a string", model)
        return self.served.alias

    def _validate(self, path: str, data: dict[str, Any]) -> Any:
        """The library's request model for ``data`` (its own routes answer 500 to a bad type).

        Messages were checked by :func:`steam_persona.serve.messages.normalise_messages` and are set without a
        second pass: pydantic holds the GIL for its whole run (80 ms for 8000 messages, during which
        the event loop cannot answer even ``/health``).
        """
        try:
            if path not in (_CHAT, CHAT_COUNT):
                return self.models[path].model_validate(data)
            model = self.models[path].model_validate({**data, "messages": []})
        except ValidationError as e:
            raise from_validation_error(e) from None
        model.messages = data["messages"]
        return model

    def _prepare(self, path: str, raw: bytes, charset: str | None = None) -> tuple[dict[str, Any], Any, Any, int | None]:
        """``(data, include_usage, request model, prompt tokens or None)`` for a body (checks thread).

        Raises:
            RequestError: the 4xx to answer.
        """
        data, include_usage = self._rewrite(path, raw, charset)
        model = self._validate(path, data)
        if path == _CHAT:
            self._structured_output(model)
            check_auto_tools(data, self.served.handler.formatter)
        n_prompt = self._count_prompt(path, data) if path in (_CHAT, CHAT_COUNT, _COMPLETIONS) else None
        return data, include_usage, model, n_prompt

    def _structured_output(self, model: Any) -> None:
        """Replace a ``json_object`` response format by the grammar it stands for (any JSON, or its
        ``schema`` converted in the guarded child), and check the parameters schema of a tool the
        request forces, which the library converts itself (:meth:`GrammarChecker.from_schema`
        bounds both conversions).

        Raises:
            RequestError: 400 for a schema that cannot become a grammar (a forced tool's: only one
                whose grammar is too large; the library falls back to any JSON for the others).
        """
        from llama_cpp.llama_grammar import JSON_GBNF

        fmt = model.response_format
        if fmt is not None and fmt["type"] == "json_object":
            model.grammar = self._schema_grammar(fmt["schema"], "response_format") if "schema" in fmt else JSON_GBNF
            model.response_format = None
        for param, schema in _forced_tool_schemas(model):
            try:
                self.served.grammars.from_schema(schema)
            except SchemaError as e:
                if e.too_large:
                    raise RequestError(f"'{param}' cannot be used: {e}", param=param, code="invalid_value") from None

    def _schema_grammar(self, schema: Any, param: str) -> str:
        try:
            return self.served.grammars.from_schema(schema)
        except SchemaError as e:
            raise RequestError(f"The JSON schema in '{param}' cannot be used: {e}", param=param,
                               code="invalid_value") from None

    async def _check_generation(self, path: str, data: dict[str, Any], include_usage: bool, n_prompt: int | None,
                                state: dict[str, Any]) -> bool:
        """Compile a generation request's grammar, note its facts for the log; return whether a
        stream wants usage.

        Raises:
            RequestError: 400 for a grammar llama.cpp refuses.
        """
        if n_prompt is not None:
            state["prompt_tokens"] = n_prompt
        if path not in (_CHAT, _COMPLETIONS):
            return False
        grammar = state[BODY].grammar
        if isinstance(grammar, str):
            why = await self.served.check(self.served.grammars.error, grammar)
            if why:
                raise RequestError(f"'grammar' cannot be used: {why}", param="grammar", code="invalid_grammar")
        state["stream"] = bool(data.get("stream"))
        return state["stream"] and include_usage

    def _count_prompt(self, path: str, data: dict[str, Any]) -> int:
        """Return the prompt's token count; raise a 400 when it does not fit (generation paths)."""
        served = self.served
        if path in (_CHAT, CHAT_COUNT):
            n_prompt = served.handler.prompt_tokens(data["messages"], data.get("tools"), data.get("tool_choice"))
        else:
            prompt = data.get("prompt") or ""  # a string by now (check_generation unpacks a one-item list)
            n_prompt = len(completion_prompt_tokens(served.llama, prompt))
            if isinstance(data.get("suffix"), str):  # fill-in-the-middle: the library adds the suffix to the prompt
                n_prompt += len(served.llama.tokenize(data["suffix"].encode("utf-8"), False, False))
        logger.debug("%s: %d prompt tokens, stream=%s", path, n_prompt, data.get("stream"))
        if n_prompt >= served.n_ctx and path != CHAT_COUNT:
            raise self._overflow(n_prompt, data)
        return n_prompt

    def _overflow(self, n_prompt: int, data: dict[str, Any], at_least: bool = False) -> RequestError:
        """400 ``context_length_exceeded``: the prompt alone fills the context. The completion is not
        counted: a generation that reaches the context's end stops there with ``finish_reason``
        "length" (clients such as Dify send a large ``max_tokens`` by default). ``at_least``: ``n_prompt``
        is a lower bound (one token a message, counted before rendering)."""
        where = "messages" if "messages" in data else "prompt"
        return RequestError(
            f"This model's maximum context length is {self.served.n_ctx} tokens. However, your {where} resulted in "
            f"{'at least ' if at_least else ''}{n_prompt} tokens, which leaves no room for a completion. "
            f"Please reduce the length of the {where}.",
            param=where, code="context_length_exceeded")


def _forced_tool_schemas(model: Any) -> list[tuple[str, Any]]:
    """``(param, parameters schema)`` of each tool a chat request forces by name (``tool_choice`` or
    the legacy ``function_call``; the library's ``functions`` replace ``tools`` when both come)."""
    names = set()
    if isinstance(model.tool_choice, dict):
        names.add(model.tool_choice["function"]["name"])
    if isinstance(model.function_call, dict):
        names.add(model.function_call["name"])
    if model.functions is not None:
        listed = [(f"functions[{i}].parameters", f) for i, f in enumerate(model.functions)]
    else:
        listed = [(f"tools[{i}].function.parameters", t["function"]) for i, t in enumerate(model.tools or [])]
    return [(param, fn.get("parameters")) for param, fn in listed if names and fn.get("name") in names]


def _check_version(scope: Scope) -> None:
    """Refuse what h11 parsed as a request of another HTTP version, before the key is asked for:
    HTTP/2's connection preface (``PRI * HTTP/2.0``, from a client with "prior knowledge", e.g.
    ``curl --http2-prior-knowledge``) got a 401 or 404 and then, for the rest of the preface, a 400.

    Raises:
        RequestError: 505 ``http_version_not_supported`` (its answer closes the connection).
    """
    version = scope.get("http_version", "1.1")
    if version not in ("1.0", "1.1"):
        raise RequestError(f"HTTP/{version} is not served here: this server speaks HTTP/1.1 only (send HTTP/1.1, "
                           "e.g. curl without --http2-prior-knowledge; a client that negotiates stays on HTTP/1.1)",
                           status=505, code="http_version_not_supported")


#: The methods a route may serve (for ``Allow``).
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _path_methods(scope: Scope) -> list[str]:
    """The methods the app's routes serve on this request's path, ``OPTIONS`` included (``[]``: no
    route has the path, which stays a 404)."""
    from starlette.routing import Match

    routes = getattr(scope.get("app"), "routes", ())
    # asked method by method: an included router's entry matches for all its routes and lists no methods
    methods = [m for m in _METHODS if any(route.matches({**scope, "method": m})[0] is Match.FULL for route in routes)]
    return sorted([*methods, "OPTIONS"]) if methods else []


async def _no_content(send: Send, allow: list[str]) -> None:
    """204 with ``Allow``: the answer to a plain ``OPTIONS`` (not a CORS preflight, which
    :mod:`steam_persona.serve.cors` answers when ``--cors_origins`` is set), as most HTTP servers give it."""
    await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", ", ".join(allow).encode())]})
    await send({"type": "http.response.body", "body": b""})


def _tracking(send: Send) -> Any:
    """``send`` with a ``started`` attribute: has the response begun?"""
    async def tracked(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            tracked.started = True
        await send(message)
    tracked.started = False
    return tracked


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
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (err.headers or {}).items()]
    # 408, 413: the body was not read to its end, so the connection cannot carry another request; 505:
    # what follows is no HTTP/1 (the rest of HTTP/2's preface)
    if err.status in (408, 413, 505):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
