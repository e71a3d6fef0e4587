"""API key check: ``Authorization: Bearer KEY`` (OpenAI, Dify) or ``X-API-Key: KEY``.

Keys are compared as the raw header bytes with :func:`hmac.compare_digest` (constant time; the
library's own check uses ``==``), so that no header value, non-ASCII or control bytes included,
can fail in a decode or in ``compare_digest``'s refusal of non-ASCII ``str``: it is a 401 like any
wrong key. Keys are never logged.
"""

from __future__ import annotations

import hmac
import re

#: What a served key may hold: visible ASCII, as RFC 6750's bearer token (``b64token``) and the
#: HTTP clients that send headers as ASCII (httpx, hence the openai SDK) allow, without spaces.
KEY_CHARS = re.compile(r"[\x21-\x7e]+")


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries, as raw bytes from its ASGI headers, or ``None``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
        elif name == b"x-api-key":
            return value.strip()
    return None


def key_ok(presented: bytes | None, expected: str) -> bool:
    """Constant-time comparison (in the length of ``expected``) of a presented key with the served one."""
    return hmac.compare_digest(presented or b"", expected.encode("utf-8"))
