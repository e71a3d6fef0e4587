"""The chat model: the SDK's OpenAI-compatible LLM, adapted to the persona's server.

HTTP and chunking are the SDK's (``OAICompatLargeLanguageModel``). What we add:

* ``stream_options.include_usage`` on streamed requests (the SDK does not ask for it), and, for
  servers that ignore it (llama-cpp-python 0.3.36), usage counted with the server's tokenizer over
  the whole conversation instead of the SDK's GPT-2 estimate of the first message (which needs
  internet access to fetch the GPT-2 vocabulary);
* list-of-text-parts contents flattened to strings (some chat templates crash on lists);
* the optional persona system prompt when a conversation has none;
* streams read as server-sent events by the standard (:func:`sse_data`: CRLF, ``event:``/``id:``
  lines, multi-line data), which the SDK's split on blank lines is not;
* errors mapped to Dify's invoke errors, one line each: refused, timed out, cut mid-reply, or an
  answer that is no completion (HTML, a non-JSON event, a stream ended before ``[DONE]`` and any
  ``finish_reason``) → server unavailable; 401 → authorization; 429 → rate limit; 400 (e.g.
  context overflow) → bad request with the server's message; bad saved credentials → Dify's
  credential / authorization errors;
* one total deadline per invoke (the ``request_timeout`` credential), which requests' per-read
  timeout cannot give; when it passes, the connection is shut so the server stops the reply;
* tool results in the history sent as text, document/audio attachments refused;
* credential validation bounded in time, with the Docker networking hint for localhost URLs, whole
  numbers checked and ``context_size`` held against the server's ``n_ctx``;
* ``get_num_tokens`` through the server's ``/extras/tokenize``, falling back to an estimate;
* the endpoint URL's query string on every request (the SDK's join drops it), and an API key
  refused together with ``user:password@`` in the URL (:func:`server_client.check_auth`).

The SDK base is imported as a module (not as a name) so that this module holds exactly one
``LargeLanguageModel`` subclass. Never print(): stdout is the daemon's channel; log instead.
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping

import requests
import urllib3
from dify_plugin.config.logger_format import plugin_logger_handler
from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import AIModelEntity, ParameterRule, ParameterType
from dify_plugin.entities.model.llm import LLMResult, LLMResultChunk, LLMResultChunkDelta
from dify_plugin.entities.model.message import (AssistantPromptMessage, PromptMessage, PromptMessageContentType,
                                                PromptMessageTool, SystemPromptMessage, ToolPromptMessage,
                                                UserPromptMessage)
from dify_plugin.errors.model import (CredentialsValidateFailedError, InvokeAuthorizationError,
                                      InvokeBadRequestError, InvokeError, InvokeRateLimitError,
                                      InvokeServerUnavailableError)
from dify_plugin.interfaces.model.openai_compatible import llm as oai_llm

import persona
import server_client

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)
logger.addHandler(plugin_logger_handler)

_EOL = re.compile(rb"\r\n|\r|\n")
#: The UTF-8 byte order mark, which the event-stream standard drops at a stream's start.
_BOM = b"\xef\xbb\xbf"
#: The SDK reports a non-200 answer as InvokeError("API request failed with status code N: BODY").
_SDK_STATUS = re.compile(r"status code (\d{3}):\s*(.*)", re.S)
_ERROR_CLASS = {"auth": InvokeAuthorizationError, "bad_request": InvokeBadRequestError,
                "rate_limit": InvokeRateLimitError, "unavailable": InvokeServerUnavailableError,
                "server": InvokeServerUnavailableError}
#: Key in our copy of the credentials holding the invoke's deadline (``time.monotonic()`` seconds).
_DEADLINE = "_steam_persona_deadline"


def _refuse_attachments(messages: list[PromptMessage]) -> None:
    """Refuse content parts the SDK would drop without a word (documents, audio); images and video
    reach the server, which refuses them itself ("this model reads text only").

    Raises:
        InvokeBadRequestError: naming the part and what to do in Dify.
    """
    for i, m in enumerate(messages):
        for part in m.content if isinstance(m.content, list) else []:
            if part.type in (PromptMessageContentType.DOCUMENT, PromptMessageContentType.AUDIO):
                raise InvokeBadRequestError(
                    f"message {i} has {'an' if part.type.value[0] in 'aeiou' else 'a'} {part.type.value} attachment, and this model reads text only; turn off"
                    f" file upload for it in Dify, or extract the text first (e.g. a Doc Extractor node)")


def _transport_message(error: BaseException, url: str) -> str:
    """One line for a requests/urllib3 failure: TLS refused, unreachable (these two ask whether the
    server runs, with the Docker hint for localhost), or, for a server that was reached, hung up
    before answering (crashed or restarting: no Docker hint), timed out
    (naming the request_timeout setting) or cut mid-reply (killed, ``ChunkedEncodingError``)."""
    detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    if isinstance(error, requests.exceptions.SSLError):
        return (f"the TLS handshake with {url} failed ({detail}); if the server speaks plain HTTP (steam-train"
                f" serve does), use http://")
    if isinstance(error, requests.exceptions.ConnectionError) and any(
            words in detail for words in ("RemoteDisconnected", "Connection aborted", "Connection reset")):
        return server_client.hung_up_message(url, detail)
    if isinstance(error, requests.exceptions.ConnectTimeout) or (
            isinstance(error, requests.exceptions.ConnectionError)
            and not isinstance(error, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ReadTimeout))):
        return server_client.unavailable_message(url, f"cannot be reached ({server_client.root_cause(error)})")
    if isinstance(error, (requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError)):
        return f"the server at {url} did not finish the reply in time; raise the request_timeout setting"
    return f"the server at {url} stopped mid-reply ({detail})"


def sse_data(chunks: Iterable[bytes]) -> Iterator[str]:
    """The ``data`` of each server-sent event in a byte stream, as the WHATWG HTML standard's "event
    stream interpretation" reads it: a leading UTF-8 byte order mark is dropped; lines end in CRLF,
    LF or CR; ``data:`` fields (one space after the colon dropped) are joined by newlines; a blank
    line ends an event; ``event:``, ``id:``, ``retry:`` and ``:`` comment lines are ignored. An
    event the body ends inside is still returned.

    Why our own: the SDK splits on ``"\\n\\n"`` only (no CRLF, no multi-line events), and the plugin's
    locked dependencies hold no SSE parser; this is the standard's few rules, nothing more.
    """
    buf, data, at_start = b"", [], True
    for chunk in chunks:
        buf += chunk
        if at_start:
            if _BOM.startswith(buf):  # the mark may come split over reads
                continue
            buf, at_start = buf.removeprefix(_BOM), False
        cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)  # a CR may be the first half of CRLF
        *lines, rest = _EOL.split(buf[:cut])
        buf = rest + buf[cut:]
        for line in lines:
            if not line:
                if data:
                    yield "\n".join(data)
                data = []
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                data.append(value.removeprefix(b" ").decode("utf-8", "replace"))
    if buf.rstrip(b"\r").startswith(b"data:"):
        data.append(buf.rstrip(b"\r")[5:].removeprefix(b" ").decode("utf-8", "replace"))
    if data:
        yield "\n".join(data)


def _arrived(response: requests.Response) -> Iterator[bytes]:
    """A streamed body's bytes as they arrive (urllib3's ``read1``: what one socket read gives,
    chunked transfer decoded), where requests' ``iter_content`` waits to fill fixed-size blocks
    when the server sends no chunked transfer encoding."""
    while data := response.raw.read1(65536):
        yield data


def _checked_events(chunks: Iterable[bytes], url: str, deadline: float) -> Iterator[str]:
    """The stream's events as ``data: …`` lines for the SDK's parser, raising
    :class:`server_client.ServerError` where the parser would end quietly: past ``deadline``
    (keep-alive comments included), data that is not JSON, an error event without choices
    (``{"error": …}``, or a bare error object ``{"object": "error", "message", "code"}`` as vLLM
    sends it), or a body that ends before ``data: [DONE]`` (the terminator of OpenAI's
    API, llama.cpp, vLLM and Ollama) and before any choice's ``finish_reason`` (a stream that
    has its finish reason is complete)."""
    def timed() -> Iterator[bytes]:
        for chunk in chunks:
            if time.monotonic() > deadline:
                raise server_client.ServerError(f"the server at {url} did not finish the reply in time (raise the"
                                                f" request_timeout setting)", "unavailable")
            yield chunk

    finished = False
    for data in sse_data(timed()):
        if data.strip() == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            raise server_client.ServerError(f"the server at {url} sent a stream event that is not JSON:"
                                            f" {data[:120]!r}", "server") from None
        choices = event.get("choices") if isinstance(event, dict) else None
        if not isinstance(choices, list):
            if isinstance(event, dict) and (event.get("error") or event.get("message")):
                raise server_client.error_event(_error_of(event), url)
            continue  # a heartbeat or another event with no reply in it
        finished = finished or any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
        yield "data: " + data
    if not finished:
        raise server_client.ServerError(f"the server at {url} stopped mid-reply (the stream ended without"
                                        f" [DONE] or a finish_reason)", "unavailable")


def _shown(body: str) -> str:
    """An answer that is no completion, for a message: an HTML page's text, else the body's start."""
    return server_client.html_text(body) or repr(body[:120])


def _error_of(event: dict) -> object:
    """The error of a stream event: its ``error`` field, else the event itself when it is a bare
    error object (``message``, and maybe ``type``/``code``, at the top level)."""
    if event.get("error"):
        return event["error"]
    return {k: event[k] for k in ("message", "type", "code") if event.get(k) is not None}


class _Exchange:
    """The HTTP exchange of one invoke (the SDK's ``requests.post``), so that its deadline ends it on
    the server too: the socket is shut down, and ``steam-train serve`` / ``llama-server`` cancel a
    task whose client left (docs/serving.md), instead of finishing it before the next request."""

    def __init__(self, deadline: float, read_cap: float | None = None) -> None:
        self.deadline = deadline
        self.read_cap = read_cap  # the longest wait for the server's next bytes; None: up to the deadline
        self.response: requests.Response | None = None
        self.ended = False

    def keep(self, response: requests.Response, **_: object) -> requests.Response:
        """requests' ``response`` hook: called when the headers arrive, before the body is read."""
        self.response = response
        if self.ended:
            self.end()
        return response

    def end(self) -> None:
        """Shut the socket down (this also wakes a thread blocked reading it); the reader closes it."""
        self.ended = True
        connection = getattr(getattr(self.response, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_exchange = threading.local()  # .current: the _Exchange of the invoke this worker thread runs


class _SdkRequests:
    """What the SDK module sees as ``requests``: the same, except that ``post`` within an invoke
    waits for the server's bytes at most until the deadline (and at most ``read_cap`` seconds at a
    time when the invoke has one) and registers the response with the invoke's :class:`_Exchange`.

    Why: the SDK calls the module-level ``requests.post`` with fixed timeouts and no hooks, and
    overriding its ``_generate`` would copy it whole.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(requests, name)

    @staticmethod
    def post(url: str, **kwargs: object) -> requests.Response:
        exchange = getattr(_exchange, "current", None)
        if exchange is None:
            return requests.post(url, **kwargs)
        left = exchange.deadline - time.monotonic()
        if left <= 0:
            raise requests.exceptions.ReadTimeout("the request_timeout passed before the request")
        read = left + 0.2 if exchange.read_cap is None else min(left + 0.2, exchange.read_cap)
        kwargs["timeout"] = (min(server_client.CONNECT_TIMEOUT, left), read)
        kwargs["hooks"] = {"response": exchange.keep}
        return requests.post(url, **kwargs)


oai_llm.requests = _SdkRequests()


class SteamPersonaLargeLanguageModel(oai_llm.OAICompatLargeLanguageModel):
    """Dify LLM for the persona's OpenAI-compatible server (credentials: see provider YAML)."""

    # -- credentials ---------------------------------------------------------------------------
    @staticmethod
    def _credentials(credentials: Mapping, check_url: bool = True) -> dict:
        """Our form's credentials in the SDK's vocabulary (chat mode, no tool calls), checked:
        the API key cleaned (:func:`server_client.clean_api_key`), ``context_size`` and
        ``max_tokens_to_sample`` whole numbers >= 1 (the SDK's schema reads them with ``int()``).

        Raises:
            server_client.ServerError: a bad key or number, a key with credentials in the URL
                (:func:`server_client.check_auth`); ``check_url`` and the endpoint URL is
                empty, not http(s) or has an invalid port.
        """
        c = dict(credentials)
        url = c.get("endpoint_url") or ("" if check_url else server_client.DEFAULT_ENDPOINT)
        try:
            c["endpoint_url"] = server_client.normalize_endpoint(url)
        except server_client.ServerError:
            if check_url:
                raise
            c["endpoint_url"] = str(url)
        c["api_key"] = server_client.clean_api_key(c.get("api_key"))
        server_client.check_auth(c["endpoint_url"], c["api_key"])
        c["context_size"] = str(server_client.positive_int("context_size", c.get("context_size"), 4096))
        c["max_tokens_to_sample"] = str(server_client.positive_int("max_tokens_to_sample",
                                                                   c.get("max_tokens_to_sample"), 2048))
        c["mode"] = "chat"
        c.setdefault("function_calling_type", "no_call")
        c.setdefault("stream_function_calling", "not_supported")
        name = str(c.get("endpoint_model_name") or "").strip()  # pasted with spaces: vLLM/Ollama 404 on them
        if name:
            c["endpoint_model_name"] = name
        else:
            c.pop("endpoint_model_name", None)  # the SDK would send model "" instead of the Dify name
        return c

    @classmethod
    def _saved_credentials(cls, credentials: Mapping, check_url: bool = True,
                           invalid: type[Exception] = InvokeBadRequestError) -> dict:
        """:meth:`_credentials` plus ``request_timeout`` for a call with saved credentials (invoke,
        schema, token count), whose failure is one of Dify's errors, as Dify's own model plugins raise.

        Raises:
            InvokeAuthorizationError: the saved API key cannot be sent.
            invalid: a saved number or URL is invalid (saved before the check existed).
        """
        try:
            c = cls._credentials(credentials, check_url)
            server_client.request_timeout(c)
            return c
        except server_client.ServerError as e:
            error_class = InvokeAuthorizationError if e.kind == "auth" else invalid
            raise error_class(f"{e}; open the model's settings in Dify and save them again") from None

    @staticmethod
    def _with_persona(credentials: Mapping, prompt_messages: list[PromptMessage]) -> list[PromptMessage]:
        """Prepend :data:`persona.DEFAULT_SYSTEM` when the switch is on and no system turn exists."""
        if not server_client.is_on(credentials.get("persona_system_prompt")):
            return prompt_messages
        if any(isinstance(m, SystemPromptMessage) for m in prompt_messages):
            return prompt_messages
        return [SystemPromptMessage(content=persona.DEFAULT_SYSTEM), *prompt_messages]

    def validate_credentials(self, model: str, credentials: dict) -> None:
        """Check the form's values (``max_tokens_to_sample`` at most ``context_size``), reachability, key and a one-token chat, and that ``context_size``
        fits the ``n_ctx`` the server reports (:func:`server_client.server_n_ctx`; Dify trims history
        by it), all within :data:`server_client.VALIDATE_TIMEOUT` seconds (:func:`server_client.validate`).

        Raises:
            CredentialsValidateFailedError: one line; for localhost URLs it explains Docker networking.
        """
        try:
            c = self._credentials(credentials)
            server_client.positive_int("context_size", credentials.get("context_size"))  # required
            server_client.request_timeout(c)
            given = str(credentials.get("max_tokens_to_sample") or "").strip()
            if given and int(c["max_tokens_to_sample"]) > int(c["context_size"]):
                raise server_client.ServerError(
                    f"max_tokens_to_sample {c['max_tokens_to_sample']} is larger than context_size"
                    f" {c['context_size']}: a reply cannot outgrow the context; lower it", "bad_request")
            n_ctx = server_client.validate(c["endpoint_url"], c.get("api_key"),
                                           c.get("endpoint_model_name") or model)["n_ctx"]
        except server_client.ServerError as e:
            raise CredentialsValidateFailedError(str(e)) from None
        if n_ctx is not None and int(c["context_size"]) > n_ctx:
            raise CredentialsValidateFailedError(
                f"context_size {c['context_size']} is larger than the server's n_ctx {n_ctx}; set it to {n_ctx}"
                f" or less, or Dify sends histories the server refuses (HTTP 400)")

    # -- schema --------------------------------------------------------------------------------
    def get_customizable_model_schema(self, model: str, credentials: Mapping) -> AIModelEntity:
        """The SDK's rules (temperature, top_p, presence/frequency penalty, max_tokens) + seed and
        response_format (the SDK sends ``{"type": value}``; the server constrains ``json_object``
        replies with llama.cpp's JSON grammar).

        No ``stop`` rule: Dify's UI has its own "Stop sequences" control (a list), and Dify pops
        ``stop`` out of the parameters and passes it as ``invoke``'s ``stop`` list (api/core:
        ModelConfigConverter, the LLM node), where a text rule's string fails the daemon's list type.

        Raises:
            CredentialsValidateFailedError, InvokeAuthorizationError: see :meth:`_saved_credentials`.
        """
        entity = super().get_customizable_model_schema(model, self._saved_credentials(
            credentials, check_url=False, invalid=CredentialsValidateFailedError))
        entity.parameter_rules += [
            ParameterRule(name="seed", type=ParameterType.INT, required=False, min=0,
                          label=I18nObject(en_US="Seed", zh_Hans="随机种子"),
                          help=I18nObject(en_US="Same seed + same settings = same reply (llama.cpp sampling).",
                                          zh_Hans="相同的种子和参数会得到相同的回复。")),
            ParameterRule(name="response_format", type=ParameterType.STRING, required=False,
                          options=["text", "json_object"],
                          label=I18nObject(en_US="Response format", zh_Hans="回复格式"),
                          help=I18nObject(en_US="json_object: the reply is one JSON object (grammar-constrained).",
                                          zh_Hans="json_object：回复为一个 JSON 对象（语法约束生成）。")),
        ]
        return entity

    # -- invoke --------------------------------------------------------------------------------
    def _join_endpoint_url(self, endpoint_url: str, path: str) -> str:
        """The SDK's request URL, with the endpoint URL's query string kept (:func:`server_client.api_url`)."""
        return server_client.api_url(endpoint_url, path)

    def _validate_and_filter_model_parameters(self, model: str, model_parameters: dict, credentials: dict) -> dict:
        """The SDK's check of the app's model parameters against the rules, with numbers saved as
        text or as whole floats (``"512"``, ``512.0``, ``"0.7"``) read as the numbers they are, and
        a refusal raised as Dify's *bad request* instead of the SDK's plain ``ValueError`` (which
        Dify shows as the plugin's raw error JSON with a traceback, "contact the author").

        Raises:
            InvokeBadRequestError: a parameter out of its rule (e.g. ``max_tokens`` above *Upper
                bound for max tokens*, lowered after the app was saved), naming where to fix it.
            CredentialsValidateFailedError, InvokeAuthorizationError: bad saved credentials.
        """
        params = dict(model_parameters)
        for rule in self.get_parameter_rules(model, credentials):
            value = params.get(rule.name)
            if isinstance(value, bool) or value is None:
                continue
            if rule.type == ParameterType.INT:
                number = server_client.whole_number(value) if not isinstance(value, int) else value
                params[rule.name] = value if number is None else number
            elif rule.type == ParameterType.FLOAT and isinstance(value, str):
                try:
                    params[rule.name] = float(value.strip())
                except ValueError:
                    pass
        try:
            return super()._validate_and_filter_model_parameters(model, params, credentials)
        except ValueError as e:
            hint = (" or raise *Upper bound for max tokens* in the model's settings"
                    if "max_tokens should be less" in str(e) else "")
            said = re.sub(r"(\d)\.0\b", r"\1", str(e).rstrip("."))  # the SDK's rule bounds are floats: "512.0"
            raise InvokeBadRequestError(f"{said}; change it in the app's model parameters in"
                                        f" Dify{hint}") from None

    def _invoke(self, model: str, credentials: dict, prompt_messages: list[PromptMessage], model_parameters: dict,
                tools: list[PromptMessageTool] | None = None, stop: list[str] | None = None, stream: bool = True,
                user: str | None = None) -> LLMResult | Generator:
        """The SDK's request, bounded by the ``request_timeout`` credential in total (see :meth:`_bounded`).

        ``stop`` is the list Dify passes (its own "Stop sequences" control); the SDK has already
        dropped parameters without a rule, so ``model_parameters`` holds no ``stop``.

        Raises:
            InvokeError subclasses: see :meth:`_map_error`; one line each.
        """
        c = self._saved_credentials(credentials)
        seconds = server_client.request_timeout(c)
        params = dict(model_parameters)
        if stream and server_client.is_on(c.get("stream_include_usage", "enabled")):
            params["stream_options"] = {"include_usage": True}
        messages = self._with_persona(c, prompt_messages)
        _refuse_attachments(messages)
        c[_DEADLINE] = time.monotonic() + seconds
        # A request_timeout the user set is the whole bound: a blocking reply (or a stream's first
        # token after a long prompt) sends nothing for minutes on a CPU. Saved before the setting
        # existed: the SDK's per-read limit as before, so that a silent server fails as it used to.
        legacy = not str(credentials.get("request_timeout") or "").strip()
        exchange = _Exchange(c[_DEADLINE], server_client.READ_TIMEOUT if legacy else None)
        call = functools.partial(super()._invoke, model, c, messages, params, tools, stop, stream, user)
        url = server_client.redact(c["endpoint_url"])  # as messages show it
        if stream:
            return self._bounded(call, url, seconds, exchange)
        results = self._bounded(lambda: iter([call()]), url, seconds, exchange)
        try:
            return next(results)
        finally:
            results.close()

    def _bounded(self, produce: Callable[[], Iterator], url: str, seconds: float, exchange: _Exchange) -> Generator:
        """Yield what ``produce()`` yields, computed in a daemon thread, for at most ``seconds`` in total
        (until ``exchange.deadline``).

        Why a thread: requests (the SDK's HTTP) only bounds each socket read, so a server that stalls
        or trickles bytes could hold a Dify run for ever. Past the deadline this raises and ends the
        HTTP exchange (:meth:`_Exchange.end`), so that the server stops generating and the thread ends.

        Raises:
            InvokeServerUnavailableError: not finished within ``seconds``; other errors via :meth:`_map_error`.
        """
        events: queue.Queue = queue.Queue()
        gone = threading.Event()  # set when the reader stops listening (deadline, error, Dify closed the stream)

        def work() -> None:
            _exchange.current = exchange
            try:
                items = iter(produce())
                for item in items:
                    if gone.is_set():
                        getattr(items, "close", lambda: None)()  # closes the SDK's generator and its response
                        return
                    events.put((True, item))
                events.put((False, None))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                events.put((False, e))
            finally:
                if exchange.response is not None:
                    exchange.response.close()

        threading.Thread(target=work, daemon=True, name="steam-persona-invoke").start()
        finished = False
        try:
            while True:
                try:
                    is_item, value = events.get(timeout=max(0.0, exchange.deadline - time.monotonic()))
                except queue.Empty:
                    raise InvokeServerUnavailableError(
                        f"the server at {url} did not finish the reply within {seconds:g} s; raise the"
                        f" request_timeout setting (the server was told to stop)") from None
                if not is_item:
                    finished = True
                    if value is not None:
                        raise self._map_error(value, url)
                    return
                yield value
        finally:
            gone.set()
            if not finished:  # the deadline, or Dify closed the stream: the server should stop too
                exchange.end()

    def _handle_generate_stream_response(self, model: str, credentials: dict, response: requests.Response,
                                         prompt_messages: list[PromptMessage]) -> Generator:
        """The SDK's SSE parsing, guarded: a JSON answer (a server that ignores ``stream``) becomes
        one chunk; any other non-``text/event-stream`` answer, a non-JSON line, an error event, a
        stream cut before ``[DONE]`` and a finish reason, or past the deadline raises (see
        :func:`_checked_events`)."""
        url = server_client.api_url(credentials["endpoint_url"], "chat/completions")
        kind = response.headers.get("Content-Type", "")
        if "application/json" in kind:
            yield from self._json_as_stream(model, credentials, response, prompt_messages)
            return
        if "text/event-stream" not in kind:
            raise server_client.ServerError(f"{url} answered {kind or 'no content type'}, not an"
                                            f" event stream: {_shown(response.text)}; is the endpoint URL the"
                                            f" API base of an OpenAI-compatible server?", "server")
        response.iter_lines = lambda **kw: _checked_events(_arrived(response), credentials["endpoint_url"],
                                                             credentials[_DEADLINE])
        yield from super()._handle_generate_stream_response(model, credentials, response, prompt_messages)

    def _json_as_stream(self, model: str, credentials: dict, response: requests.Response,
                        prompt_messages: list[PromptMessage]) -> Generator[LLMResultChunk, None, None]:
        """A whole JSON completion as a content chunk and the final chunk (usage, finish reason)."""
        result = self._handle_generate_response(model, credentials, response, prompt_messages)
        finish = (response.json()["choices"][0] or {}).get("finish_reason") or "stop"
        yield LLMResultChunk(model=result.model, delta=LLMResultChunkDelta(index=0, message=result.message))
        yield LLMResultChunk(model=result.model, delta=LLMResultChunkDelta(
            index=1, message=AssistantPromptMessage(content=""), finish_reason=finish, usage=result.usage))

    def _handle_generate_response(self, model: str, credentials: dict, response: requests.Response,
                                  prompt_messages: list[PromptMessage]) -> LLMResult:
        """The SDK's parsing, after checking the answer is a completion object (JSON with choices).

        Raises:
            server_client.ServerError: (kind ``server``) anything else, e.g. an HTML page or an SSE body.
        """
        url = server_client.api_url(credentials["endpoint_url"], "chat/completions")
        try:
            data = response.json()
        except ValueError:
            raise server_client.ServerError(f"{url} did not answer JSON"
                                            f" ({response.headers.get('Content-Type') or 'no content type'}):"
                                            f" {_shown(response.text)}", "server") from None
        if not isinstance(data, dict) or not data.get("choices"):
            raise server_client.ServerError(f"{url} answered without choices:"
                                            f" {response.text[:200]!r}", "server")
        self._learn_from_usage(credentials, prompt_messages, data.get("usage"))
        return super()._handle_generate_response(model, credentials, response, prompt_messages)

    @staticmethod
    def _map_error(error: BaseException, url: str) -> InvokeError:
        """Failures → Dify's invoke errors, one line each: unreachable / timed out / cut mid-reply →
        InvokeServerUnavailableError; HTTP 401 → InvokeAuthorizationError; 429 → InvokeRateLimitError;
        other 4xx (e.g. context overflow) → InvokeBadRequestError with the server's message."""
        if isinstance(error, InvokeError) and type(error) is not InvokeError:
            return error
        if isinstance(error, server_client.ServerError):
            return _ERROR_CLASS[error.kind](str(error))
        if isinstance(error, (requests.exceptions.RequestException, urllib3.exceptions.HTTPError)):
            return InvokeServerUnavailableError(_transport_message(error, url))
        match = _SDK_STATUS.search(str(error)) if isinstance(error, InvokeError) else None
        if match:
            err = server_client.error_for_status(int(match.group(1)), match.group(2), url)
            return _ERROR_CLASS[err.kind](str(err))
        if isinstance(error, InvokeError):
            return error
        return InvokeError(f"{type(error).__name__}: {error}")

    def _transform_invoke_error(self, error: Exception) -> InvokeError:
        """Keep our already-mapped invoke errors as they are (the SDK would rewrap them)."""
        if isinstance(error, InvokeError) and type(error) is not InvokeError:
            return error
        return super()._transform_invoke_error(error)

    def _convert_prompt_message_to_dict(self, message: PromptMessage, credentials: dict | None = None) -> dict:
        """The SDK's conversion, with text-only part lists flattened to one string, and a tool
        result as a user turn ``Tool result (ID):\nCONTENT``.

        Why the tool turn: with ``function_calling_type=no_call`` (this model has no tool-call
        feature) the SDK turns a tool message into a dict without a role, which every server refuses;
        as text the model still reads the result, as in Dify's ReAct agents.
        """
        if isinstance(message, ToolPromptMessage):
            content = self._parts_as_user(message.content, credentials)
            return {"role": "user", "content": f"Tool result ({message.tool_call_id}):\n{content or ''}"}
        if isinstance(message.content, list) and not isinstance(message, UserPromptMessage):
            message = message.model_copy(update={"content": self._parts_as_user(message.content, credentials)})
        d = super()._convert_prompt_message_to_dict(message, credentials)
        if "content" in d:
            d["content"] = server_client.flatten_content(d["content"])
        return d

    def _parts_as_user(self, content: object, credentials: dict | None) -> object:
        """A message content as the SDK converts a user turn's (only there does it turn content
        parts into OpenAI dicts; a system or assistant list would reach the JSON encoder as
        objects), text-only part lists flattened to one string."""
        return server_client.flatten_content(super()._convert_prompt_message_to_dict(
            UserPromptMessage(content=content), credentials)["content"])

    # -- token counting ------------------------------------------------------------------------
    def _count_messages(self, credentials: dict, prompt_messages: list[PromptMessage]) -> int:
        """Prompt tokens of a conversation: counted by ``steam-train serve`` itself (its template, and
        the persona it adds when the conversation has no system turn), else ChatML rendering counted
        by the server's tokenizer, else :func:`server_client.estimate_tokens` of that rendering with
        :data:`persona.DEFAULT_SYSTEM` standing in for the server's persona when there is no system turn.

        Both server calls share one :data:`server_client.TOKENIZE_TIMEOUT`: counting never holds a chat longer.
        """
        messages = [self._convert_prompt_message_to_dict(m, credentials) for m in prompt_messages]
        url, key, model = credentials["endpoint_url"], credentials.get("api_key"), credentials.get("endpoint_model_name")
        end = time.monotonic() + server_client.TOKENIZE_TIMEOUT
        n = server_client.count_chat_tokens(url, key, messages, model=model)
        if n is not None:
            return n
        text = server_client.render_chatml(messages)
        left = end - time.monotonic()
        n = server_client.count_tokens(url, key, text, model=model, read_timeout=left) if left > 0.5 else None
        if n is None:
            logger.info("tokenize endpoints unavailable at %s; estimating tokens", server_client.redact(url))
            return server_client.scaled_estimate(url, model, self._estimate(messages))
        return n

    @staticmethod
    def _estimate(messages: list[dict]) -> int:
        """:func:`server_client.estimate_tokens` of the ChatML rendering of ``messages`` (dicts as sent), with
        :data:`persona.DEFAULT_SYSTEM` standing in for the server's persona when there is no system turn."""
        return server_client.estimate_tokens(server_client.render_chatml(
            server_client.prepare_messages(messages, system=persona.DEFAULT_SYSTEM)))

    def _learn_from_usage(self, credentials: dict, prompt_messages: list[PromptMessage], usage: object) -> None:
        """Teach :func:`server_client.learn_estimate_scale` the server's own count of this prompt
        (``usage.prompt_tokens``), for the estimates of a server without a tokenize endpoint."""
        counted = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
        if isinstance(counted, int):
            messages = [self._convert_prompt_message_to_dict(m, credentials) for m in prompt_messages]
            server_client.learn_estimate_scale(credentials["endpoint_url"], credentials.get("endpoint_model_name"),
                                               self._estimate(messages), counted)

    def get_num_tokens(self, model: str, credentials: dict, prompt_messages: list[PromptMessage],
                       tools: list[PromptMessageTool] | None = None) -> int:
        """Tokens of the prompt as the server will see it (persona system turn included when the
        switch adds it). Uses ``POST /extras/tokenize`` (llama_cpp.server); falls back to an estimate."""
        c = self._saved_credentials(credentials, check_url=False)
        return self._count_messages(c, self._with_persona(c, prompt_messages))

    def _create_final_llm_result_chunk(self, index: int, message: AssistantPromptMessage, finish_reason: str,
                                       usage: dict, model: str, prompt_messages: list[PromptMessage],
                                       credentials: dict, full_content: str) -> LLMResultChunk:
        """The SDK's last chunk, with usage counted by the server's tokenizer when the stream had none."""
        usage = dict(usage or {})
        self._learn_from_usage(credentials, prompt_messages, usage)
        if usage.get("prompt_tokens") is None:
            usage["prompt_tokens"] = self._count_messages(credentials, prompt_messages)
        if usage.get("completion_tokens") is None:
            n = server_client.count_tokens(credentials["endpoint_url"], credentials.get("api_key"), full_content,
                                           model=credentials.get("endpoint_model_name"))
            usage["completion_tokens"] = n if n is not None else server_client.estimate_tokens(full_content)
        return super()._create_final_llm_result_chunk(index, message, finish_reason, usage, model, prompt_messages,
                                                      credentials, full_content)
