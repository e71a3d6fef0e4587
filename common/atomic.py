"""Atomic file writes and JSON-lines logs, shared by every stage.

Why our own: the rule "no half-written outputs" needs write-to-temp-then-rename everywhere, and
the stdlib has no one-liner for it. Temp files live beside the target (same filesystem, so
``os.replace`` is atomic) and are named ``.<name>.tmp-<pid>``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from steam_persona.common.errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success rename it to ``target``, on error delete it.

    Works for files and folders (the yielded path does not exist yet; create it).

    Raises:
        UserError: the disk is full (ENOSPC) — nothing is left under the final name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(target)
    group = _GROUP.get()
    try:
        yield tmp
        plain_modes(tmp)
        if group is None:
            _replace(tmp, target)
        elif any(t.resolve() == target.resolve() for _, t in group):
            raise ValueError(f"{target}: written twice among outputs replaced together")
        else:
            group.append((tmp, target))
    except OSError as e:
        _cleanup(tmp)
        if e.errno == 28:  # ENOSPC
            raise UserError(f"{target}: no space left on the device; free some disk and rerun") from None
        raise
    except BaseException:
        _cleanup(tmp)
        raise


#: the outputs written so far inside :func:`replaced_together` (temp path, target), or ``None`` outside it
_GROUP: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("atomic_group", default=None)


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _replace(tmp: Path, target: Path) -> None:
    import shutil

    if target.is_dir() and tmp.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)


@contextlib.contextmanager
def replaced_together() -> Iterator[None]:
    """Replace several outputs as a set: inside the block each :func:`atomic_path` write (and so
    :func:`write_text`, :func:`write_json` …) stays under its temp name; when the block ends without
    error they are all renamed, in the order they were written (write the file that names the others,
    such as a registry, last); on an error they are all deleted and the previous outputs stay as they were."""
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            _cleanup(tmp)
        raise
    finally:
        _GROUP.reset(token)
    for i, (tmp, target) in enumerate(pending):
        try:
            _replace(tmp, target)
        except BaseException:
            for left, _ in pending[i:]:
                _cleanup(left)
            raise


@contextlib.contextmanager
def new_folders_removed_on_error(targets: Iterable[str | Path]) -> Iterator[None]:
    """On an error or interrupt inside the block, remove the folders above ``targets`` that did not
    exist when it began and are empty (a stage stopped while writing leaves no empty ``--out``
    folder); folders that were there before, or that hold anything, stay."""
    new = {folder for t in targets for folder in Path(t).absolute().parents if not folder.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda f: len(f.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def remove_stale(target: str | Path) -> list[Path]:
    """Delete the temp files that a crashed writer of ``target`` left beside it (``.<name>.tmp-<pid>`` of a
    process that no longer runs). Returns the paths removed."""
    target = Path(target)
    return _remove_dead(target.parent, lambda name: name == target.name)


def remove_stale_in(folder: str | Path) -> list[Path]:
    """Delete the temp files and folders that crashed writers left directly in ``folder`` (every
    ``.<name>.tmp-<pid>`` of a process that no longer runs), for a stage's own output folder whose
    targets vary from run to run. Returns the paths removed."""
    return _remove_dead(Path(folder), lambda name: True)


_TMP_NAME = re.compile(r"\.(.+)\.tmp-(\d+)")


def _remove_dead(folder: Path, wanted: Callable[[str], bool]) -> list[Path]:
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if (m := _TMP_NAME.fullmatch(p.name))
                   and wanted(m.group(1)) and not _running(int(m.group(2))))
    for p in stale:
        _cleanup(p)
    return stale


def note_removed(stale: list[Path]) -> None:
    """Say in one line which temp files of an interrupted run :func:`remove_stale` / :func:`remove_stale_in`
    removed (nothing when none)."""
    from rich.markup import escape

    from steam_persona.common.console import console

    if stale:
        console.print(f"[yellow]note[/] removed {len(stale)} temp file{'s' if len(stale) > 1 else ''} of an "
                      f"interrupted run: {escape(', '.join(map(str, stale)))}", soft_wrap=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_modes(path: str | Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open()`` / ``mkdir()``
    would: writers that go through ``mkstemp`` (safetensors, tempfile) leave 0600 / 0700, which other
    users of a shared or mounted dir cannot read. Executable files stay executable."""
    path = Path(path)
    mask = _umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        p.chmod((0o777 if executable else 0o666) & ~mask)


def _cleanup(tmp: Path) -> None:
    import shutil

    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()


#: Errors of the disk's side of a write: the fix is another place or more room, not other input.
_FULL = (errno.ENOSPC, errno.EDQUOT)
_IN_THE_WAY = (errno.ENOTDIR, errno.EEXIST)
_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, *_IN_THE_WAY)
#: How Rust writers (tokenizers, safetensors) report an OS error in a plain ``Exception``.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_error(folder: Path, e: BaseException, flag: str) -> UserError | None:
    """The one-line error for ``e`` when it is a failed write into ``folder`` (given as ``flag``): a full
    disk or quota, a read-only or unwritable place, a file in the way; ``None`` for any other error,
    and for an ``OSError`` about a file outside ``folder`` (an input)."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (m := _RUST_OS_ERROR.search(str(e))):
        code = int(m.group(1))
    if code not in _FULL + _UNWRITABLE:
        return None
    name = getattr(e, "filename", None)
    if name and folder.resolve() not in (Path(name).resolve(), *Path(name).resolve().parents):
        return None
    fix = ("free some disk" if code in _FULL else "move the file out of the way" if code in _IN_THE_WAY
           else "make it writable")
    return UserError(f"{folder}: cannot write ({os.strerror(code).lower()}); {fix} or pick another {flag}; "
                     "nothing half-written was kept")


@contextlib.contextmanager
def writing_into(folder: Path, flag: str) -> Iterator[None]:
    """Turn a failed write into ``folder`` inside the block into its one-line error (:func:`write_error`).

    Raises:
        UserError: the disk is full, or ``folder`` cannot be written.
    """
    try:
        yield
    except Exception as e:
        error = write_error(folder, e, flag)
        if error is None:
            raise
        raise error from None


def write_text(target: str | Path, text: str) -> None:
    """Write UTF-8 text atomically (temp file, fsync, rename)."""
    write_chunks(target, (text,))


def write_chunks(target: str | Path, chunks: Iterable[str]) -> None:
    """Write UTF-8 text given in pieces atomically, as :func:`write_text` writes their concatenation
    (a big file's text is never held whole). A lone surrogate (``"\\ud800"``, which JSON text can hold: half an
    emoji a scraper cut) has no UTF-8 form: it is written as its escape ``\\ud800``, which in a JSON string reads
    back as the same character."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.writelines(chunks)
            f.flush()
            os.fsync(f.fileno())


def write_json(target: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write JSON atomically, UTF-8, non-ASCII kept as is (Chinese stays readable)."""
    write_text(target, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(target: str | Path, rows: list[dict]) -> None:
    """Write JSON Lines atomically, one object per line."""
    write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class JsonlLog:
    """Append-only JSON-lines log (one event per line, flushed at once, ``time`` added).

    Appending is crash-safe enough for logs: a crash loses at most the last partial line, which
    readers skip (see :func:`read_jsonl_log`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, **event: Any) -> None:
        event.setdefault("time", round(time.time(), 3))
        self._f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl_log(path: str | Path) -> list[dict]:
    """Read a JSON-lines log, skipping a torn last line left by a crash."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
