"""Build the served app: llama-cpp-python's own FastAPI app, created in-process from its settings
objects, with our pieces around it (see :mod:`serve`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastapi import FastAPI

from serve import chat_handler, errors, health
from serve.middleware import SteamMiddleware
from serve.modelinfo import ModelInfo
from trainer.io import JsonlLog


@dataclass(frozen=True)
class AppOptions:
    """Resolved serving options (what :mod:`serve.cli` derived from ``ServeConfig``).

    Attributes:
        alias: model id in ``/v1/models`` and responses.
        n_ctx: context size in tokens.
        n_threads: CPU threads for decoding and prompt processing.
        n_gpu_layers: layers to offload (-1 = all; ignored by a CPU build).
        api_key: required key, or ``None``.
        persona: persona system prompt or ``None``; persona_source says where it came from.
        persona_mode: ``"replace"`` or ``"prepend"``.
        verbose: llama.cpp's own logging (load details, timings).
        log_file: JSON-lines request log path, or ``None``.
    """

    alias: str
    n_ctx: int
    n_threads: int
    n_gpu_layers: int = -1
    api_key: str | None = None
    persona: str | None = None
    persona_source: str = "none"
    persona_mode: str = "replace"
    verbose: bool = False
    log_file: str | None = None


def build_app(info: ModelInfo, opts: AppOptions) -> FastAPI:
    """Load the model and return the ASGI app (blocking: loading takes seconds for big models).

    The library's settings are fixed where its defaults break clients: ``interrupt_requests=False``
    (a second request must queue, not cut a running stream off), ``n_ctx`` from
    :func:`serve.modelinfo.choose_n_ctx` (not 2048), the GGUF's chat template, and
    ``logits_all=False`` (True keeps an ``n_ctx × n_vocab`` float array: 1.6 GB for SmolLM2 at 8k).
    Auth is ours (constant time), so the library's ``api_key`` stays unset.

    Raises:
        ValueError: llama.cpp cannot load the model.
    """
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    server = ServerSettings(host="127.0.0.1", api_key=None, interrupt_requests=False)
    model = ModelSettings(
        model=str(info.path), model_alias=opts.alias, n_ctx=opts.n_ctx, n_threads=opts.n_threads,
        n_threads_batch=opts.n_threads, n_gpu_layers=opts.n_gpu_layers, chat_format="chat_template.default",
        logits_all=False, verbose=opts.verbose)
    # create_app would replace our settings with a file named by $CONFIG_FILE; ours are the CLI's.
    saved = os.environ.pop("CONFIG_FILE", None)
    try:
        app = server_app.create_app(server_settings=server, model_settings=[model])
    finally:
        if saved is not None:
            os.environ["CONFIG_FILE"] = saved
    # The library keeps the loaded model in a module global and offers no accessor.
    llama = server_app._llama_proxy(opts.alias)
    handler = chat_handler.install(llama, info.chat_template or "")
    errors.install(app)
    health.install(app, alias=opts.alias, n_ctx=llama.n_ctx(), n_ctx_train=info.n_ctx_train,
                   persona_source=opts.persona_source)
    log = JsonlLog(opts.log_file) if opts.log_file else None
    app.add_middleware(SteamMiddleware, api_key=opts.api_key, persona=opts.persona, persona_mode=opts.persona_mode,
                       handler=handler, n_ctx=llama.n_ctx(), alias=opts.alias, log=log)
    return app
