"""``GET /health``: is the model loaded, under which alias, with what context (for Docker
HEALTHCHECK and Dify). Served without an API key; it reveals no prompt and no key."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI


def install(app: FastAPI, *, alias: str, n_ctx: int, n_ctx_train: int, persona_source: str) -> None:
    """Add ``GET /health`` to ``app``.

    Response (200): ``{"status": "ok", "model_loaded": true, "model": alias, "n_ctx": int,
    "n_ctx_train": int, "persona_source": str, "uptime_s": float}``.
    """
    started = time.monotonic()

    @app.get("/health", tags=["Health"], summary="Health check")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": True, "model": alias, "n_ctx": n_ctx, "n_ctx_train": n_ctx_train,
                "persona_source": persona_source, "uptime_s": round(time.monotonic() - started, 3)}
