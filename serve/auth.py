"""API key check: ``Authorization: Bearer KEY`` (OpenAI, Dify) or ``X-API-Key: KEY``.

Keys are compared with :func:`hmac.compare_digest` (constant time; the library's own check uses
``==``), and never logged.
"""

from __future__ import annotations

import hmac


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, from its raw ASGI headers, or ``None``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def key_ok(presented: str | None, expected: str) -> bool:
    """Constant-time comparison (in the length of ``expected``) of two keys."""
    return hmac.compare_digest((presented or "").encode("utf-8"), expected.encode("utf-8"))
