"""What keeps web pages out of a server that checks no key (no ``--api_key``).

A page on any site can make a browser send a "simple" cross-site POST (``text/plain`` body, no
preflight) to ``127.0.0.1``, and, once its own host name resolves to ``127.0.0.1`` (DNS rebinding),
read the answers as same-origin. As Ollama and Jupyter do, a keyless server therefore refuses, before
any work, with an OpenAI-shaped 403:

- a request whose ``Origin`` is neither one of ``--cors_origins`` (``*``: any) nor the server's own
  (``http://`` + a loopback name + the port it listens on, or ``http://`` + the request's ``Host``, as
  Swagger at ``/docs`` sends);
- on a loopback bind, a ``Host`` that is not a loopback name (``localhost``, ``*.localhost``,
  127.0.0.0/8, also in the legacy forms ``inet_aton`` reads, such as ``127.1`` or ``2130706433``,
  ``[::1]``, with or without a port). A request without ``Host`` (HTTP/1.0) passes:
  browsers always send one.

With ``--api_key`` none of this applies: a page cannot know the key.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import urlsplit

#: The error code of a request refused for its ``Origin`` (as a refused CORS preflight).
ORIGIN_REFUSED = "cors_not_allowed"
#: The error code of a request refused for its ``Host``.
HOST_REFUSED = "host_not_allowed"
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: What ``inet_aton`` may read as an IPv4 address: glibc's also ignores whatever follows a space
#: (``"127.1 evil"`` is 127.0.0.1 to it), so only these characters reach it.
_AT0N_CHARS = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, bracketed or not), the
    IPv4 ones also in the legacy forms that ``socket.inet_aton`` (and so a bind or a connect) reads:
    ``127.1``, ``127.0.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not _AT0N_CHARS.fullmatch(host):
        return False
    try:
        return socket.inet_aton(host)[0] == 127
    except OSError:
        return False


def is_loopback_name(host: str) -> bool:
    """`is_loopback`, or a name under ``.localhost`` (which resolves to loopback, RFC 6761)."""
    host = host.lower().rstrip(".")
    return host.endswith(".localhost") or is_loopback(host)


def origin_key(origin: str) -> str:
    """``origin`` as it is compared with ``--cors_origins`` (by this guard and by CORS alike): lower
    case, without a trailing ``/``. Browsers serialise origins in lower case, and a scheme or host
    matches case-insensitively (RFC 6454, 5), so ``http://LOCALHOST:3000`` is ``http://localhost:3000``."""
    return origin.lower().rstrip("/")


def _host_name(value: str) -> str:
    """The name of a ``Host`` header value, without its port (``[::1]:8000`` → ``[::1]``)."""
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _own_origin(origin: str, port: int | None, host: str | None) -> bool:
    """Whether ``origin`` is this server's: ``http://`` + a loopback name + the port it listens on, or
    ``http://`` + the request's ``Host`` (a page this server sent, e.g. /docs on an ``--insecure`` server
    reached by its network address; on a loopback bind ``Host`` is a loopback name already)."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    if parts.scheme != "http":
        return False
    return (is_loopback_name(parts.hostname or "") and origin_port == port
            or host is not None and parts.netloc == host.strip().lower())


def check_local(scope: dict[str, Any], cors_origins: tuple[str, ...], loopback_bind: bool) -> None:
    """Refuse a keyless server's request from a web page that is not allowed (see the module).

    Raises:
        RequestError: 403 ``cors_not_allowed`` (a foreign ``Origin``) or ``host_not_allowed`` (a
            ``Host`` that is no loopback name, on a loopback bind); each message says what to do.
    """
    from steam_persona.serve.errors import RequestError  # FastAPI's import: not at `serve`'s start (cli imports is_loopback)

    headers = {name: value.decode("latin-1") for name, value in scope["headers"] if name in (b"origin", b"host")}
    host, origin = headers.get(b"host"), headers.get(b"origin")
    if loopback_bind and host is not None and not is_loopback_name(_host_name(host.strip())):
        raise RequestError(f"Host '{host}' is not a loopback name; this server checks no API key, so it answers only "
                           "requests addressed to localhost, 127.0.0.1 or [::1] (start it with --api_key KEY to be "
                           "reached by another name, e.g. behind a reverse proxy)", status=403, code=HOST_REFUSED)
    if origin is None or "*" in cors_origins or origin_key(origin) in cors_origins:
        return
    if not _own_origin(origin.lower(), (scope.get("server") or (None, None))[1], host):
        raise RequestError(f"Requests from web pages at {origin} are refused: this server checks no API key, so it "
                           "answers pages only from the origins given by its --cors_origins (or start it with "
                           "--api_key KEY)", status=403, code=ORIGIN_REFUSED)
