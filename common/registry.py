"""LLaMA-Factory's dataset registry (``dataset_info.json``): look up and register datasets.

Format (LLaMA-Factory ``data/README.md``): ``{"name": {"file_name": "x.json", "formatting":
"alpaca"|"sharegpt", "columns": {...}, "tags": {...}}}``. ``formatting`` defaults to alpaca;
alpaca ``columns`` map ``prompt``/``query``/``response``/``system``/``history`` to record keys;
sharegpt ``columns`` map ``messages``/``system``/``tools``, and ``tags`` map ``role_tag``,
``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steam_persona.common import atomic
from steam_persona.common.errors import UserError
from steam_persona.common.textfile import json_msg, load_json

REGISTRY_FILE = "dataset_info.json"
#: The alpaca columns prepare's records have, and LLaMA-Factory's defaults (``DatasetAttr``). No ``system`` or
#: ``history``: LLaMA-Factory's alpaca converter reads a named column from every record (KeyError when absent).
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def load(path: str | Path) -> dict[str, Any]:
    """Read a ``dataset_info.json``; a missing file is an empty registry.

    Raises:
        UserError: the file is not valid JSON or not an object.
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = load_json(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: invalid JSON at line {e.lineno} column {e.colno} ({json_msg(e)}); fix it or delete the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: must be a JSON object of dataset names")
    return data


def lookup(dataset_dir: str | Path, name: str, arg: str = "--dataset") -> tuple[Path, dict[str, Any]]:
    """Resolve ``--dataset NAME --dataset_dir DIR`` to (data file path, registry entry).

    ``arg`` is how the command takes the dataset, for the messages (``validate``: ``DATASET``).

    Raises:
        UserError: no registry, unknown name (the message lists the known names), or an entry
            without ``file_name``.
    """
    reg_path = Path(dataset_dir) / REGISTRY_FILE
    if not reg_path.exists():
        raise UserError(f"{reg_path}: not found; create it with `steam-train prepare --register {reg_path} --name {name}` "
                        f"or pass a file as {arg} (path/to/file.json)")
    reg = load(reg_path)
    if name not in reg:
        known = ", ".join(sorted(reg)) or "none"
        raise UserError(f"{reg_path}: dataset '{name}' is not registered (known: {known}); fix {arg}")
    entry = reg[name]
    if not isinstance(entry, dict) or not entry.get("file_name"):
        raise UserError(f"{reg_path}: dataset '{name}' has no file_name; add it")
    return Path(dataset_dir) / entry["file_name"], entry


def register(path: str | Path, name: str, file_name: str, formatting: str = "alpaca",
             columns: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Add or update one entry of a ``dataset_info.json`` (atomic write; other entries kept).

    ``file_name`` is the file's path (absolute, or relative to the working folder); it is stored relative to the
    registry's folder, as LLaMA-Factory joins it with ``dataset_dir`` (absolute when on another drive).

    Returns:
        The entry written.
    """
    p = Path(path)
    reg = load(p)
    reg[name] = _entry(p, file_name, formatting, columns, tags)
    atomic.write_json(p, reg)
    return reg[name]


def update(path: str | Path, add: dict[str, str], drop: dict[str, str | Path]) -> list[str]:
    """Register each alpaca dataset of ``add`` (name → file) and remove each entry of ``drop`` (name → file)
    that names that file, in one atomic write of a ``dataset_info.json`` (other entries kept; no write when
    nothing changes). Returns the names removed."""
    p = Path(path)
    reg = load(p)
    dropped = [name for name, file_name in drop.items() if _names(p, reg.get(name), file_name)]
    for name in dropped:
        del reg[name]
    reg.update({name: _entry(p, file_name) for name, file_name in add.items()})
    if add or dropped:
        atomic.write_json(p, reg)
    return dropped


def replaced(path: str | Path, add: dict[str, str]) -> dict[str, str]:
    """The entries of ``path`` that :func:`update` with ``add`` would point at another file: name → the
    ``file_name`` it had (``"?"`` for an entry without one)."""
    p = Path(path)
    reg = load(p)
    return {name: str(reg[name].get("file_name") or "?") if isinstance(reg[name], dict) else "?"
            for name, file_name in add.items() if name in reg and not _names(p, reg[name], file_name)}


def _entry(p: Path, file_name: str, formatting: str = "alpaca", columns: dict[str, str] | None = None,
           tags: dict[str, str] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"file_name": _relative(p, file_name), "formatting": formatting}
    if columns is None and formatting == "alpaca":
        columns = dict(ALPACA_COLUMNS)
    if columns:
        entry["columns"] = columns
    if tags:
        entry["tags"] = tags
    return entry


def _relative(p: Path, file_name: str | Path) -> str:
    """``file_name`` as LLaMA-Factory finds it from ``dataset_dir`` (the registry's folder): relative to that
    folder (``../out/x.json`` when outside it), or absolute when no relative path exists (another drive)."""
    fp = Path(file_name).resolve()
    try:
        return Path(os.path.relpath(fp, p.parent.resolve())).as_posix()
    except ValueError:
        return fp.as_posix()


def _names(p: Path, entry: Any, file_name: str | Path) -> bool:
    """Whether a registry entry of ``p`` names ``file_name``."""
    return isinstance(entry, dict) and bool(entry.get("file_name")) \
        and (p.parent / entry["file_name"]).resolve() == Path(file_name).resolve()
