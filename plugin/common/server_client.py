"""Talking to the persona's OpenAI-compatible server from the Dify plugins (and from the host).

The server is ``steam-train serve`` (llama-cpp-python's ``llama_cpp.server``) or any other
OpenAI-compatible one (llama.cpp's ``llama-server``, vLLM, Ollama's ``/v1``). Both plugins need the
same few things from it: the base URL made canonical, a bounded reachability/auth check, a chat
completion, a token count (``steam-train serve``'s ``POST /extras/tokenize/chat``, else
llama_cpp.server's ``POST /extras/tokenize``), and one-line error
messages a Dify user can act on (with the Docker networking hint when the URL says ``localhost``).

Why our own (small) module and not the SDK: the tool plugin has no HTTP helper in ``dify_plugin``,
the chat plugin's SDK base has no tokenizer endpoint, no bounded validation and no Docker hint, and
this module must import without ``dify_plugin`` (which needs Python >= 3.12) so that ``steam-train
demo`` can run the plugins' exact request path from the host Python. Dependencies: httpx + stdlib.

``steam-train plugin package`` copies this file to the root of both ``.difypkg`` files as
``server_client.py``; the plugins import it as a top-level module.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
import unicodedata
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

#: Where Dify (inside Docker) finds a server started on the host with ``steam-train serve``.
DEFAULT_ENDPOINT = "http://host.docker.internal:8000/v1"
#: Seconds to wait for a TCP connection before calling the server unavailable.
CONNECT_TIMEOUT = 5.0
#: Seconds a whole credential check may take, all its requests together (GET /models, a one-token
#: reply, the n_ctx probe), plus up to :data:`CONNECT_TIMEOUT` to connect.
VALIDATE_TIMEOUT = 15.0
#: Seconds of :data:`VALIDATE_TIMEOUT` the optional n_ctx probe (GET /health, then /props) may use at most.
PROBE_TIMEOUT = 3.0
#: Seconds for a tokenize call; counting must never hold up a chat.
TOKENIZE_TIMEOUT = 5.0
#: Default total seconds one chat reply or review may take, request to last byte, when the
#: ``request_timeout`` credential is unset (credentials saved before it existed): generous, so that
#: long CPU replies that worked under the old per-read limit still do; a server that stalls or
#: trickles keep-alive comments fails after this.
REQUEST_TIMEOUT = 3600.0
#: Seconds one wait for the chat plugin's next bytes may take when its ``request_timeout``
#: credential is unset (saved before it existed: the Dify SDK's own per-read limit); a set
#: ``request_timeout`` bounds the whole reply alone, and :func:`chat_completion` always waits the
#: whole ``read_timeout``, since a non-streamed answer sends nothing until it is complete.
READ_TIMEOUT = 300.0
#: Characters that paste invisibly with a copied key (zero-width space/joiners, word joiner, BOM).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
#: A scheme pasted with the key (``Bearer abc``, copied from a curl line or a server's docs).
_BEARER = re.compile(r"\Abearer\s+", re.IGNORECASE)

_WHOLE = re.compile(r"([0-9]+)(?:\.0*)?")
_KEY_WORDS = re.compile(r"api.?key|token|auth|credential|bearer", re.I)
_USERINFO = re.compile(r"(?<=://)([^/\s@:'\"]*):[^/\s@'\"]*@")
#: A query parameter whose name says it holds a secret (``?key=…``, ``&access_token=…``, ``&sig=…``).
_QUERY_SECRET = re.compile(r"([?&][\w.-]*(?:key|token|secret|sig|pass|auth|code)[\w.-]*=)[^&#\s'\"]+", re.I)
#: Query parameter names that carry an API key (lower case); ``steam-train serve`` refuses each with 401.
KEY_QUERY_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "x-api-key", "access_token", "token",
                              "auth", "auth_token", "authorization", "bearer"})
_HTML_SKIP = re.compile(r"<(script|style|head)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.S | re.I)
_PASTED_ROUTE = re.compile(r"(?<=/v1)/(chat/completions|completions|models)\Z")
#: A 404 about the model (vLLM: "The model `x` does not exist."), not about the path.
_NO_MODEL = re.compile(r"\bmodel\b.*\b(not exist|does not|not found|unknown|no such)|\b(unknown|no such) model\b", re.I)
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class ServerError(Exception):
    """A request to the server failed; ``str(e)`` is one line a user can act on.

    Attributes:
        kind: ``"unavailable"`` (refused, timed out, DNS), ``"auth"`` (HTTP 401/403, a key that
            cannot be sent), ``"bad_request"`` (HTTP 400/404/422, e.g. context overflow),
            ``"rate_limit"`` (HTTP 429), ``"server"`` (5xx, an answer that is not the API's).
        status: the HTTP status, or ``None`` when no response came back.
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.kind = kind
        self.status = status


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (``http://user:PASSWORD@proxy/v1``, a reverse
    proxy's basic auth) and the value of every secret-named query parameter (``?key=SECRET``, a
    gateway's) replaced by ``***``: error messages name the URL, and Dify shows and logs them."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1:***@", str(text)))


def normalize_endpoint(url: str | None) -> str:
    """Return the API base URL without a trailing slash; a bare ``http://host:port`` gets ``/v1``;
    a pasted route after ``/v1`` (``…/v1/chat/completions``, ``…/v1/models``) is dropped; a query
    string (``?api-version=…``, a gateway's ``?key=…``) is kept, and :func:`api_url` puts it on every request.

    Raises:
        ServerError: (kind ``bad_request``) the URL is empty or not http(s).
    """
    url = (url or "").strip()
    if not url:
        raise ServerError("the endpoint URL is empty; give the server's base URL, e.g. " + DEFAULT_ENDPOINT,
                          "bad_request")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ServerError(f"endpoint URL {url!r} is not an http(s) URL; use e.g. {DEFAULT_ENDPOINT}", "bad_request")
    try:
        parts.port
    except ValueError:
        raise ServerError(f"endpoint URL {url!r} has an invalid port (1-65535); use e.g. {DEFAULT_ENDPOINT}",
                          "bad_request") from None
    path = _PASTED_ROUTE.sub("", parts.path.rstrip("/")) or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def api_url(endpoint_url: str, route: str = "", root: bool = False) -> str:
    """The URL of ``route`` (``"chat/completions"``) under the API base, or with ``root`` under the
    server's root, the base without its ``/v1`` (``/health``, ``/props``, llama_cpp.server's
    ``/extras``), the endpoint URL's query string kept.

    Raises:
        ServerError: the endpoint URL is invalid (:func:`normalize_endpoint`).
    """
    parts = urlsplit(normalize_endpoint(endpoint_url))
    path = parts.path[: -len("/v1")] if root and parts.path.endswith("/v1") else parts.path
    path = f"{path}/{route.strip('/')}" if route else path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def docker_hint(endpoint_url: str) -> str:
    """Explain Docker networking when the URL points at ``localhost`` / ``127.0.0.1``; else ``""``."""
    try:
        parts = urlsplit(endpoint_url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port or 8000
    except ValueError:
        return ""
    if host not in _LOCAL_HOSTS:
        return ""
    return (f" Note: Dify runs plugins inside Docker, where {host} is the container itself, not your machine;"
            f" use http://host.docker.internal:{port}/v1 (on Linux add extra_hosts:"
            f" [\"host.docker.internal:host-gateway\"] to the plugin_daemon service) and start the server"
            f" with --host 0.0.0.0.")


def clean_api_key(api_key: Any) -> str:
    """The key as it goes into ``Authorization: Bearer KEY``: surrounding spaces, invisible
    zero-width characters and a leading ``Bearer `` (any case) removed; ``""`` for none.

    Raises:
        ServerError: (kind ``auth``) the key still holds a character an HTTP header cannot carry
            (non-ASCII, a space, a newline); the message names its position, never the key.
    """
    key = str(api_key or "").translate(_INVISIBLE).strip()
    key = _BEARER.sub("", key, count=1)
    bad = next((i for i, ch in enumerate(key) if not ("!" <= ch <= "~")), None)
    if bad is not None:
        raise ServerError(f"the API key has a character an HTTP header cannot carry at position {bad + 1}"
                          f" ({unicodedata.name(key[bad], repr(key[bad]))}); paste the key again, ASCII only",
                          "auth")
    return key


def headers(api_key: str | None, endpoint_url: str = "") -> dict[str, str]:
    """Request headers: JSON, plus ``Authorization: Bearer KEY`` when a key is set.

    Raises:
        ServerError: the key cannot be sent (:func:`clean_api_key`), or comes with credentials in
            ``endpoint_url`` (:func:`check_auth`).
    """
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    key = clean_api_key(api_key)
    check_auth(endpoint_url, key)
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def check_auth(endpoint_url: Any, api_key: Any) -> None:
    """Refuse an API key together with a user name or password in the endpoint URL
    (``http://user:pass@proxy/v1``). The key is ``Authorization: Bearer KEY``, URL credentials are
    HTTP basic auth (``Authorization: Basic …``, which requests and httpx send on their own), and a
    request has one ``Authorization`` header: Dify's official OpenAI-compatible provider sets the
    Bearer header and requests then replaces it with the URL's Basic, dropping the key unsaid.

    Raises:
        ServerError: (kind ``auth``) both are set; the message names both fields and never a secret.
    """
    try:
        parts = urlsplit(str(endpoint_url or "").strip())
        in_url = parts.username is not None or parts.password is not None
    except ValueError:
        return
    if in_url and clean_api_key(api_key):
        raise ServerError("endpoint_url holds a user name and password (HTTP basic auth) and api_key is set too;"
                          " a request carries one Authorization header, so one would be dropped: clear api_key to"
                          " log in with the URL's user and password, or take user:password@ out of endpoint_url to"
                          " send the key", "auth")


def whole_number(value: Any) -> int | None:
    """``value`` as a whole number: an int, a float without fraction (``2048.0``), or text of ASCII
    digits with an optional ``.0`` fraction (``"2048"``, ``"2048.0"``); ``None`` for anything else,
    including booleans, signs, ``_`` separators and non-ASCII digits (``"２０４８"``), which Python's
    ``int()`` would take but a form field should not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    match = _WHOLE.fullmatch(str(value if value is not None else "").strip())
    return int(match.group(1)) if match else None


def positive_int(name: str, value: Any, default: int | None = None) -> int:
    """A credential that must be a whole number > 0 (:func:`whole_number`; Dify's text inputs send strings).

    Raises:
        ServerError: (kind ``bad_request``) empty without a default, not a whole number, or < 1.
    """
    text = str(value if value is not None else "").strip()
    if not text and default is not None:
        return default
    number = whole_number(value) or 0
    if number < 1:
        raise ServerError(f"{name} must be a whole number of at least 1, not {value!r}", "bad_request")
    return number


def request_timeout(credentials: Mapping[str, Any]) -> float:
    """The ``request_timeout`` credential in seconds, else :data:`REQUEST_TIMEOUT`.

    Raises:
        ServerError: not a whole number of seconds >= 1.
    """
    return float(positive_int("request_timeout", credentials.get("request_timeout"), int(REQUEST_TIMEOUT)))


def html_text(body: str) -> str | None:
    """The readable text of an HTML page (a proxy's or CDN's error page: nginx's "502 Bad Gateway"),
    its title first, without markup, scripts, styles or comments; ``None`` when ``body`` is no HTML."""
    head = body.lstrip()[:1024].lower()
    if not head.startswith("<") or not any(tag in head for tag in ("<html", "<!doctype html", "<head", "<body",
                                                                    "<title", "<h1", "<center", "<p>")):
        return None
    title = _HTML_TITLE.search(body)
    text = " ".join(html.unescape(_HTML_TAG.sub(" ", _HTML_SKIP.sub(" ", body))).split())
    title_text = " ".join(html.unescape(title.group(1)).split()) if title else ""
    if title_text and not text.startswith(title_text):
        text = f"{title_text}: {text}" if text else title_text
    return f"an HTML page: {text[:200]}{'…' if len(text) > 200 else ''}" if text else "an HTML page"


def server_message(body: str) -> str:
    """The error text inside an OpenAI-style error body (``{"error": {"message": ...}}``,
    FastAPI's ``{"detail": ...}``), an HTML page's text (:func:`html_text`), else the body itself,
    shortened to one line."""
    page = html_text(body) if isinstance(body, str) else None
    if page is not None:
        return page
    text = body
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message") or json.dumps(err, ensure_ascii=False)
        if err:
            text = err if isinstance(err, str) else json.dumps(err, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text[:500] + ("…" if len(text) > 500 else "")


def openai_error_message(body: str) -> str | None:
    """The ``message`` of an OpenAI-shaped error body (``{"error": {"message": ...}}``), one line; else ``None``."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    err = data.get("error") if isinstance(data, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    return server_message(body) if isinstance(message, str) and message.strip() else None


def key_query_params(url: str) -> list[str]:
    """The names of ``url``'s query parameters that carry an API key (:data:`KEY_QUERY_PARAMS`), as written."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [name for name, _ in parse_qsl(query, keep_blank_values=True) if name.lower() in KEY_QUERY_PARAMS]


def key_fix(url: str) -> str:
    """What to do about a rejected key: move one that the endpoint URL's query string carries into the API key
    field, else use the server's key."""
    names = key_query_params(url)
    if names:
        return (f"the key belongs in the API Key field, not in the endpoint URL's query string: take "
                f"{' and '.join(f'{n}=…' for n in names)} out of the endpoint URL and paste the key into API Key "
                "(left empty when the server has none)")
    return "use the key the server was started with (steam-train serve --api_key), or none if it has none"


def error_for_status(status: int, body: str, url: str) -> ServerError:
    """Map an HTTP error status to a :class:`ServerError` with a one-line, actionable message; a
    rejected key's message relays the server's own words when it sent an OpenAI-shaped error, then says
    what to do (:func:`key_fix`)."""
    msg = server_message(body) or "an empty body"
    if status == 401 or (status == 403 and _KEY_WORDS.search(msg)):
        said = openai_error_message(body)
        return ServerError(f"the server at {url} rejected the API key (HTTP {status})"
                           + (f": {said}" if said else "") + f"; {key_fix(url)}", "auth", status)
    if status == 403:
        return ServerError(f"{url} refused access (HTTP 403): {msg}; a proxy, firewall or IP allowlist between"
                           f" Dify and the server may block it", "auth", status)
    if status == 404 and not _NO_MODEL.search(msg):
        return ServerError(f"{url} answered HTTP 404 ({msg}); the endpoint URL must be the API base that ends"
                           f" in /v1, e.g. {DEFAULT_ENDPOINT}", "bad_request", status)
    if status == 429:
        return ServerError(f"the server is busy (HTTP 429): {msg}; try again later", "rate_limit", status)
    if 400 <= status < 500:
        return ServerError(f"the server refused the request (HTTP {status}): {msg}", "bad_request", status)
    return ServerError(f"the server failed (HTTP {status}): {msg}", "server", status)


def error_event(error: Any, url: str) -> ServerError:
    """Map an error sent inside a stream (``data: {"error": {"message", "code", "type"}}``, after
    HTTP 200) as its ``code`` would be when that is an HTTP status; else ``invalid_request_error``
    → ``bad_request`` and anything else → ``server``, with a message that claims no HTTP status."""
    err = error if isinstance(error, dict) else {"message": str(error)}
    code = err.get("code")
    if isinstance(code, int) and 400 <= code < 600:
        return error_for_status(code, json.dumps({"error": err}, ensure_ascii=False), url)
    msg = server_message(json.dumps({"error": err}, ensure_ascii=False))
    if "invalid_request" in str(err.get("type", "")):
        return ServerError(f"the server refused the request mid-reply: {msg}", "bad_request")
    return ServerError(f"the server at {url} failed mid-reply: {msg}", "server")


def unavailable_message(url: str, what: str) -> str:
    """One line for an unreachable server: what happened, what to check, the Docker hint if local."""
    return f"the model server at {url} {what}; is `steam-train serve` running there?" + docker_hint(url)


def root_cause(exc: BaseException) -> str:
    """The text of the innermost OS error under ``exc`` (``[Errno 111] Connection refused``, ``[Errno -2] Name or
    service not known``), following what requests and urllib3 wrap it in (an exception in ``args[0]``, a
    ``reason``, ``__cause__``, ``__context__``); else ``exc``'s own text; one line either way."""
    found, seen = None, set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            found = e
        inner = [x for x in (e.args[0] if e.args else None, getattr(e, "reason", None), e.__cause__, e.__context__)
                 if isinstance(x, BaseException)]
        e = inner[0] if inner else None
    return " ".join(str(found if found is not None else exc).split()) or type(exc).__name__


def hung_up_message(url: str, detail: str) -> str:
    """One line for a server that took the request and closed the connection without an answer:
    it was reached (no Docker hint), so it most likely crashed or is restarting."""
    return (f"the server at {url} closed the connection without answering ({detail[:160]}); it may have crashed"
            f" or be restarting: check its log, then try again")


def error_for_exception(exc: Exception, url: str, setting: str = "", seconds: float | None = None) -> ServerError:
    """Map an httpx transport error (refused, timeout, DNS) to a ``kind="unavailable"`` :class:`ServerError`;
    a timeout after the connection was made names ``seconds`` (the limit that passed) and
    ``setting`` (the one to raise), and asks nothing about the server running (it was reached)."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        when = f"within {round(seconds, 1):g} s" if seconds is not None else "in time"
        return ServerError(f"the server at {url} did not finish its answer {when}"
                           + (f"; raise the {setting} setting" if setting else ""), "unavailable")
    if isinstance(exc, httpx.TimeoutException):
        what = "did not answer in time"
    elif "SSL" in str(exc) or "TLS" in str(exc):
        return ServerError(f"the TLS handshake with {url} failed ({' '.join(str(exc).split())[:200]}); if the"
                           f" server speaks plain HTTP (steam-train serve does), use http://", "unavailable")
    elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return ServerError(hung_up_message(url, f"{type(exc).__name__}: {' '.join(str(exc).split())}"), "unavailable")
    elif isinstance(exc, httpx.ConnectError):
        what = f"cannot be reached ({' '.join(str(exc).split()) or 'connection refused'})"
    else:
        what = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return ServerError(unavailable_message(url, what), "unavailable")


def is_on(value: Any) -> bool:
    """Read a Dify switch/select credential (``True``, ``"true"``, ``"enabled"``, ``"on"``, ``"1"``)."""
    return str(value).strip().lower() in ("true", "enabled", "on", "1", "yes")


def _request(method: str, url: str, api_key: str | None, *, json_body: Any = None,
             read_timeout: float, setting: str = "") -> httpx.Response:
    """One request whose whole answer must arrive within ``read_timeout`` seconds (plus the connect
    timeout, at most as long): httpx's read timeout bounds each gap only, so the body is read
    piecewise against a deadline, and the connection is closed when it passes (the server then
    stops the work). A non-streamed answer arrives in one piece at the end, so no wait is capped
    below ``read_timeout``. ``setting``: the credential a timeout message tells to raise."""
    deadline = time.monotonic() + read_timeout
    timeout = httpx.Timeout(connect=min(CONNECT_TIMEOUT, read_timeout), read=read_timeout, write=read_timeout,
                            pool=min(CONNECT_TIMEOUT, read_timeout))
    try:
        with httpx.stream(method, url, headers=headers(api_key, url), json=json_body, timeout=timeout) as response:
            raw = bytearray()
            for piece in response.iter_raw():
                raw += piece
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"no complete answer within {read_timeout:g} s")
        response = httpx.Response(response.status_code, headers=response.headers, content=bytes(raw),
                                  request=response.request)
        response.read()  # decodes gzip/deflate as the headers say
    except httpx.HTTPError as e:
        raise error_for_exception(e, url, setting, read_timeout) from None
    if response.status_code >= 400:
        raise error_for_status(response.status_code, response.text, url)
    return response


def _json(response: httpx.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise ServerError(f"{response.request.url} did not answer JSON: {response.text[:200]!r}", "server",
                          response.status_code) from None
    if not isinstance(data, dict):
        raise ServerError(f"{response.request.url} answered {type(data).__name__}, not a JSON object", "server",
                          response.status_code)
    return data


def list_models(endpoint_url: str, api_key: str | None = None, read_timeout: float = VALIDATE_TIMEOUT) -> list[str]:
    """``GET {base}/models``: the ids the server serves. Checks reachability and the API key.

    Raises:
        ServerError: unreachable, rejected key, or a non-OpenAI answer.
    """
    data = _json(_request("GET", api_url(endpoint_url, "models"), api_key, read_timeout=read_timeout))
    return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]


def chat_completion(endpoint_url: str, api_key: str | None, messages: list[dict], *, model: str | None = None,
                    read_timeout: float = REQUEST_TIMEOUT, setting: str = "request_timeout", **params: Any) -> dict:
    """``POST {base}/chat/completions`` without streaming; returns the OpenAI response object.

    Args:
        messages: OpenAI chat messages; list-of-parts contents are flattened (:func:`prepare_messages`).
        model: the model id as the server calls it; ``None`` lets a one-model server pick its own.
        read_timeout: seconds the whole answer may take (CPU inference of a 7B model is slow).
        setting: the credential a timeout message tells to raise.
        params: OpenAI fields (``max_tokens``, ``temperature``, ``seed``, ``stop`` …); ``None`` values are dropped.

    Raises:
        ServerError: unreachable, rejected key, refused request (e.g. context overflow) or a bad answer.
    """
    url = api_url(endpoint_url, "chat/completions")
    body: dict[str, Any] = {"messages": prepare_messages(messages), "stream": False}
    if model:
        body["model"] = model
    body.update({k: v for k, v in params.items() if v is not None})
    data = _json(_request("POST", url, api_key, json_body=body, read_timeout=read_timeout, setting=setting))
    if not data.get("choices"):
        raise ServerError(f"{url} answered without choices: {str(data)[:200]}", "server", 200)
    return data


def validate(endpoint_url: str, api_key: str | None = None, model: str | None = None,
             seconds: float = VALIDATE_TIMEOUT) -> dict:
    """Check that the server is reachable, accepts the key and answers a one-token chat, and read
    its ``n_ctx`` (:func:`server_n_ctx`), all within ``seconds`` together.

    Returns:
        ``{"models": [...], "model": id the server answered with, "n_ctx": int or None}``.

    Raises:
        ServerError: with a one-line message (Docker hint for localhost URLs).
    """
    end = time.monotonic() + seconds
    models = list_models(endpoint_url, api_key, read_timeout=seconds)
    reply = chat_completion(endpoint_url, api_key, [{"role": "user", "content": "ping"}], model=model,
                            max_tokens=1, read_timeout=max(0.1, end - time.monotonic()), setting="")
    n_ctx = server_n_ctx(endpoint_url, api_key, min(PROBE_TIMEOUT, end - time.monotonic()))
    return {"models": models, "model": reply.get("model") or model or (models[0] if models else ""), "n_ctx": n_ctx}


def server_n_ctx(endpoint_url: str, api_key: str | None = None, seconds: float = PROBE_TIMEOUT) -> int | None:
    """The context size the server really runs with: ``n_ctx`` of ``GET /health`` (``steam-train
    serve``), else ``default_generation_settings.n_ctx`` of ``GET /props`` (llama.cpp's
    ``llama-server``), an int or whole-number text; ``None`` when the server reports neither (vLLM,
    Ollama) or cannot be asked within ``seconds`` (both requests together)."""
    end = time.monotonic() + seconds
    for path, keys in (("health", ("n_ctx",)), ("props", ("default_generation_settings", "n_ctx"))):
        left = end - time.monotonic()
        if left < 0.1:
            return None
        try:
            value: Any = _json(_request("GET", api_url(endpoint_url, path, root=True), api_key, read_timeout=left))
        except ServerError:
            continue
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        number = whole_number(value)
        if number is not None and number > 0:
            return number
    return None


def flatten_content(content: Any) -> Any:
    """Turn a list of text parts (``[{"type": "text", "text": ...}]``, what Dify and the OpenAI SDK
    send) into one string joined by newlines; keep lists holding images/audio and non-lists as they are.

    Why: chat templates written for string contents (Qwen's, in llama-cpp-python 0.3.36) crash on a
    list (HTTP 500); text-only servers lose nothing by the join.
    """
    if not isinstance(content, list):
        return content
    if all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return content


def prepare_messages(messages: Iterable[Mapping[str, Any]], system: str | None = None) -> list[dict]:
    """Copy OpenAI chat messages with flattened contents; prepend ``system`` when given and the
    conversation has no system turn (the persona switch of both plugins)."""
    out = []
    for m in messages:
        d = dict(m)
        if "content" in d:
            d["content"] = flatten_content(d["content"])
        out.append(d)
    if system and not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def render_chatml(messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
    """Render messages as ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``…), the template of
    Qwen2.5 and SmolLM2 (see their ``tokenizer_config.json`` ``chat_template``). Used to count a
    conversation's prompt tokens with the server's tokenizer; exact for ChatML models."""
    parts = []
    for m in messages:
        content = flatten_content(m.get("content"))
        if isinstance(content, list):  # images etc.: count the text only
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|im_start|>{m.get('role', 'user')}\n{content or ''}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def count_tokens(endpoint_url: str, api_key: str | None, text: str, model: str | None = None,
                 read_timeout: float = TOKENIZE_TIMEOUT) -> int | None:
    """Count ``text``'s tokens with the server's own tokenizer (llama_cpp.server ``POST
    /extras/tokenize``, special tokens parsed); ``None`` when the server has no such endpoint or
    cannot be reached (callers then estimate)."""
    try:
        url = api_url(endpoint_url, "extras/tokenize", root=True)
        body: dict[str, Any] = {"input": text}
        if model:
            body["model"] = model
        response = httpx.post(url, headers=headers(api_key, url), json=body,
                              timeout=httpx.Timeout(read_timeout, connect=min(CONNECT_TIMEOUT, read_timeout)))
        if response.status_code != 200:
            return None
        tokens = response.json().get("tokens")
        return len(tokens) if isinstance(tokens, list) else None
    except (httpx.HTTPError, ValueError, ServerError, AttributeError):
        return None


def count_chat_tokens(endpoint_url: str, api_key: str | None, messages: list[dict], model: str | None = None,
                      read_timeout: float = TOKENIZE_TIMEOUT) -> int | None:
    """Prompt tokens of a chat as ``steam-train serve`` will generate from it (``POST
    /extras/tokenize/chat``: its chat template, and its persona when the messages have no system
    turn); ``None`` when the server has no such endpoint (another OpenAI-compatible server) or
    cannot be reached."""
    try:
        body: dict[str, Any] = {"messages": messages}
        if model:
            body["model"] = model
        url = api_url(endpoint_url, "extras/tokenize/chat", root=True)
        response = httpx.post(url, headers=headers(api_key, url), json=body,
                              timeout=httpx.Timeout(read_timeout, connect=min(CONNECT_TIMEOUT, read_timeout)))
        if response.status_code != 200:
            return None
        count = response.json().get("count")
        return count if isinstance(count, int) else None
    except (httpx.HTTPError, ValueError, ServerError, AttributeError):
        return None


#: The pieces :func:`estimate_tokens` counts: ASCII letter runs, single digits, whitespace runs,
#: single ASCII punctuation/symbols, single non-ASCII characters.
_PIECE = re.compile(r"[A-Za-z]+|[0-9]|\s+|[\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]|[^\x00-\x7f]")


def estimate_tokens(text: str) -> int:
    """An estimate for when no tokenizer is at hand, meant to lean high, because Dify trims
    histories by it and too low a count ends in a context overflow. Byte-level BPEs (SmolLM2's,
    Qwen's) split digits one by one and rarely merge symbols, so it counts: a token per digit and
    per ASCII punctuation or symbol; a word of ASCII letters as one token per four letters (per two
    in an all-capitals word or one glued to a digit); a space only before anything but a letter (a BPE joins it to the next
    word), other whitespace one per line break and per four spaces; per non-ASCII character
    :func:`_non_ascii_tokens`.

    Measured (2026-12-07, tests: plugin/common/tests): 1.0-1.5× SmolLM2's count for English prose,
    code, JSON, URLs, digits and hex ids; for Chinese, against Qwen2.5's tokenizer (the persona's
    base, which merges common words), 1.16-1.49× over ten real reviews in a row, 1.02-1.97× for
    99 % of single ones (tests/test_token_estimate.py). SmolLM2's tokenizer, made for English,
    counts those reviews 2.6× Qwen2.5's count (1.75 tokens a character), about twice the estimate:
    :func:`scaled_estimate` raises it by what the server's own counts have shown.
    """
    n = 0.0
    for match in _PIECE.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isascii() and first.isalpha():
            glued = match.start() > 0 and text[match.start() - 1].isdigit()  # hex ids, "1440p"
            n += math.ceil(len(piece) / (2 if glued or (len(piece) > 1 and piece.isupper()) else 4))
        elif first.isspace():
            if piece == " ":
                after = text[match.end():match.end() + 1]
                n += 0 if after.isascii() and after.isalpha() else 1
            else:
                breaks = piece.count("\n")
                n += breaks + math.ceil((len(piece) - breaks) / 4)
        elif not first.isascii():
            n += _non_ascii_tokens(first)
        else:
            n += 1
    return math.ceil(n)


#: Per (endpoint URL, model name): the most a server's own prompt count (``usage.prompt_tokens``) exceeded
#: :func:`estimate_tokens` of the same prompt (:func:`learn_estimate_scale`); :func:`scaled_estimate` uses it.
_ESTIMATE_SCALE: dict[tuple[str, str], float] = {}
#: A prompt estimated below this many tokens teaches no scale: the server template's own tokens outweigh its text.
MIN_SCALE_TOKENS = 64
#: The largest scale learnt (SmolLM2's tokenizer, made for English, counts real Chinese reviews 1.4-2.5x the estimate).
MAX_ESTIMATE_SCALE = 4.0


def learn_estimate_scale(endpoint_url: str, model: str | None, estimated: int, counted: Any) -> None:
    """Note how much higher the server counted a prompt (``counted``, its ``usage.prompt_tokens``) than
    :func:`estimate_tokens` did (``estimated``): a server without a tokenize endpoint whose tokenizer splits a
    script finer than the estimate assumes (an English-first one on Chinese) gets later estimates raised by it."""
    if isinstance(counted, int) and estimated >= MIN_SCALE_TOKENS and counted > estimated:
        key = (endpoint_url, model or "")
        _ESTIMATE_SCALE[key] = min(MAX_ESTIMATE_SCALE, max(_ESTIMATE_SCALE.get(key, 1.0), counted / estimated))


def scaled_estimate(endpoint_url: str, model: str | None, estimated: int) -> int:
    """``estimated`` (:func:`estimate_tokens`) times what this server's counts have taught (:func:`learn_estimate_scale`;
    1 until one of its replies counted a prompt higher)."""
    return math.ceil(estimated * _ESTIMATE_SCALE.get((endpoint_url, model or ""), 1.0))


def _non_ascii_tokens(ch: str) -> float:
    """:func:`estimate_tokens`' weight of one non-ASCII character: four for an emoji or other
    character beyond the BMP, three for Hangul, 0.9 for another wide (CJK) character (Chinese,
    Japanese kana, ，。《》) and one for the rest (Cyrillic, Arabic, Thai …)."""
    if ord(ch) > 0xFFFF:
        return 4
    if 0xAC00 <= ord(ch) <= 0xD7A3:
        return 3
    return 0.9 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def completion_text(response: Mapping[str, Any]) -> str:
    """The assistant text of a non-streamed chat completion (``choices[0].message.content``)."""
    message = (response.get("choices") or [{}])[0].get("message") or {}
    return str(message.get("content") or "").strip()
