"""``GET /health``: is the model loaded, under which alias, with what context (for Docker
HEALTHCHECK and Dify). Served without an API key; it reveals no prompt and no key."""

from __future__ import annotations

import time
from typing import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse


def install(app: FastAPI, *, alias: str, n_ctx: int, n_ctx_train: int, persona_source: str, engine: str,
            alive: Callable[[], bool] = lambda: True) -> None:
    """Add ``GET /health`` (and ``HEAD``, what ``wget --spider`` health checks send) to ``app``.

    Response: ``{"status": "ok", "model_loaded": true, "model": alias, "n_ctx": int,
    "n_ctx_train": int, "persona_source": str, "engine": str, "uptime_s": float}`` with 200, or
    ``"status": "error"``, ``"model_loaded": false`` with 503 once ``alive()`` is false (the
    llama-server engine process has died).
    """
    started = time.monotonic()

    @app.api_route("/health", methods=["GET", "HEAD"], tags=["Health"], summary="Health check")
    async def health() -> JSONResponse:
        ok = alive()
        return JSONResponse({"status": "ok" if ok else "error", "model_loaded": ok, "model": alias, "n_ctx": n_ctx,
                             "n_ctx_train": n_ctx_train, "persona_source": persona_source, "engine": engine,
                             "uptime_s": round(time.monotonic() - started, 3)}, status_code=200 if ok else 503)
