"""Chat and completion generation through llama-server (``--engine llama-server``), answered in the
same OpenAI shapes as the embedded engine (:mod:`steam_persona.serve.routes`): the same ids' form,
``finish_reason`` values, streamed chunks (a role chunk first, an empty delta with the
``finish_reason`` last, a ``usage`` chunk when ``stream_options.include_usage``) and ``usage``
counts (prompt tokens as we rendered them, completion tokens without the end-of-generation token).

The request arrives checked by the middleware; this module renders/tokenizes the prompt (checks
thread), builds llama-server's native body (:func:`steam_persona.serve.llama_server.native_body`)
and relays its stream. A client that disconnects, the request's time limit, or a server shutdown
closes the upstream connection, which stops llama-server's work on it.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from steam_persona.serve.access_log import note_completion_tokens
from steam_persona.serve.chat_handler import INCLUDE_USAGE
from steam_persona.serve.engine import FIRST_CHUNK_WAIT_S, client_stayed, drop_stream, watch_disconnect
from steam_persona.serve.errors import RequestError, error_body, shutting_down
from steam_persona.serve.llama_server import native_body
from steam_persona.serve.modelinfo import completion_prompt_tokens
from steam_persona.serve.tool_calls import ToolCallChunks, parses_calls, with_tool_calls

#: llama-server's ``stop_type`` → OpenAI ``finish_reason``.
_FINISH = {"eos": "stop", "word": "stop", "limit": "length", "none": "length"}


@dataclass
class _Run:
    """One generation's facts while it streams."""

    chat: bool
    id: str
    model: str
    prompt_tokens: int
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    finish_reason: str = "length"
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    tool_calls: ToolCallChunks | None = None  # set when Hermes blocks in the text are tool calls

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def chunk(self, delta: dict[str, Any] | None, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        """One stream chunk: a chat delta or a completion text piece."""
        if self.chat:
            choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
            return {"id": self.id, "model": self.model, "created": self.created, "object": "chat.completion.chunk",
                    "choices": [choice]}
        choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice]}

    def text_chunks(self, piece: str | None) -> list[dict[str, Any]]:
        """The stream chunks for a generated text piece, or for the end (``None``): one, or with
        :attr:`tool_calls` none or several."""
        end = piece is None
        chunk = self.chunk({} if end else {"content": piece}, piece or "", self.finish_reason if end else None)
        return self.tool_calls(chunk) if self.tool_calls else [chunk]

    def response(self, text: str) -> dict[str, Any]:
        """The non-streamed response object."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": self.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": self.finish_reason}
            obj = "text_completion"
        result = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                  "choices": [choice], "usage": self.usage()}
        return with_tool_calls(result, stream=False) if self.tool_calls else result


async def generate(request: Request, served: Any, body: Any, chat: bool) -> Response:
    """Answer one chat (``chat``) or completion request through ``served.upstream``."""
    try:
        tokens = await _prompt(served, body, chat)
        upstream_body = native_body(tokens, body, await _logit_bias(served, body), body.grammar)
    except RequestError as e:
        return e.response()
    run = _Run(chat=chat, id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, model=served.alias,
               prompt_tokens=len(tokens),
               tool_calls=ToolCallChunks() if chat and parses_calls(dict(body), served.handler.formatter.template)
               else None)
    if not body.stream:
        return await _complete(request, served, upstream_body, run, body)
    note_completion_tokens(lambda: run.completion_tokens)
    cancel = threading.Event()
    deadline = time.monotonic() + served.request_timeout
    stopped = lambda: cancel.is_set() or time.monotonic() > min(deadline, served.wind_down_at)  # noqa: E731
    pieces = _pieces(served, upstream_body, run, stopped)
    watcher = asyncio.create_task(watch_disconnect(request.receive, cancel))
    return await _stream(served, run, pieces, watcher, cancel, INCLUDE_USAGE.get(), body)


async def _complete(request: Request, served: Any, upstream_body: dict[str, Any], run: _Run, body: Any) -> Response:
    """A non-streamed request, cancelled when the client leaves; at ``--request_timeout`` or shutdown
    the text so far ends with ``finish_reason`` "length", as with the embedded engine (at shutdown
    before any text: 503 ``shutting_down``).

    llama-server's own non-streamed answer is a little faster (no per-token events) but holds no
    text when cut short, so it is used only when the time left cannot cut this request
    (:func:`_may_run_out`); otherwise llama-server streams and the pieces are joined. Should the
    non-streamed call still run out, the answer is 504 ``timeout`` with ``x-should-retry: false``
    (openai-python obeys that header before its status rules, which retry every 5xx twice; a retry
    would run out again), or 503 at shutdown.
    """
    deadline = time.monotonic() + served.request_timeout
    pieces: list[str] | None = [] if _may_run_out(served, body, deadline) else None
    if pieces is not None:  # counted as they come; llama-server's non-streamed answer tells them at its end
        note_completion_tokens(lambda: run.completion_tokens)
    job = asyncio.create_task(served.upstream.complete(upstream_body) if pieces is None
                              else _gather(served, upstream_body, run, pieces))
    gone = asyncio.create_task(watch_disconnect(request.receive, threading.Event()))
    try:
        while not job.done():
            left = min(deadline, served.wind_down_at) - time.monotonic()
            if gone.done() or left <= 0:
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
                ran_out = time.monotonic() >= deadline
                if pieces is not None and not gone.done() and (ran_out or pieces):  # at shutdown, not nothing
                    return JSONResponse(run.response(_completion_text(body, run.chat, "".join(pieces))))
                return _cut_short(gone.done(), deadline)
            await asyncio.wait({job, gone}, timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED)
        event = job.result()
    except RequestError as e:
        return _blame(e, body).response()
    finally:
        gone.cancel()
    if pieces is None:
        _finish(run, event)
        note_completion_tokens(lambda: run.completion_tokens)
        text = await served.check(_without_cut_character, served.llama, event)
    else:
        text = "".join(pieces)
    _note_speed(served, run)
    return JSONResponse(run.response(_completion_text(body, run.chat, text)))


#: A request may be answered from llama-server's non-streamed call when, at this fraction of the
#: slowest recent speed (:attr:`LlamaServer.speeds`), its ``max_tokens`` would still be done in time.
RUN_OUT_MARGIN = 0.25


def _may_run_out(served: Any, body: Any, deadline: float) -> bool:
    """Could the time left (``--request_timeout``, shutdown) cut this request? True until a speed was seen."""
    speeds = served.upstream.speeds
    left = min(deadline, served.wind_down_at) - time.monotonic()
    return not speeds or body.max_tokens > RUN_OUT_MARGIN * min(speeds) * left


async def _gather(served: Any, upstream_body: dict[str, Any], run: _Run, pieces: list[str]) -> None:
    """Stream from llama-server into ``pieces`` (kept when the task is cancelled)."""
    async for piece in _pieces(served, upstream_body, run, lambda: False):
        pieces.append(piece)


def _note_speed(served: Any, run: _Run) -> None:
    """Remember the tokens per second this finished generation's client saw (a few tokens say little)."""
    if run.completion_tokens >= 8:
        served.upstream.speeds.append(run.completion_tokens / max(time.monotonic() - run.started, 1e-3))


def _cut_short(client_left: bool, deadline: float) -> JSONResponse:
    """The answer to a non-streamed request stopped before its end."""
    if client_left:  # nobody reads it
        return JSONResponse(error_body("Client closed request"), status_code=400)
    if time.monotonic() >= deadline:
        # the same request would run out again: the openai SDKs retry a 5xx twice unless told not to
        return JSONResponse(error_body("The generation ran past this server's --request_timeout; ask for fewer "
                                       "tokens or stream the response", type="server_error", code="timeout"),
                            status_code=504, headers={"x-should-retry": "false"})
    return shutting_down().response()


def _finish(run: _Run, event: dict[str, Any]) -> None:
    """Fill ``run``'s finish reason and completion tokens from llama-server's final event."""
    run.finish_reason = _FINISH.get(event.get("stop_type", "none"), "length")
    # llama-server counts the end-of-generation token; OpenAI and llama-cpp-python do not
    run.completion_tokens = event.get("tokens_predicted", 0) - (event.get("stop_type") == "eos")


def _without_cut_character(llama: Any, event: dict[str, Any]) -> str:
    """llama-server's non-streamed ``content`` without a character that ``n_predict`` cut: its JSON
    encoder writes the character's first bytes as U+FFFD, where OpenAI (and llama-server's own stream)
    leave them out. The cut is seen in the generated tokens' bytes (``return_tokens``: ``llama`` has
    the vocabulary), which then end inside a UTF-8 sequence."""
    content = event["content"]
    if event.get("stop_type") != "limit" or not content.endswith("\ufffd"):
        return content
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(llama.detokenize(event.get("tokens") or []))
    pending, _ = decoder.getstate()  # the bytes of an unfinished character at the end
    return content[:-1] if pending else content


def _completion_text(body: Any, chat: bool, text: str) -> str:
    """The response text: with /v1/completions' ``echo``, the prompt first."""
    return body.prompt + text if not chat and body.echo else text


async def _pieces(served: Any, upstream_body: dict[str, Any], run: _Run, stopped: Any) -> AsyncIterator[str]:
    """The generated text pieces; fills ``run``'s finish reason and completion token count."""
    async for event in served.upstream.completion(upstream_body, stopped):
        if event.get("content"):
            yield event["content"]
        if event.get("stop"):
            _finish(run, event)
            return
        run.completion_tokens += 1


async def _stream(served: Any, run: _Run, pieces: AsyncIterator[str], watcher: asyncio.Task, cancel: threading.Event,
                  include_usage: bool, body: Any) -> Response:
    """Start the SSE response once the first piece came (so a refusal is still a 4xx), or after
    :data:`~steam_persona.serve.engine.FIRST_CHUNK_WAIT_S` while the request waits for a slot (then it
    gets SSE pings rather than silence, as on the embedded engine); a client that leaves before it
    closes the upstream connection at once. Shutdown before the first piece: 503 ``shutting_down``
    (after the response began: the stream's last event)."""
    first = asyncio.ensure_future(anext(pieces, None))
    try:
        if not await _await_first(served, first, watcher, time.monotonic() + FIRST_CHUNK_WAIT_S):
            await drop_stream(first, pieces)
            return _cut_short(True, 0)
        if first.done():
            _check_started(served, run, first.result())
    except (RequestError, asyncio.CancelledError) as e:  # CancelledError: uvicorn's shutdown deadline
        watcher.cancel()
        cancel.set()
        first.cancel()
        return (_blame(e, body) if isinstance(e, RequestError) else shutting_down()).response()
    return EventSourceResponse(_events(served, run, first, pieces, watcher, cancel, include_usage, body), sep="\n")


async def _events(served: Any, run: _Run, first: asyncio.Future, pieces: AsyncIterator[str], watcher: asyncio.Task,
                  cancel: threading.Event, include_usage: bool, body: Any) -> AsyncIterator[dict[str, str]]:
    """The SSE events of a stream whose first piece is (or will be) ``first``'s result."""
    try:
        if not await _await_first(served, first, watcher, math.inf):
            return
        piece = first.result()
        _check_started(served, run, piece)
        head = [run.chunk({"role": "assistant"}, None, None)] if run.chat else []
        if not run.chat and body.echo:
            head.append(run.chunk(None, body.prompt, None))
        for chunk in head:
            yield _event(chunk)
        if piece is not None:
            for chunk in run.text_chunks(piece):
                yield _event(chunk)
            async for piece in pieces:
                for chunk in run.text_chunks(piece):
                    yield _event(chunk)
        for chunk in run.text_chunks(None):
            yield _event(chunk)
        if include_usage:
            yield _event({"id": run.id, "object": run.chunk(None, None, None)["object"], "created": run.created,
                          "model": run.model, "choices": [], "usage": run.usage()})
        yield {"data": "[DONE]"}
    except RequestError as e:  # after the response began: the stream ends with the error
        yield {"data": json.dumps(_blame(e, body).body())}
    finally:
        watcher.cancel()
        cancel.set()
        await drop_stream(first, pieces)


async def _await_first(served: Any, first: asyncio.Future, watcher: asyncio.Task, until: float) -> bool:
    """Wait for a stream's first piece, at most until ``until`` (``time.monotonic()``); False when the
    client left first (``first`` is cancelled then).

    Raises:
        RequestError: 503 ``shutting_down`` when shutdown's wind-down came first (the caller's
            :func:`~steam_persona.serve.engine.drop_stream` then closes the upstream connection).
    """
    while not first.done():
        now = time.monotonic()
        if now > served.wind_down_at:
            raise shutting_down()
        if now >= until:
            return True
        # polled: the wind-down time is set by a signal while this waits
        if not await client_stayed(first, watcher, min(until - now, 0.5)):
            return False
    return True


def _check_started(served: Any, run: _Run, first: str | None) -> None:
    """Raise 503 ``shutting_down`` when shutdown stopped the stream before any text (waiting for a slot
    or during its prompt; llama-server's own end, even an empty one, sets another finish reason)."""
    if first is None and run.completion_tokens == 0 and run.finish_reason == "length" \
            and time.monotonic() > served.wind_down_at:
        raise shutting_down()


def _blame(err: RequestError, body: Any) -> RequestError:
    """llama-server fails (a 500, or an error event in a stream) when a request's grammar allows no token of the vocabulary ("Unexpected
    empty grammar stack", e.g. ``root ::= "\\u0000"``); that is the client's grammar: a 400 like the
    embedded engine's (:mod:`steam_persona.serve.grammar_guard`)."""
    if body.grammar and "grammar stack" in err.message:  # llama.cpp's words, in a 500 or in a stream's error event
        return RequestError("The grammar allows no token of this model's vocabulary at some point (e.g. a "
                            "character no token spells); change the grammar or schema", param="grammar",
                            code="invalid_grammar")
    return err


def _event(chunk: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(chunk, ensure_ascii=False)}


async def _prompt(served: Any, body: Any, chat: bool) -> list[int]:
    """The prompt's token ids (chat: the template rendered, contents as text; completion:
    :func:`~steam_persona.serve.modelinfo.completion_prompt_tokens`).

    Raises:
        RequestError: 400 ``unsupported_value`` for what llama-server cannot do: ``min_tokens``,
            ``suffix``, forcing a tool call.
    """
    if body.min_tokens:  # llama-cpp-python's own field; llama-server has no such sampler
        raise RequestError("'min_tokens' is not available with --engine llama-server", param="min_tokens",
                           code="unsupported_value")
    if chat:
        if isinstance(body.tool_choice, dict) or body.tool_choice == "required" or isinstance(body.function_call, dict):
            raise RequestError("Forcing a tool call is not available with --engine llama-server; send "
                               "tool_choice 'auto' or 'none', or serve with the default engine",
                               param="tool_choice", code="unsupported_value")
        return await served.check(served.handler.prompt_token_ids, body.messages, body.tools, body.tool_choice)
    if body.suffix:  # llama-cpp-python's fill-in-the-middle prompt
        raise RequestError("'suffix' is not available with --engine llama-server", param="suffix",
                           code="unsupported_value")
    return await served.check(completion_prompt_tokens, served.llama, body.prompt)


async def _logit_bias(served: Any, body: Any) -> dict[int, float] | None:
    """Token id → bias (``logit_bias_type`` "tokens": keys are texts, every token of each is biased)."""
    if not body.logit_bias:
        return None
    if body.logit_bias_type != "tokens":
        return {int(k): v for k, v in body.logit_bias.items()}

    def by_text() -> dict[int, float]:
        return {i: v for text, v in body.logit_bias.items()
                for i in served.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)}
    return await served.check(by_text)
