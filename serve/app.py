"""Build the served app: a model loaded by llama-cpp-python from its settings objects, our routes
(:mod:`steam_persona.serve.routes`) and our middleware around them (see :mod:`serve`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from steam_persona.serve import chat_handler, errors, health, routes
from steam_persona.serve.access_log import AccessLog
from steam_persona.serve.cors import OpenAICORSMiddleware
from steam_persona.serve.engine import Worker
from steam_persona.serve.grammar import GrammarChecker
from steam_persona.serve.llama_server import LlamaServer, launch
from steam_persona.serve.middleware import SteamMiddleware
from steam_persona.serve.routes import Served
from steam_persona.serve.modelinfo import ModelInfo
from steam_persona.serve.request_id import RequestIdMiddleware
from steam_persona.serve.target import AbsoluteFormMiddleware
from steam_persona.common.arguments import LlamaCppArguments
from steam_persona.common.atomic import JsonlLog


@dataclass(frozen=True)
class AppOptions:
    """Resolved serving options (what :mod:`steam_persona.serve.cli` derived from ``ServeConfig``).

    Attributes:
        alias: model id in ``/v1/models`` and responses.
        n_ctx: context size in tokens.
        n_threads: CPU threads for decoding and prompt processing.
        n_gpu_layers: layers to offload (-1 = all; ignored by a CPU build).
        n_batch: prompt tokens evaluated per batch, on either engine (llama.cpp's ``n_batch``); a
            client that leaves during its prompt frees the engine after at most one batch.
        api_key: required key, or ``None``.
        persona: persona system prompt or ``None``; persona_source says where it came from.
        persona_mode: ``"replace"`` or ``"prepend"``.
        verbose: llama.cpp's own logging (load details, timings).
        log_file: JSON-lines request log path, or ``None``.
        flash_attn: llama.cpp's flash attention.
        max_request_bytes: largest request body accepted (413 above).
        read_timeout: seconds a request body may take to arrive (408 above).
        max_tokens_cap: most tokens one request may generate (also the chat default).
        request_timeout: seconds one generation may run.
        check_budget: seconds a request's checks may take (413 above).
        cors_origins: origins allowed by CORS; empty = no CORS headers at all.
        loopback_bind: the server listens on a loopback address (without ``api_key``, other ``Host`` names are refused).
        engine: ``"llama-cpp-python"`` (embedded) or ``"llama-server"``.
        parallel: llama-server slots (requests generated at once); engine llama-server only.
        llama_server: the llama-server binary; engine llama-server only.
    """

    alias: str
    n_ctx: int
    n_threads: int
    n_gpu_layers: int = -1
    n_batch: int = LlamaCppArguments.n_batch
    api_key: str | None = None
    persona: str | None = None
    persona_source: str = "none"
    persona_mode: str = "replace"
    verbose: bool = False
    log_file: str | None = None
    flash_attn: bool = False
    max_request_bytes: int = 2**20
    read_timeout: float = 30.0
    max_tokens_cap: int = 1024
    request_timeout: float = 300.0
    check_budget: float = 10.0
    cors_origins: tuple[str, ...] = ()
    loopback_bind: bool = True
    engine: str = "llama-cpp-python"
    parallel: int = 1
    llama_server: str | None = None


def build_app(info: ModelInfo, opts: AppOptions) -> FastAPI:
    """Load the model and return the ASGI app (blocking: loading takes seconds for big models).

    The model is loaded by the library (``LlamaProxy.load_llama_from_model_settings`` from its
    ``ModelSettings``, so flags keep its names) with its defaults fixed where they break clients:
    ``n_ctx`` from :func:`steam_persona.serve.modelinfo.choose_n_ctx` (not 2048), the GGUF's chat template, and
    ``logits_all=False`` (True keeps an ``n_ctx × n_vocab`` float array: 1.6 GB for SmolLM2 at 8k).
    The routes are ours (:mod:`steam_persona.serve.routes`); CORS is off unless ``opts.cors_origins`` lists origins;
    every response carries an ``x-request-id`` (:mod:`steam_persona.serve.request_id`).
    With ``opts.engine == "llama-server"`` llama-server is started first and generates; this process
    loads the vocabulary only (:mod:`steam_persona.serve.llama_server`).

    Raises:
        ValueError: llama.cpp cannot load the model.
        UserError: llama-server did not start.
    """
    from llama_cpp._utils import suppress_stdout_stderr
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings

    upstream = _upstream(info, opts)
    # with llama-server generating, this process needs the vocabulary only (template, token counts)
    model = ModelSettings(
        model=str(info.path), model_alias=opts.alias, n_ctx=opts.n_ctx, n_threads=opts.n_threads,
        n_threads_batch=opts.n_threads, n_gpu_layers=opts.n_gpu_layers, n_batch=opts.n_batch,
        chat_format="chat_template.default", logits_all=False, flash_attn=opts.flash_attn, verbose=opts.verbose,
        vocab_only=upstream is not None)
    try:
        # a vocabulary-only context has no training context, and llama.cpp warns about it whatever
        # `verbose` says: quiet it the way the library quiets its own loading
        with suppress_stdout_stderr(disable=opts.verbose or upstream is None):
            llama = LlamaProxy.load_llama_from_model_settings(model)
    except BaseException:
        if upstream is not None:
            upstream.close()
        raise
    grammars = GrammarChecker(str(info.path))
    handler = chat_handler.install(llama, info.chat_template or "", grammars)
    served = Served(llama=llama, handler=handler, grammars=grammars, generate=Worker("llama-generate"),
                    checks=Worker("llama-checks"), alias=opts.alias,
                    n_ctx=opts.n_ctx if upstream is not None else llama.n_ctx(),
                    request_timeout=opts.request_timeout, check_budget=opts.check_budget, upstream=upstream)
    app = FastAPI(title="steam-persona (llama-cpp-python)", version=llama_cpp_version(), redirect_slashes=False)
    app.state.served = served
    app.include_router(routes.router)
    routes.install_schemas(app)
    errors.install(app)
    health.install(app, alias=opts.alias, n_ctx=served.n_ctx, n_ctx_train=info.n_ctx_train,
                   persona_source=opts.persona_source, engine=opts.engine,
                   alive=(lambda: upstream.alive) if upstream is not None else (lambda: True))
    if upstream is not None:
        _supervise(app, upstream)
    _install_middleware(app, served, opts)
    return app


#: request headers browsers may send (Content-Type and the other CORS-safelisted ones starlette adds itself): the
#: key, the request id, and what OpenAI's SDKs send (openai-python / openai-node: OpenAI-Organization/-Project/-Beta,
#: Idempotency-Key on every POST; their X-Stainless-* headers are allowed by prefix, see :mod:`steam_persona.serve.cors`)
CORS_HEADERS = ["authorization", "x-api-key", "x-request-id", "openai-organization", "openai-project", "openai-beta",
                "idempotency-key"]


def _install_middleware(app: FastAPI, served: Served, opts: AppOptions) -> None:
    """Ours (auth, limits, persona), CORS when origins are listed, the access log (outside CORS:
    preflights get rows), the request id around them and the absolute-form rewrite outermost. The log
    is ``app.state.request_log`` (``None`` without ``--log_file``) for the HTTP protocol's own answers."""
    log = app.state.request_log = JsonlLog(opts.log_file) if opts.log_file else None
    app.add_middleware(SteamMiddleware, served=served, api_key=opts.api_key, persona=opts.persona,
                       persona_mode=opts.persona_mode, max_request_bytes=opts.max_request_bytes,
                       max_tokens_cap=opts.max_tokens_cap, read_timeout=opts.read_timeout,
                       cors_origins=opts.cors_origins, loopback_bind=opts.loopback_bind)
    if opts.cors_origins:
        # no credentials: clients authenticate with a header, and never "*" together with credentials;
        # Chrome's Private Network Access preflight (a public page calling 127.0.0.1) is granted to listed origins
        app.add_middleware(OpenAICORSMiddleware, allow_origins=list(opts.cors_origins), allow_credentials=False,
                           allow_private_network=True, allow_methods=["GET", "POST"], expose_headers=["x-request-id"],
                           allow_headers=CORS_HEADERS)
    if log is not None:
        app.add_middleware(AccessLog, log=log)
    app.add_middleware(RequestIdMiddleware)  # added late: outside the others, so that every answer carries the id
    app.add_middleware(AbsoluteFormMiddleware)  # the outermost: every other layer sees the origin-form path


def _supervise(app: FastAPI, upstream: LlamaServer) -> None:
    """Restart llama-server when it dies while the app runs (:meth:`LlamaServer.supervise`), stop it
    at shutdown. When it keeps dying, ``app.state.stop_serving()`` is called (the CLI sets it to end
    uvicorn; serve then exits 1)."""
    app.state.stop_serving = lambda: None
    tasks: list[asyncio.Task] = []

    async def startup() -> None:
        tasks.append(asyncio.create_task(upstream.supervise(lambda: app.state.stop_serving())))

    async def shutdown() -> None:
        for task in tasks:  # first, so that stopping llama-server is not taken for a death
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.aclose()
    app.router.on_startup.append(startup)
    app.router.on_shutdown.append(shutdown)


def _upstream(info: ModelInfo, opts: AppOptions) -> LlamaServer | None:
    """llama-server with ``opts.parallel`` slots of ``opts.n_ctx`` for ``--engine llama-server``, else ``None``."""
    if opts.engine != "llama-server":
        return None
    return launch(Path(opts.llama_server or ""), str(info.path), n_ctx=opts.n_ctx, parallel=opts.parallel,
                  n_threads=opts.n_threads, n_gpu_layers=opts.n_gpu_layers, n_batch=opts.n_batch,
                  flash_attn=opts.flash_attn)


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__
