"""steam-persona: Steam reviews → QLoRA persona model → GGUF → OpenAI-compatible server → Dify plugins.

One import name for the repository's top-level folders: ``steam_persona.common`` (what every stage
shares), ``steam_persona.reviews`` (collect → prepare), ``steam_persona.trainer`` (QLoRA SFT, eval),
``steam_persona.export`` (→ GGUF), ``steam_persona.serve`` (the API), ``steam_persona.cli``
(the ``steam-train`` command, also ``python -m steam_persona``), and the data packages
``steam_persona.plugin`` (the Dify plugins' sources, with ``manifest.yaml`` beside them) and
``steam_persona.examples``, read through :func:`steam_persona.resources.shipped`.

Layout: the repository keeps ``common/``, ``reviews/``, ``trainer/``, ``export/``, ``serve/``, ``plugin/``,
``examples/`` and
``manifest.yaml`` at its root; the wheel maps them under ``steam_persona/`` (``pyproject.toml``,
``[tool.setuptools.package-dir]``). In a source checkout this package also searches the repository
root for its sub-packages, so ``steam_persona.trainer`` is ``<checkout>/trainer`` in whichever
checkout is first on ``sys.path`` (pytest's ``pythonpath``, ``PYTHONPATH``), never another one's.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "trainer" / "__init__.py").is_file():
    __path__.append(str(_ROOT))  # source checkout: the sub-packages live beside this folder

try:
    __version__ = importlib.metadata.version("steam-persona")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
