"""One writer per output: an exclusive ``flock`` on a lock file holding the writer's pid.

``collect`` locks each output file, ``train`` its ``--output_dir`` and ``export`` its ``--export_dir``.
The kernel drops a ``flock`` when its process dies, so a lock file left by a killed run is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from steam_persona.common.errors import UserError

#: ``<pid>:<lock>`` of the lock a process holds, passed on to the processes it starts (``train
#: --nproc_per_node``'s workers), which write under their parent's lock instead of waiting for it.
HELD_ENV = "STEAM_PERSONA_LOCK_HELD"


@contextlib.contextmanager
def locked(lock: Path, in_use: Callable[[str, str], str], unwritable: Callable[[str], str]) -> Iterator[None]:
    """Hold ``lock`` while the block writes what it guards; the file is removed on exit, and so are the folders
    made for it that are still empty (a run that stopped before writing leaves no new empty parents).

    The inode check makes a run that opened the file just before its removal try again on the new one.

    Args:
        lock: the lock file.
        in_use: the error for a lock held by a live process, from its pid and start time (``HH:MM``).
        unwritable: the error when the lock cannot be created, from the OS's reason (``strerror``).

    Raises:
        UserError: another live process holds the lock, or its folder cannot be written.
    """
    lock = lock.absolute()
    if inherited(lock):
        yield
        return
    made = _missing_folders(lock.parent)
    try:
        fd = _acquire(lock, in_use, unwritable)
    except BaseException:
        _remove_empty(made)
        raise
    before = os.environ.get(HELD_ENV)
    os.environ[HELD_ENV] = f"{os.getpid()}:{lock}"
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        if before is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = before
        lock.unlink(missing_ok=True)
        os.close(fd)
        _remove_empty(made)


def inherited(lock: Path | None = None) -> bool:
    """True in a process started by the holder of ``lock`` (any lock when ``None``): it writes under its
    parent's lock (:data:`HELD_ENV`)."""
    held = os.environ.get(HELD_ENV, "")
    return held == f"{os.getppid()}:{lock}" if lock is not None else held.startswith(f"{os.getppid()}:")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(lock: Path, in_use: Callable[[str, str], str], unwritable: Callable[[str], str]) -> int:
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileExistsError as e:  # a file where a parent folder should be
            raise UserError(unwritable(f"{e.filename} is a file, not a folder")) from None
        except OSError as e:
            raise UserError(unwritable(e.strerror or str(e))) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            started = time.strftime("%H:%M", time.localtime(os.fstat(fd).st_mtime))
            os.close(fd)
            raise UserError(in_use(pid, started)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _lock_path(out: Path) -> Path:
    """``<out>.lock`` beside the folder ``out`` (resolved: a symlinked path locks the same folder)."""
    real = Path(out).resolve()
    return real.with_name(real.name + ".lock")


def holder(out: Path) -> str | None:
    """The pid (as written in it) of the process holding ``out``'s :func:`folder_lock` now, else ``None``; the lock
    file is only read, never made."""
    try:
        fd = os.open(_lock_path(out), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)


def folder_lock(out: Path, command: str, flag: str) -> contextlib.AbstractContextManager[None]:
    """One ``command`` at a time writing the folder ``out`` (given as ``flag``): ``<out>.lock`` beside it.

    Raises:
        UserError: another live ``command`` writes ``out``, or ``out``'s parent folder cannot be written.
    """
    out = Path(out)
    return locked(_lock_path(out),
                  lambda pid, started: f"{out}: in use by another {command} (pid {pid}, started {started}); "
                                       f"wait for it to end or pick another {flag}",
                  lambda why: f"{out}: cannot write there ({why}); pick another {flag}")
