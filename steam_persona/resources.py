"""Files shipped with steam-persona (plugin sources, manifests, examples, docs), found through
:mod:`importlib.resources`, the same in a source checkout and in an installed wheel.

Each shipped top-level folder is a package of its own: ``plugin/`` is ``steam_persona.plugin``,
``examples/`` is ``steam_persona.examples``, ``docs/`` is ``steam_persona.docs``, ``reviews/`` is ``steam_persona.reviews``; the chat
plugin's ``manifest.yaml`` sits beside ``plugin/`` in both layouts (repository root / the wheel's
``steam_persona/``; ``pyproject.toml`` ships it as ``plugin/../manifest.yaml``).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def shipped(rel: str) -> Path:
    """The shipped file or folder at repository path ``rel`` (``"manifest.yaml"``, ``"plugin/chat"``,
    ``"examples/persona_reviews.json"``, ``"common/persona.py"``), as a filesystem path.

    The path may not exist (callers check and say what is missing). An installed package is a
    plain folder (pip and uv unpack wheels), so its resources are files.

    Raises:
        ModuleNotFoundError: ``rel``'s first folder is not one of the shipped packages.
    """
    top, _, rest = rel.partition("/")
    if not rest:
        return Path(importlib.resources.files("steam_persona.plugin")).parent / top
    return Path(importlib.resources.files(f"steam_persona.{top}")) / rest


def packaged_copy_hint(path: str | Path) -> str:
    """For a missing ``examples/…`` path (the README's commands, run outside a checkout): ``"; the
    packaged copy is at …"``, else ``""``."""
    p = Path(path)
    if p.is_absolute() or p.parts[:1] != ("examples",):
        return ""
    try:
        copy = shipped(p.as_posix())
    except ModuleNotFoundError:
        return ""
    return f"; the packaged copy is at {copy}" if copy.is_file() else ""


def doc(name: str) -> str:
    """Where the shipped write-up ``docs/<name>`` is (``"dify.md"``), for messages that send the user
    there: the checkout's ``docs/`` file, or the wheel's copy when installed."""
    return str(shipped(f"docs/{name}"))
