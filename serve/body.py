"""Reading a request body with limits: size, time, and ``Content-Encoding``.

uvicorn hands the body to the app as it arrives and puts no limit on how long that takes: a client
that declares a ``Content-Length`` and then trickles (or never sends) the bytes held its connection
and its coroutine open for ever, and enough of them exhaust the server's file descriptors (the
slow-loris attack). Compressed bodies (``Content-Encoding: gzip``, what some HTTP clients send)
arrived as undecodable JSON. Here the whole body must arrive within a time limit, and gzip /
deflate bodies are inflated with the size limit applied to the inflated bytes (a "zip bomb" stops at
the limit). Encoding names: RFC 9110 §8.4.1 (``deflate`` is the zlib format; ``x-gzip`` = ``gzip``).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Awaitable, Callable

from steam_persona.serve.errors import RequestError

Receive = Callable[[], Awaitable[dict[str, Any]]]
#: zlib ``wbits`` that accepts both the gzip and the zlib header.
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS


class ClientGone(Exception):
    """The client closed its connection before its request body ended: there is nothing to answer."""


async def read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int, timeout: float) -> bytes:
    """The request body, inflated when it came gzip- or deflate-encoded.

    Args:
        receive: the request's ASGI receive.
        headers: its raw ASGI headers.
        limit: most bytes the (inflated) body may have.
        timeout: seconds the whole body may take to arrive.

    Raises:
        ClientGone: the client closed the connection before the body's end.
        RequestError: 413 ``request_too_large`` as soon as the body, its declared ``Content-Length``
            or its inflated bytes exceed ``limit``; 408 ``request_timeout`` when it has not arrived
            within ``timeout``; 415 ``unsupported_content_encoding`` for an encoding other than
            gzip, deflate and identity; 400 ``invalid_encoding`` for bytes that do not inflate.
    """
    too_large = RequestError(f"The request body is larger than this server's limit of {limit} bytes "
                             "(--max_request_bytes); send a shorter request", status=413, code="request_too_large")
    inflate = _inflater(headers)
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large
    try:
        async with asyncio.timeout(timeout):
            return await _receive(receive, limit, inflate, too_large)
    except TimeoutError:
        raise RequestError(f"The request body did not arrive within {timeout:g} s (--read_timeout); send it "
                           "at once", status=408, code="request_timeout") from None


async def _receive(receive: Receive, limit: int, inflate: Any, too_large: RequestError) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if inflate is not None:
            chunk = _inflated(inflate, chunk, limit - size, too_large)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body"):
            if inflate is not None and not inflate.eof:
                raise _bad_encoding("it ends before the compressed stream does")
            break
    return b"".join(chunks)


def declared_charset(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``charset`` parameter of the request's ``Content-Type`` (``"latin-1"``), lower-cased, or ``None``."""
    for name, value in headers:
        if name == b"content-type":
            for param in value.decode("latin-1").split(";")[1:]:
                key, _, charset = param.partition("=")
                if key.strip().lower() == "charset" and charset.strip().strip('"'):
                    return charset.strip().strip('"').lower()
    return None


def _inflater(headers: list[tuple[bytes, bytes]]) -> Any:
    """A zlib decompressor for the body's ``Content-Encoding``, or ``None`` for none / identity."""
    codings = [c.strip().lower() for name, value in headers if name == b"content-encoding"
               for c in value.decode("latin-1").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(_GZIP_OR_ZLIB)
    raise RequestError(f"Content-Encoding {', '.join(codings)[:40]!r} is not supported; send the body "
                       "uncompressed, gzip or deflate", status=415, code="unsupported_content_encoding")


def _inflated(inflate: Any, chunk: bytes, room: int, too_large: RequestError) -> bytes:
    """``chunk`` inflated, at most ``room + 1`` bytes (more raises ``too_large``)."""
    try:
        out = inflate.decompress(chunk, room + 1)
    except zlib.error:
        raise _bad_encoding("it is not gzip or zlib data") from None
    if inflate.unconsumed_tail:
        raise too_large
    if inflate.eof and inflate.unused_data:
        raise _bad_encoding("bytes follow the end of the compressed stream")
    return out


def _bad_encoding(why: str) -> RequestError:
    return RequestError(f"The request body does not match its Content-Encoding ({why})", code="invalid_encoding")
