"""Test helper: run a Dify plugin the way the plugin daemon does, and talk to it.

* :func:`plugin_python` builds the plugin's Python 3.12 virtualenv with uv the way the daemon does
  at install (``uv sync --frozen`` from ``pyproject.toml`` + ``uv.lock``), cached under
  ``build/dify-venv/<hash of those files>`` so that reruns start at once.
* :func:`unpack` extracts a ``.difypkg``.
* :class:`PluginProcess` starts ``python -m main`` with ``INSTALL_METHOD=local`` in the unpacked
  folder and speaks the daemon's stdio protocol: the plugin writes its manifest JSON as the first
  line, then JSON events separated by blank lines (``log``, ``heartbeat``, ``session`` with
  ``data.type`` ``stream`` | ``end`` | ``error``); requests go to its stdin, one JSON per line
  (``{"session_id", "event": "request", "data": {"type", "action", ...}}``).
  Source: dify_plugin 0.10.2 ``core/server/stdio`` and ``core/server/io_server.py``.

Usage::

    py = plugin_python(plugin_dir)
    with PluginProcess(plugin_dir, py) as plugin:
        reply = plugin.request({"type": "model", "action": "validate_model_credentials", ...})
        reply.result        # data of the stream messages; reply.error: the error message or None
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_CACHE = REPO / "build" / "dify-venv"


def python312() -> str:
    """A Python 3.12 interpreter: ``$STEAM_PERSONA_PY312`` (the Makefile sets it), pyenv's, or PATH's."""
    for candidate in (os.environ.get("STEAM_PERSONA_PY312"), "/root/.pyenv/versions/3.12.1/bin/python3.12",
                      shutil.which("python3.12")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no Python 3.12 found (dify_plugin >= 0.10 needs it); set STEAM_PERSONA_PY312")


def _uv() -> str:
    uv = Path(sys.executable).with_name("uv")
    return str(uv) if uv.exists() else (shutil.which("uv") or "uv")


#: The files the daemon installs a plugin's dependencies from, in the order it prefers them.
DEPENDENCY_FILES = ("pyproject.toml", "uv.lock", "requirements.txt")


def plugin_python(plugin_dir: Path) -> Path:
    """The ``bin/python`` of a 3.12 venv with the plugin's dependencies, installed as the daemon does
    (``internal/core/local_runtime/setup_python_environment.go``): ``uv sync --no-dev`` from
    ``pyproject.toml`` (``--frozen`` when ``uv.lock`` is there), else ``uv pip install -r
    requirements.txt``. Built once per content of those files, then cached.

    Built in a temp folder and renamed into place, so an interrupted build is never reused.
    """
    plugin_dir = Path(plugin_dir)
    files = [plugin_dir / name for name in DEPENDENCY_FILES if (plugin_dir / name).is_file()]
    digest = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()[:16]
    venv = VENV_CACHE / digest
    python = venv / "bin" / "python"
    if python.exists():
        return python
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=VENV_CACHE))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    try:
        subprocess.run([_uv(), "venv", "-q", "--python", python312(), str(tmp)], check=True)
        if (plugin_dir / "pyproject.toml").is_file():
            frozen = ["--frozen"] if (plugin_dir / "uv.lock").is_file() else []
            subprocess.run([_uv(), "sync", "-q", "--no-dev", *frozen], cwd=plugin_dir, check=True,
                           env={**env, "UV_PROJECT_ENVIRONMENT": str(tmp)})
        else:
            subprocess.run([_uv(), "pip", "install", "-q", "--python", str(tmp / "bin" / "python"),
                            "-r", str(plugin_dir / "requirements.txt")], check=True, env=env)
        os.replace(tmp, venv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return python


def unpack(difypkg: Path, dest: Path) -> Path:
    """Extract a ``.difypkg`` into ``dest`` (created) and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(difypkg) as z:
        z.extractall(dest)
    return dest


@dataclass
class Reply:
    """What one request got back: ``result`` (the data of each ``stream`` message, in order),
    ``error`` (the ``error`` message's data, or ``None``), ``seconds`` (wall time to ``end``)."""

    result: list[Any] = field(default_factory=list)
    error: dict | None = None
    seconds: float = 0.0


class PluginProcess:
    """A plugin started as ``python -m main`` in local (stdio) mode.

    Attributes:
        manifest: the manifest JSON the plugin wrote first.
        events: every non-session event seen (``log``, ``heartbeat``, ``error``).
    """

    def __init__(self, plugin_dir: Path, python: Path, env: dict[str, str] | None = None,
                 start_timeout: float = 60.0) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.stderr = tempfile.TemporaryFile()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
        full_env.update({"INSTALL_METHOD": "local", "PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen([str(python), "-m", "main"], cwd=self.plugin_dir, env=full_env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.events: list[dict] = []
        self._sessions: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._first: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.manifest = self._first.get(timeout=start_timeout)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"plugin did not start in {start_timeout} s; stderr:\n{self.stderr_text()}") from None
        if self.manifest is None:
            raise RuntimeError(f"plugin exited at start; stderr:\n{self.stderr_text()}")

    def _read(self) -> None:
        first = True
        for raw in self.proc.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                # Anything but JSON on stdout breaks the daemon's reader: record it, tests assert none.
                self.events.append({"event": "garbage", "line": line.decode("utf-8", "replace")})
                continue
            if first:
                first = False
                self._first.put(msg)
                continue
            sid = msg.get("session_id")
            if msg.get("event") == "session" and sid:
                with self._lock:
                    q = self._sessions.setdefault(sid, queue.Queue())
                q.put(msg["data"])
            else:
                self.events.append(msg)
        self._first.put(None)
        with self._lock:
            for q in self._sessions.values():
                q.put(None)

    def request(self, data: dict, timeout: float = 120.0) -> Reply:
        """Send one request (``data`` = the daemon's ``data`` object) and wait for its ``end``.

        Raises:
            TimeoutError: no ``end`` within ``timeout`` s.
            RuntimeError: the plugin process died.
        """
        sid = uuid.uuid4().hex
        with self._lock:
            q = self._sessions.setdefault(sid, queue.Queue())
        payload = {"session_id": sid, "event": "request", "data": {"user_id": "test-user", **data}}
        self.proc.stdin.write((json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        reply, start = Reply(), time.monotonic()
        while True:
            left = timeout - (time.monotonic() - start)
            try:
                msg = q.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise TimeoutError(f"no answer to {data.get('action')} in {timeout} s") from None
            if msg is None:
                raise RuntimeError(f"plugin died; stderr:\n{self.stderr_text()}")
            kind = msg.get("type")
            if kind == "stream":
                reply.result.append(msg.get("data"))
            elif kind == "error":
                reply.error = msg.get("data")
            elif kind == "end":
                reply.seconds = time.monotonic() - start
                return reply

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")[-4000:]

    def close(self) -> None:
        """Stop the plugin (the SDK spins at stdin EOF, so it is signalled, then killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()

    def __enter__(self) -> "PluginProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
