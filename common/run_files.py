"""The files a training run writes, read back (a checkpoint's state, an adapter's weights): one that a partial copy,
a disk error or a hand edit damaged is a :class:`UserError` naming it and the way out (exit 2, one line), never a
library's traceback. Our own writes are atomic (:mod:`steam_persona.common.atomic`), so a stopped run leaves none.

The checks read headers only (the JSON files, a safetensors header, the zip directory ``torch.save`` ends a file
with), so they cost milliseconds before a load that would fail minutes later or deep inside a library.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterator

from steam_persona.common.errors import UserError

#: the files a LoRA adapter's weights are in (peft's names), besides ``adapter_config.json``
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
#: the way out of a damaged adapter, where ``chat``, ``eval`` and ``export`` read one
ADAPTER_FIX = "copy the adapter's run again, or pass one of its checkpoint-N folders"
#: the state files ``torch.save`` wrote into a checkpoint (zip archives), besides its adapter and JSON state
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


@contextlib.contextmanager
def damaged_is_user_error(path: Path, fix: str) -> Iterator[None]:
    """Turn what reading a damaged ``path`` raises in this block (bad JSON or UTF-8, a cut zip, pickle or
    safetensors header) into a :class:`UserError`: ``"<path>: damaged, cannot be read (<reason>); <fix>"``."""
    from safetensors import SafetensorError

    try:
        yield
    except (ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: damaged, cannot be read ({reason}); {fix}") from None


def read_json(path: Path, fix: str) -> Any:
    """``path`` parsed as JSON (UTF-8).

    Raises:
        UserError: it is not (:func:`damaged_is_user_error`).
    """
    with damaged_is_user_error(path, fix):
        return json.loads(path.read_text(encoding="utf-8"))


def check_adapter(adapter_dir: Path, fix: str) -> dict[str, Any]:
    """Check that ``adapter_dir``'s ``adapter_config.json`` and ``adapter_model.safetensors`` (when there) can be
    read; return the config.

    Raises:
        UserError: one of them is damaged.
    """
    config = read_json(adapter_dir / "adapter_config.json", fix)
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with damaged_is_user_error(weights, fix), safe_open(str(weights), framework="pt") as f:
            f.keys()  # the header, checked against the file's length
    return config


def checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``run_dir`` that hold an adapter, by step."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()
             and (p / "adapter_config.json").is_file() and any((p / f).is_file() for f in ADAPTER_FILES)]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def refuse_unfinished(run_dir: Path, use: str = "pass") -> None:
    """Refuse a training run dir that holds no final adapter yet, saying why (``export``, ``chat``, ``eval`` and
    ``serve`` alike): still training (its output dir's lock is held: the pid), or stopped before the end (its
    checkpoints named, with ``use``: what to do with one). A folder that is neither passes.

    Raises:
        UserError: the run is in progress or did not finish.
    """
    from steam_persona.common.lock import holder

    if (run_dir / "adapter_config.json").is_file() and any((run_dir / f).is_file() for f in ADAPTER_FILES):
        return
    found, pid = checkpoints(run_dir), holder(run_dir)
    some = f"{use} one of its checkpoints ({', '.join(map(str, found))})" if found else None
    if pid is not None:
        raise UserError(f"{run_dir}: no final LoRA adapter yet: the training is in progress (pid {pid}); wait for "
                        "it to end" + (f", or {some}" if some else ""))
    if some:
        raise UserError(f"{run_dir}: no final LoRA adapter here: the training did not finish; {some} or "
                        "rerun the training to finish it")


def check_checkpoint(ckpt: Path, fix: str) -> None:
    """Check that every file a resume reads from ``ckpt`` can be read: the adapter, ``trainer_state.json`` and
    the :data:`TORCH_STATE_FILES` there (a cut file has no zip directory at its end).

    Raises:
        UserError: one of them is damaged.
    """
    check_adapter(ckpt, fix)
    read_json(ckpt / "trainer_state.json", fix)
    for name in TORCH_STATE_FILES:
        if (ckpt / name).is_file():
            with damaged_is_user_error(ckpt / name, fix), zipfile.ZipFile(ckpt / name):
                pass
