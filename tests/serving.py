"""Test helper: run ``steam-train serve`` as a real subprocess on a free port.

Usage (other test modules import it)::

    from tests.serving import serve_process

    with serve_process(gguf_or_export_dir, api_key="k", extra_args=("--system", "...")) as base_url:
        httpx.get(f"{base_url}/health")            # base_url = "http://127.0.0.1:PORT" (no /v1)
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="k")

On exit the server gets SIGTERM (then SIGKILL after ``stop_timeout`` s). If it dies or is not
healthy within ``start_timeout`` s, :class:`ServerFailed` carries the tail of its output.
"""

from __future__ import annotations

import contextlib
import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx

REPO = Path(__file__).resolve().parents[1]


class ServerFailed(RuntimeError):
    """The server process exited or never became healthy."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (a bind succeeds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class ServerProcess:
    """A running server: ``base_url``, ``port``, the ``proc`` (``subprocess.Popen``) and its ``log`` path."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base_url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@contextlib.contextmanager
def start_server(model: str | os.PathLike, api_key: str | None = None, extra_args: Sequence[str] = (),
                 start_timeout: float = 120.0, stop_timeout: float = 20.0,
                 env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Like :func:`serve_process` but yields the :class:`ServerProcess` (for tests that signal it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "steam_persona", "serve", str(model), "--port", str(port), *map(str, extra_args)]
    if api_key is not None:
        cmd += ["--api_key", api_key]
    fd, log_name = tempfile.mkstemp(prefix=f"serve-{port}-", suffix=".log")
    log = Path(log_name)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **(env or {})}
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = ServerProcess(proc, port, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"server exited with {proc.returncode}:\n{server.output()[-3000:]}")
            try:
                if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"server not healthy after {start_timeout} s:\n{server.output()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop(stop_timeout)
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def serve_process(model: str | os.PathLike, api_key: str | None = None, extra_args: Sequence[str] = (),
                  start_timeout: float = 120.0) -> Iterator[str]:
    """Run ``steam-train serve MODEL --port <free> [--api_key KEY] *extra_args`` and yield its base URL.

    Args:
        model: an export dir or a ``.gguf`` file.
        api_key: passed as ``--api_key`` when given.
        extra_args: more CLI flags, e.g. ``("--system", "You are …", "--n_ctx", "2048")``.
        start_timeout: seconds to wait for ``GET /health`` to answer 200.

    Yields:
        ``"http://127.0.0.1:PORT"`` (append ``/v1`` for OpenAI clients).

    Raises:
        ServerFailed: the process exited early or never became healthy (message has its output).
    """
    with start_server(model, api_key, extra_args, start_timeout) as server:
        yield server.base_url


def log_rows(log: Path, ids: list[str], timeout: float = 10.0) -> list[dict | None]:
    """The ``--log_file`` rows of these request ids, None for one not written within `timeout` s (a row is
    written once its response ended)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {r.get("request_id"): r for r in map(json.loads, Path(log).read_text(encoding="utf-8").splitlines())}
        if set(ids) <= set(rows) or time.monotonic() > deadline:
            return [rows.get(i) for i in ids]
        time.sleep(0.05)


def send_and_leave(base_url: str, headers: dict[str, str], body: dict, request_id: str, wait: float) -> None:
    """POST ``body`` to /v1/chat/completions over a raw socket and close it ``wait`` s later, unread."""
    raw = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", int(base_url.rsplit(":", 1)[1]))) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}X-Request-Id: {request_id}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw)
        time.sleep(wait)


def long_chat(word: str, words: int, **fields: Any) -> dict:
    """A chat body whose prompt is ``word`` then "apple banana cherry" ``words`` times (a token a word),
    asking for one token. Each ``word`` makes a prompt that reuses no other's cached start."""
    return {"messages": [{"role": "user", "content": word + " apple banana cherry" * words}], "max_tokens": 1,
            "temperature": 0, **fields}


def whole_prompt_seconds(base_url: str, headers: dict[str, str], words: int) -> float:
    """Seconds a :func:`long_chat` request takes, its prompt evaluated whole."""
    t = time.perf_counter()
    r = httpx.post(f"{base_url}/v1/chat/completions", json=long_chat("whole", words), headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t


def leave_during_prompts(base_url: str, headers: dict[str, str], words: int,
                         settle: Callable[[], None] = lambda: None) -> list[float]:
    """A non-streamed and a streamed :func:`long_chat` request whose clients leave 0.3 s after sending
    (ids ``left-prompt`` and ``left-prompt-stream``), each followed by ``settle()`` and a one-token
    request. Returns the seconds from each leaving to the one-token request's answer."""
    after = []
    for rid, stream in (("left-prompt", False), ("left-prompt-stream", True)):
        send_and_leave(base_url, headers, long_chat(rid, words, stream=stream), rid, 0.3)
        t = time.perf_counter()
        settle()
        r = httpx.post(f"{base_url}/v1/chat/completions", headers=headers, timeout=120,
                       json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1})
        assert r.status_code == 200, r.text
        after.append(time.perf_counter() - t)
    return after


def leave_streams(base_url: str, headers: dict[str, str], body: dict) -> list[str]:
    """Three streamed chat requests whose clients leave: after two content chunks (``left-chunks``), once
    the stream runs without reading any of it (``left-unread``), and at once after sending
    (``left-at-once``). Returns the ids."""
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60,
                      headers={**headers, "X-Request-Id": "left-chunks"}) as r:
        seen = 0
        for line in r.iter_lines():
            seen += '"content"' in line
            if seen == 2:
                break
    for rid, wait in (("left-unread", 1.0), ("left-at-once", 0)):
        send_and_leave(base_url, headers, {**body, "stream": True}, rid, wait)
    return ["left-chunks", "left-unread", "left-at-once"]


#: A chat whose reply SmolLM2 writes as emoji, each of them 3 byte tokens (a ``max_tokens`` cut may fall inside one).
EMOJI = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
         {"role": "user", "content": "Reply only with emojis: a starry night"}]


def text_reply(client: httpx.Client, path: str, body: dict, stream: bool) -> tuple[str, str, int]:
    """(text, finish_reason, usage.completion_tokens) of one chat or completion request, streamed or not
    (a stream asks for its usage chunk and must have exactly one ``finish_reason``)."""
    if not stream:
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        choice, usage = r.json()["choices"][0], r.json()["usage"]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        return text, choice["finish_reason"], usage["completion_tokens"]
    with client.stream("POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    choices = [c["choices"][0] for c in chunks[:-1]]
    text = "".join(c["delta"].get("content") or "" if "delta" in c else c["text"] for c in choices)
    (finish,) = [c["finish_reason"] for c in choices if c["finish_reason"]]
    return text, finish, chunks[-1]["usage"]["completion_tokens"]


#: HTTP/2's connection preface, then an empty SETTINGS frame (what ``curl --http2-prior-knowledge`` sends first).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def send_raw(base_url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection and return all the server answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", int(base_url.rsplit(":", 1)[1])), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def assert_one_505_for_http2(base_url: str) -> None:
    """An HTTP/2 preface gets one 505 ``http_version_not_supported`` (not a 401 or 404 for ``PRI *`` and then a 400
    for the preface's rest), the connection is closed, and the server stays up (trial 22, finding 9)."""
    got = send_raw(base_url, H2_PREFACE)
    assert got.startswith(b"HTTP/1.1 505 ") and len(re.findall(rb"HTTP/1\.1 \d{3} ", got)) == 1, got
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower(), head
    assert json.loads(body)["error"]["code"] == "http_version_not_supported", body
    assert httpx.get(f"{base_url}/health").status_code == 200


@contextlib.contextmanager
def recording_proxy(target: str, refuse: tuple[str, ...] = ()) -> Iterator[tuple[str, list[dict[str, str | None]]]]:
    """A local HTTP proxy in front of ``target`` (``http://127.0.0.1:PORT``) that notes each request's
    ``method``, ``path`` (with its query string) and ``authorization`` header, then forwards it and
    answers the target's status, content type and whole body; a path starting with one of ``refuse``
    gets a 404 instead (a server without that route). Yields ``(proxy URL, notes)``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    seen: list[dict[str, str | None]] = []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"method": self.command, "path": self.path, "authorization": self.headers.get("Authorization")})
            sent = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
            r = (httpx.Response(404, json={"detail": "Not Found"}) if self.path.startswith(refuse) else
                 httpx.request(self.command, target + self.path, headers=sent, content=body, timeout=120))
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = _forward

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
