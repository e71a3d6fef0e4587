"""The OpenAI routes, calling llama-cpp-python's ``Llama`` on one dedicated thread.

Why not the library's own routes (``llama_cpp.server.app``): they pull every token through
starlette's thread pool (a different thread per token: slower, see :mod:`steam_persona.serve.engine`), keep
generating for a non-streamed client that has gone, cannot stop a request at a time limit, and
answer errors raised after a stream began with a broken stream. These routes take the library's
request models (:mod:`llama_cpp.server.types`) and call the same ``Llama`` methods; the request was
checked and rewritten by :class:`steam_persona.serve.middleware.SteamMiddleware` before it gets here.

Streams: the first chunk is awaited (up to :data:`FIRST_CHUNK_WAIT_S`) before the response starts,
so an error raised while the prompt is evaluated is still a 400. A client that leaves while its
request waits (for the model, its prompt, its first chunk or its whole answer) is let go at once:
the route returns, and the generation stops at its next token or prompt chunk. A request that
shutdown stops before its first token (waiting for the model, or during its prompt) is answered 503
``shutting_down`` with ``Retry-After`` (a stream that began: its last event is that error), as on
``--engine llama-server``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator

import llama_cpp
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from llama_cpp.server.types import (CreateChatCompletionRequest, CreateCompletionRequest, DetokenizeInputRequest,
                                    TokenizeInputRequest)
from sse_starlette.sse import EventSourceResponse

from steam_persona.serve import upstream_routes
from steam_persona.serve.chat_handler import INCLUDE_USAGE, ChatHandler
from steam_persona.serve.engine import (FIRST_CHUNK_WAIT_S, STOP, Skipped, Worker, client_stayed, drop_stream,
                                         watch_disconnect)
from steam_persona.serve.errors import RequestError, error_body, shutting_down
from steam_persona.serve.grammar import GrammarChecker
from steam_persona.serve.modelinfo import completion_prompt_tokens

router = APIRouter()
#: Fields of the request models that are not ``Llama`` call arguments (as the library excludes them).
_NOT_KWARGS = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}


@dataclass
class Served:
    """The loaded model and the server's limits, shared by the routes and the middleware.

    Attributes:
        llama: the model; only ``generate`` and ``checks`` threads call it.
        handler: its chat handler (prompt token counts).
        grammars: guarded grammar compiler.
        generate: the thread that runs every decoding call.
        checks: the thread for template rendering, tokenize and detokenize.
        alias: model id.
        n_ctx: context size in tokens.
        request_timeout: seconds one generation may run (then it ends with ``finish_reason`` "length").
        check_budget: seconds a request's checks (rendering, tokenizing) may take before a 413.
        wind_down_at: ``time.monotonic()`` after which every generation ends at its next token
            (set on SIGTERM, so responses end with ``finish_reason`` "length" within the shutdown time).
        upstream: with ``--engine llama-server``, the :class:`steam_persona.serve.llama_server.LlamaServer`
            that generates (``llama`` then holds the vocabulary only); ``None`` for the embedded engine.
    """

    llama: llama_cpp.Llama
    handler: ChatHandler
    grammars: GrammarChecker
    generate: Worker
    checks: Worker
    alias: str
    n_ctx: int
    request_timeout: float
    check_budget: float
    wind_down_at: float = math.inf
    upstream: Any = None

    @property
    def n_vocab(self) -> int:
        return self.llama.n_vocab()

    async def check(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the checks thread within :attr:`check_budget`.

        Raises:
            RequestError: 413 ``request_too_large`` when the budget runs out (the job is skipped if
                it has not started; a running one finishes in the background).
        """
        cancel = threading.Event()
        try:
            return await asyncio.wait_for(self.checks.call(fn, *args, cancel=cancel), self.check_budget)
        except asyncio.TimeoutError:
            cancel.set()
            raise RequestError(f"Checking this request took over {self.check_budget:g} s; send a shorter one",
                               status=413, code="request_too_large") from None


def _served(request: Request) -> Served:
    return request.app.state.served


def _kwargs(body: CreateChatCompletionRequest | CreateCompletionRequest, llama: llama_cpp.Llama) -> dict[str, Any]:
    """``Llama`` call arguments from a request (what the library's ``prepare_request_resources`` does).
    Called on the generate thread: ``logit_bias`` by token text tokenizes."""
    # no serializer warnings: messages are checked dicts, not the library's TypedDicts (a user's `name` is none of them)
    kwargs = body.model_dump(exclude=_NOT_KWARGS, warnings=False)
    if body.logit_bias is not None and body.logit_bias_type == "tokens":
        kwargs["logit_bias"] = {str(i): score for text, score in body.logit_bias.items()
                                for i in llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)}
    if body.grammar is not None:
        kwargs["grammar"] = llama_cpp.LlamaGrammar.from_string(body.grammar)
    if body.min_tokens > 0:
        # the library drops both its logit_bias processor and ours when both come
        # (`logits_processor = logits_processor.extend(...)`, which returns None): the bias goes in our list
        kwargs["logits_processor"] = llama_cpp.LogitsProcessorList(
            [llama_cpp.MinTokensLogitsProcessor(body.min_tokens, llama.token_eos()),
             *_bias_processor(kwargs.pop("logit_bias", None))])
    if isinstance(body, CreateCompletionRequest) and body.prompt == "" and body.suffix is None:
        kwargs["prompt"] = completion_prompt_tokens(llama, "")  # the library would start from no token
    return kwargs


def _bias_processor(bias: dict[str, float] | None) -> list[Callable[..., Any]]:
    """``logit_bias`` (token id → bias) as a logits processor: the bias added to each token's logit, as
    the library's own one does; none for no bias."""
    if not bias:
        return []
    ids = np.array([int(i) for i in bias], dtype=np.intc)
    values = np.array(list(bias.values()), dtype=np.single)

    def add_bias(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores
    return [add_bias]


def _body(request: Request) -> Any:
    """The request model the middleware checked (``steam_persona.serve.middleware.BODY``)."""
    return request.scope["state"]["steam_body"]


def _schema(model: type) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for ``model`` (the routes take no body parameter: the middleware
    parsed and checked it already; see :func:`install_schemas`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


@router.post("/v1/chat/completions", summary="Chat", tags=["OpenAI V1"],
             openapi_extra=_schema(CreateChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    served, body = _served(request), _body(request)
    if served.upstream is not None:
        return await upstream_routes.generate(request, served, body, chat=True)
    llama = served.llama
    return await _generate(request, served, lambda: _complete(served, body, llama.create_chat_completion), body.stream)


@router.post("/v1/completions", summary="Completion", tags=["OpenAI V1"],
             openapi_extra=_schema(CreateCompletionRequest))
async def completions(request: Request) -> Response:
    served, body = _served(request), _body(request)
    if served.upstream is not None:
        return await upstream_routes.generate(request, served, body, chat=False)
    llama = served.llama
    return await _generate(request, served, lambda: _complete(served, body, llama.create_completion), body.stream)


def _complete(served: Served, body: Any, create: Callable[..., Any]) -> Any:
    """``create(**kwargs)`` (a ``Llama`` method) on the generate thread; a non-streamed result gets the
    text OpenAI would give (:meth:`ChatHandler.completed_text`: the text so far when the time limit
    cut it, the earliest stop match); a completion stream that asked for ``include_usage`` gets its
    usage chunk (the library ignores it; chat streams get theirs from the chat handler).

    Raises:
        RequestError: 503 ``shutting_down`` when shutdown came before this generation's first token
            (it waited for the model, or its prompt was stopped; a stream: at its first chunk).
    """
    if time.monotonic() > served.wind_down_at:  # it waited behind a generation that shutdown ended
        raise shutting_down()
    result = create(**_kwargs(body, served.llama))
    if body.stream:
        completion = isinstance(body, CreateCompletionRequest)
        chunks = _refuse_unstarted(served, served.handler.with_usage(result) if completion and INCLUDE_USAGE.get()
                                   else result)
        return _echoed(body.prompt, chunks) if completion and body.echo and body.prompt else chunks
    _check_started(served)
    text = served.handler.completed_text(body.stop)
    choice = result["choices"][0]
    if text is None or choice.get("message", {}).get("tool_calls"):
        return result
    if "message" in choice:
        choice["message"]["content"] = text
    else:  # the library's text is [prompt (echo)] + its text + [suffix]
        head = body.prompt if body.echo else ""
        tail = body.suffix if body.suffix and choice["text"].endswith(body.suffix) else ""
        choice["text"] = head + text + tail
    return result


def _check_started(served: Served) -> None:
    """Raise 503 ``shutting_down`` when shutdown stopped the latest generation before its first token
    (during its prompt): it has nothing to give, and a retry to the restarted server will."""
    handler = served.handler
    if handler.last_cut and handler.last_usage["completion_tokens"] == 0 and time.monotonic() > served.wind_down_at:
        raise shutting_down()


def _refuse_unstarted(served: Served, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``chunks`` (a stream), checked by :func:`_check_started` when the first comes (the prompt was
    evaluated by then, or stopped)."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return
    try:
        _check_started(served)
    except RequestError:
        getattr(it, "close", lambda: None)()
        raise
    yield first
    yield from it


def _echoed(prompt: str, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A completion stream with ``echo``: a chunk carrying ``prompt`` first (as OpenAI's legacy API and
    the non-streamed answer do; the library's stream leaves it out), its ``id``, ``created`` and
    ``model`` those of the stream's first chunk."""
    it = iter(chunks)
    first = next(it, None)
    if first is None:
        return
    yield {**first, "choices": [{"text": prompt, "index": 0, "logprobs": None, "finish_reason": None}]}
    yield first
    yield from it


#: ``owned_by`` of the served model object (OpenAI: the organization that owns it; Ollama says "library")
OWNED_BY = "steam-persona"


def _model_object(served: Served) -> dict[str, Any]:
    """OpenAI's model object; ``created`` is the GGUF file's modification time (Unix seconds); ``owned_by``
    names this server (llama-cpp-python's placeholder is ``"me"``)."""
    return {"id": served.alias, "object": "model", "created": int(os.path.getmtime(served.llama.model_path)),
            "owned_by": OWNED_BY, "permissions": []}


@router.api_route("/v1/models", methods=["GET", "HEAD"], summary="Models", tags=["OpenAI V1"])
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(_served(request))]}


@router.api_route("/v1/models/{model:path}", methods=["GET", "HEAD"], summary="Model", tags=["OpenAI V1"])
async def model(request: Request, model: str) -> Response:
    """The served model's object (the OpenAI SDK's ``models.retrieve``); 404 ``model_not_found`` for
    any other id."""
    served = _served(request)
    if model != served.alias:
        return JSONResponse(error_body("No model with this id is served here; GET /v1/models lists the one that is",
                                       param="model", code="model_not_found"), status_code=404)
    return JSONResponse(_model_object(served))


@router.post("/extras/tokenize", summary="Tokenize", tags=["Extras"], openapi_extra=_schema(TokenizeInputRequest))
async def tokenize(request: Request) -> dict[str, Any]:
    served = _served(request)
    return {"tokens": await served.check(served.llama.tokenize, _body(request).input.encode("utf-8"), True, True)}


@router.post("/extras/tokenize/count", summary="Tokenize Count", tags=["Extras"],
             openapi_extra=_schema(TokenizeInputRequest))
async def tokenize_count(request: Request) -> dict[str, Any]:
    served = _served(request)
    tokens = await served.check(served.llama.tokenize, _body(request).input.encode("utf-8"), True, True)
    return {"count": len(tokens)}


@router.post("/extras/tokenize/chat", summary="Chat prompt tokens", tags=["Extras"],
             openapi_extra=_schema(CreateChatCompletionRequest))
async def tokenize_chat(request: Request) -> dict[str, Any]:
    """``{"count": n}``: the prompt tokens a chat request with these ``messages`` (and ``tools``) would
    take, the persona and the chat template included (the middleware counted them), so that a client
    that does not know the server-side persona can count exactly. No generation fields are checked."""
    return {"count": request.scope["state"]["prompt_tokens"]}


@router.post("/extras/detokenize", summary="Detokenize", tags=["Extras"], openapi_extra=_schema(DetokenizeInputRequest))
async def detokenize(request: Request) -> dict[str, Any]:
    served = _served(request)
    raw = await served.check(served.llama.detokenize, _body(request).tokens)
    return {"text": raw.decode("utf-8", errors="replace")}  # ids may end inside a UTF-8 sequence


def install_schemas(app: Any) -> None:
    """Put the library's request models into ``app``'s OpenAPI components (for ``/docs`` and
    schema-driven clients and fuzzers)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (CreateChatCompletionRequest, CreateCompletionRequest, TokenizeInputRequest,
                          DetokenizeInputRequest):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = spec
        return app.openapi_schema
    app.openapi = openapi


async def _generate(request: Request, served: Served, make: Callable[[], Any], stream: bool) -> Response:
    """Run one generation on the generate thread; stop it when the client leaves or time runs out."""
    cancel = threading.Event()
    deadline = time.monotonic() + served.request_timeout
    token = STOP.set(lambda: cancel.is_set() or time.monotonic() > min(deadline, served.wind_down_at))
    watcher = asyncio.create_task(watch_disconnect(request.receive, cancel))
    streaming = False
    try:
        if not stream:
            job = asyncio.ensure_future(served.generate.call(make, cancel=cancel))
            if not await client_stayed(job, watcher, None):
                return _client_left()
            return JSONResponse(job.result())
        chunks = served.generate.iterate(lambda: iter(make()), cancel)
        first = asyncio.ensure_future(anext(chunks, None))
        if not await client_stayed(first, watcher, FIRST_CHUNK_WAIT_S):
            await drop_stream(first, chunks)
            return _client_left()
        if first.done():
            first.result()  # raises what generation raised before its first chunk
        streaming = True
    except Skipped:  # the client left while the request waited for the model: nobody reads this
        return _client_left()
    except asyncio.CancelledError:  # uvicorn's shutdown deadline, while the request waited for the model
        return shutting_down().response()
    except RequestError as e:
        return e.response()
    except ValueError as e:
        # the library's own refusals (a tool_choice naming no tool, …): messages hold no request text
        return JSONResponse(error_body(f"llama-cpp-python refused the request: {str(e)[:200]}", code="invalid_value"),
                            status_code=400)
    finally:
        watcher.cancel()
        STOP.reset(token)
        if not streaming:  # done, refused, or abandoned (the task was cancelled: client gone, shutdown)
            cancel.set()
    return EventSourceResponse(_events(first, chunks, cancel), sep="\n")


async def _events(first: asyncio.Future, chunks: AsyncIterator[Any], cancel: threading.Event) -> AsyncIterator[dict[str, str]]:
    """The SSE events of a stream whose first chunk is (or will be) ``first``'s result."""
    try:
        chunk = await first
        if chunk is not None:
            yield {"data": json.dumps(chunk, ensure_ascii=False)}
            async for chunk in chunks:
                yield {"data": json.dumps(chunk, ensure_ascii=False)}
        yield {"data": "[DONE]"}
    except (RequestError, ValueError) as e:  # after the response began: the stream ends with the error
        err = e if isinstance(e, RequestError) else RequestError(f"llama-cpp-python refused the request: {str(e)[:200]}")
        yield {"data": json.dumps(err.body())}
    finally:
        cancel.set()
        await drop_stream(first, chunks)


def _client_left() -> JSONResponse:
    """The answer to a client that left before its response began: nobody reads it (the access
    log writes 499)."""
    return JSONResponse(error_body("Client closed request"), status_code=400)
