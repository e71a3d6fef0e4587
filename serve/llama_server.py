"""``--engine llama-server``: llama.cpp's own HTTP server as the generation engine behind our layer.

Why: llama-server serves several requests at once (one KV slot each, continuous batching) and keeps
each slot's prompt cache, which the embedded llama-cpp-python path (one sequence, one request at a
time) cannot. Everything clients see stays ours: the middleware checks and rewrites the request
(persona, limits, auth, OpenAI-shaped errors), the chat template is rendered and tokenized here
(:class:`steam_persona.serve.chat_handler.ChatHandler`: message contents as text, never as control
tokens), and llama-server receives only token ids and sampling values on its native
``POST /completion`` route, on loopback. Its answers are turned into OpenAI chat/completion objects by
:mod:`steam_persona.serve.upstream_routes`.

The binary is built by ``make llama-server`` (:mod:`steam_persona.serve.llama_server_build`) from the
llama.cpp tree vendored by the installed llama-cpp-python, so both engines run the same llama.cpp.

Native API used (llama.cpp ``tools/server/README.md``): request ``{"prompt": [token ids], "n_predict",
"stream": true, "cache_prompt": true, sampling fields}``; stream events ``data: {"content": str,
"stop": bool, ...}``, the last with ``"stop": true``, ``"stop_type"`` (``eos`` | ``word`` | ``limit`` |
``none``), ``"tokens_predicted"`` and ``"tokens_evaluated"``.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx

from steam_persona.common.arguments import LlamaCppArguments
from steam_persona.serve.errors import RETRY_AFTER_S, RequestError
from steam_persona.common.errors import UserError

logger = logging.getLogger("steam_persona.serve")

#: Environment variable naming a llama-server binary (the ``--llama_server`` flag wins).
BINARY_ENV = "STEAM_PERSONA_LLAMA_SERVER"
#: Request fields passed to llama-server under the same name (OpenAI / llama-cpp-python → llama.cpp).
_SAME_NAME = ("temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
              "repeat_penalty", "mirostat_tau", "mirostat_eta", "seed")
#: Seconds llama-server may take to load the model and answer ``/health`` with 200.
START_TIMEOUT_S = 300.0
#: Restarts of a llama-server that died, within :data:`RESTART_WINDOW_S`, before serve gives up.
MAX_RESTARTS = 5
#: Seconds over which deaths count towards :data:`MAX_RESTARTS`.
RESTART_WINDOW_S = 600.0
#: Seconds before the first restart; doubled for each further death within the window.
RESTART_BACKOFF_S = 1.0


def cache_root() -> Path:
    """``$STEAM_PERSONA_CACHE`` or ``~/.cache/steam-persona``."""
    return Path(os.environ.get("STEAM_PERSONA_CACHE") or Path.home() / ".cache" / "steam-persona")


def built_binary() -> Path:
    """Where ``make llama-server`` puts the binary for the installed llama-cpp-python version."""
    import llama_cpp

    return cache_root() / f"llama-server-{llama_cpp.__version__}" / "llama-server"


def find_binary(explicit: str | None) -> Path:
    """The llama-server to run: ``explicit``, else ``$STEAM_PERSONA_LLAMA_SERVER``, else the one
    ``make llama-server`` built for this llama-cpp-python, else ``llama-server`` on ``PATH``.

    Raises:
        UserError: none of them is an executable file (the message says how to build one).
    """
    named = explicit or os.environ.get(BINARY_ENV)
    candidates = [Path(named)] if named else [built_binary()]
    if not named and shutil.which("llama-server"):
        candidates.append(Path(shutil.which("llama-server")))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = f"{named} is not an executable file" if named else f"no llama-server at {built_binary()} or on PATH"
    raise UserError(f"serve --engine llama-server: {where}; build it once with `make llama-server` "
                    "(about 20 minutes on 2 cores) or pass --llama_server PATH")


def server_args(binary: Path, model: str, *, port: int, n_ctx: int, parallel: int, n_threads: int,
                n_gpu_layers: int, n_batch: int, flash_attn: bool) -> list[str]:
    """llama-server's command line: loopback only, ``parallel`` slots of ``n_ctx`` tokens each
    (``-c`` is the total), no web UI, continuous batching and prompt caching (its defaults), prompts
    evaluated ``n_batch`` tokens at a time (``-b``, its logical batch: a task cancelled because its
    client left stops at the next batch, not at the prompt's end). llama.cpp caps the physical batch
    (``-ub``, default 512) at ``-b`` (``llama_context``'s constructor), so it needs no flag of its own."""
    return [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", str(n_ctx * parallel),
            "-np", str(parallel), "-t", str(n_threads), "-tb", str(n_threads), "-ngl", str(n_gpu_layers),
            "-fa", "on" if flash_attn else "off", "-b", str(n_batch), "--no-webui"]


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(binary: Path, model: str, *, n_ctx: int, parallel: int, n_threads: int, n_gpu_layers: int,
           flash_attn: bool, n_batch: int = LlamaCppArguments.n_batch) -> "LlamaServer":
    """Start llama-server (:func:`server_args`) on a free loopback port, its log in the temp folder, and
    return it once the model is loaded (``n_batch`` unset: ``--n_batch``'s default, as serve starts it).

    Raises:
        UserError: it did not start (see :meth:`LlamaServer.start`).
    """
    port = free_loopback_port()
    args = server_args(binary, model, port=port, n_ctx=n_ctx, parallel=parallel, n_threads=n_threads,
                       n_gpu_layers=n_gpu_layers, n_batch=n_batch, flash_attn=flash_attn)
    server = LlamaServer(args, port, Path(tempfile.gettempdir()) / f"steam-persona-llama-server-{port}.log")
    server.start()
    return server


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``), so a
    killed ``steam-train serve`` leaves no llama-server holding the port and memory."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


class LlamaServer:
    """A llama-server child process on a loopback port, and an HTTP client for it.

    Args:
        args: its command line (:func:`server_args`); ``args`` names the port.
        port: that port.
        log_path: file that receives its stdout and stderr (shown when it fails to start).

    Attributes:
        speeds: tokens per second of recent generations as their clients saw them (queueing
            included), newest last; see :func:`steam_persona.serve.upstream_routes.generate`.
        gave_up: True once it died more than :data:`MAX_RESTARTS` times (see :meth:`supervise`).
    """

    def __init__(self, args: list[str], port: int, log_path: Path) -> None:
        self.args, self.base_url, self.log_path = args, f"http://127.0.0.1:{port}", log_path
        self.proc: subprocess.Popen | None = None
        self.client: httpx.AsyncClient | None = None
        self.speeds: collections.deque[float] = collections.deque(maxlen=16)
        self.gave_up = False
        self._starting = False

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the process and wait until its ``/health`` says the model is loaded.

        Raises:
            UserError: it exited or was not ready within ``timeout`` s (the message ends with the
                last lines of its log).
        """
        self._spawn()
        self._wait_ready(timeout)

    def _spawn(self) -> None:
        """Start the process. Call it from a thread that lives as long as the server: the
        parent-death signal (:func:`_die_with_parent`) fires when the thread that started it ends."""
        self._starting = True
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        log.close()

    def _wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the started process's ``/health`` says the model is loaded (raises as :meth:`start`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    if self.client is None:
                        self.client = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(None, connect=10),
                                                        limits=httpx.Limits(max_connections=None))
                    self._starting = False
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.close()
        raise UserError(f"llama-server did not start ({self._log_tail()}); its log: {self.log_path}")

    def _log_tail(self, lines: int = 5) -> str:
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
        return " | ".join(tail) or "no output"

    async def supervise(self, give_up: Callable[[], None], poll_s: float = 0.5) -> None:
        """Restart llama-server whenever it dies (killed, crashed), until the app shuts down.

        Each death is logged with its exit code or signal and the end of llama-server's log; the
        restart waits :data:`RESTART_BACKOFF_S`, doubled for each earlier death within
        :data:`RESTART_WINDOW_S` (requests meanwhile get 503 with ``Retry-After``). The death
        after :data:`MAX_RESTARTS` restarts in the window sets :attr:`gave_up` and calls
        ``give_up()`` (serve then exits non-zero, for a supervisor to restart it whole).
        """
        deaths: collections.deque[float] = collections.deque()
        while True:
            await asyncio.sleep(poll_s)
            if self.proc is None or self.proc.poll() is None:
                continue
            now = time.monotonic()
            deaths.append(now)
            while deaths[0] < now - RESTART_WINDOW_S:
                deaths.popleft()
            logger.error("llama-server %s (%s)", _how_it_ended(self.proc.returncode), self._log_tail(3))
            if len(deaths) > MAX_RESTARTS:
                logger.error("llama-server died %d times in %g s; giving up", len(deaths), RESTART_WINDOW_S)
                self.gave_up = True
                give_up()
                return
            await asyncio.sleep(RESTART_BACKOFF_S * 2 ** (len(deaths) - 1))
            try:
                self._spawn()  # on the event loop's thread, which lives as long as the server
                await asyncio.to_thread(self._wait_ready)
                logger.warning("llama-server restarted (%d restart(s) in the last %g s)", len(deaths), RESTART_WINDOW_S)
            except UserError as e:
                logger.error("%s", e)

    @property
    def alive(self) -> bool:
        """Running, with its model loaded."""
        return self.proc is not None and self.proc.poll() is None and not self._starting

    async def aclose(self) -> None:
        """Close the HTTP client and stop the process (the app's shutdown hook). Its log file goes with
        it, unless it died too often (:attr:`gave_up`): each death's end of log is in serve's log already."""
        if self.client is not None:
            await self.client.aclose()
        self.close()
        if not self.gave_up:
            self.log_path.unlink(missing_ok=True)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout`` s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /completion`` with ``body``, not streamed: the final event (``content``, ``stop_type``,
        ``tokens_predicted``, the generated ids as ``tokens`` …). Cancelling the awaiting task closes
        the connection; llama-server cancels the task once it notices, after a second in which no
        result of any task arrived (so not while another slot generates; :meth:`completion` is told sooner).

        Raises:
            RequestError: as :meth:`completion`.
        """
        assert self.client is not None, "start() first"
        if not self.alive:
            raise _unavailable()
        try:
            response = await self.client.post("/completion", json={**body, "stream": False, "return_tokens": True})
        except httpx.TransportError as e:
            logger.error("llama-server connection failed: %s", type(e).__name__)
            raise _unavailable() from None
        if response.status_code != 200:
            raise _refusal(response.status_code, response.content)
        return response.json()

    async def completion(self, body: dict[str, Any], should_stop: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``POST /completion`` with ``body``; yield its events (dicts) until the one with
        ``"stop": true``. When ``should_stop()`` turns true between events the connection is closed,
        which makes llama-server cancel the task at its next event.

        While the prompt is evaluated llama-server sends a progress event after each batch
        (``return_progress``); they are not yielded, but ``should_stop()`` is asked after them, and
        llama-server's write of the next one to a closed connection cancels the task. (Without them it
        notices a closed connection only after a second in which no result of any task arrived:
        never while another slot generates.)

        Raises:
            RequestError: 503 ``engine_unavailable`` when llama-server is gone or refuses the
                connection; 400 with its message when it refuses the request.
        """
        assert self.client is not None, "start() first"
        if not self.alive:
            raise _unavailable()
        try:
            async with self.client.stream("POST", "/completion",
                                          json={**body, "stream": True, "return_progress": True}) as response:
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise _refusal(400, line[6:].encode())
                    if "prompt_progress" not in event:
                        yield event
                    if event.get("stop") or should_stop():
                        return
        except httpx.TransportError as e:
            logger.error("llama-server connection failed: %s", type(e).__name__)
            raise _unavailable() from None


def _unavailable() -> RequestError:
    return RequestError("The generation engine (llama-server) is not reachable (it is restarted when it dies); "
                        "the server's log says why", status=503, type="server_error", code="engine_unavailable",
                        headers={"Retry-After": str(RETRY_AFTER_S)})


def _how_it_ended(returncode: int) -> str:
    """``"exited with code 3"`` or ``"was killed by signal SIGKILL"`` (``Popen.returncode`` < 0: a signal)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"was killed by signal {name}"


def _refusal(status: int, raw: bytes) -> RequestError:
    """Our error for a non-200 answer of llama-server (its message, never a path or prompt of ours)."""
    try:
        message = json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", errors="replace")
    if status >= 500:
        return RequestError(f"llama-server failed on this request: {message[:200]}", status=502,
                            type="server_error", code="engine_error")
    return RequestError(f"llama-server refused the request: {message[:200]}", code="invalid_value")


def native_body(tokens: list[int], body: Any, logit_bias: dict[int, float] | None, grammar: str | None) -> dict[str, Any]:
    """llama-server ``/completion`` fields for a checked request model (the library's
    ``CreateChatCompletionRequest`` / ``CreateCompletionRequest``, defaults filled in by it, so both
    engines sample with the same values).

    Args:
        tokens: the prompt's token ids (BOS included when the model wants one).
        body: the request model; ``max_tokens`` was set by the middleware (capped, never ≤ 0).
        logit_bias: token id → bias, or ``None``.
        grammar: a GBNF grammar (the request's, or one for its ``response_format``), or ``None``.
    """
    # a seeded request is evaluated afresh: a prompt partly served from the cache gives logits that
    # differ in the last bits, and the same seed sampled another reply
    out: dict[str, Any] = {"prompt": tokens, "n_predict": body.max_tokens, "cache_prompt": body.seed is None,
                           "stop": _stops(body.stop)}
    for name in _SAME_NAME:
        value = getattr(body, name, None)
        if value is not None:
            out[name] = value
    if getattr(body, "mirostat_mode", 0):
        out["mirostat"] = body.mirostat_mode
    if logit_bias:
        out["logit_bias"] = [[token, bias] for token, bias in logit_bias.items()]
    if grammar:
        out["grammar"] = grammar
    return out


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
