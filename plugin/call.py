"""Run a packaged Dify plugin's plain functions from the host Python, in the plugin's own folder.

A packaged plugin imports its modules as the daemon runs it: from its folder, with the shared
``persona.py`` and ``server_client.py`` at the root (``steam-train plugin package`` puts them
there). :class:`PluginCode` writes one plugin's staged files (exactly what its ``.difypkg`` holds)
into a temporary folder and calls functions there in a child ``python``, so the host never imports
the plugin's top-level modules (``tools``, ``persona``, ``server_client``) under its own names and
the code that runs is the code that ships. ``steam-train demo`` writes its reviews this way.

Only modules that do not import ``dify_plugin`` (Python >= 3.12) can be called; the review tool's
``tools/review_client.py`` is one. Arguments and results travel as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from steam_persona.plugin.package import package, stage

#: Child program: read {"target", "args", "kwargs"} from stdin, answer {"result"} or {"error", "message"}.
_CALLER = """
import importlib, json, sys
request = json.load(sys.stdin)
module, _, name = request["target"].partition(":")
try:
    reply = {"result": getattr(importlib.import_module(module), name)(*request["args"], **request["kwargs"])}
except Exception as e:
    reply = {"error": type(e).__name__, "message": str(e)}
json.dump(reply, sys.stdout)
"""


class PluginCallError(Exception):
    """A called function raised, or its process failed.

    Attributes:
        kind: the class name of the plugin's exception (e.g. ``"ReviewError"``), or ``"crash"``
            when the child process died or answered no JSON (``str(e)`` then ends with its stderr).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class PluginCode:
    """One plugin's packaged files in a temporary folder (a context manager), callable from the host.

    Usage::

        with PluginCode("review") as review:
            review.call("tools.review_client:write_review", credentials, "Celeste", max_tokens=64)

    Attributes:
        folder: the unpacked plugin (set inside the ``with`` block; removed at its end).
    """

    def __init__(self, key: str) -> None:
        self.package = package(key)
        self.folder: Path | None = None

    def __enter__(self) -> PluginCode:
        """Stage the package and write it into a new temporary folder.

        Raises:
            UserError: the plugin's sources are missing (:func:`plugin_package.stage`); nothing is written.
        """
        files = stage(self.package)
        self.folder = Path(tempfile.mkdtemp(prefix=f"steam-persona-{self.package.key}-"))
        for name, data in files.items():
            path = self.folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def call(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``target`` (``"module.path:function"``, imported from the plugin's folder) in a child
        of this Python with the JSON-able ``args``/``kwargs``; return its JSON-able result.

        Raises:
            PluginCallError: the function raised (its class name and message), or the child failed.
        """
        request = json.dumps({"target": target, "args": args, "kwargs": kwargs})
        # -E: the child ignores PYTHONPATH, so only the plugin's folder and installed packages are importable.
        done = subprocess.run([sys.executable, "-E", "-c", _CALLER], cwd=self.folder, input=request,
                              capture_output=True, text=True, encoding="utf-8")
        try:
            reply = json.loads(done.stdout)
        except ValueError:
            tail = " ".join(done.stderr.split())[-300:]
            raise PluginCallError(f"{target} (in the {self.package.key} plugin) failed with exit code "
                                  f"{done.returncode}: {tail}", "crash") from None
        if "error" in reply:
            raise PluginCallError(reply["message"], reply["error"])
        return reply["result"]
