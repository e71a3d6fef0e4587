"""Files of one ``steam-train collect`` output: the lock, the resume state and the ``.part`` file.

Beside ``<out>`` live ``<out>.lock`` (while a run writes it), ``<out>.part`` (reviews of an
unfinished run, the record of the ids seen) and ``<out>.state.json``: the query, and per app the
next cursor, pages, reviews and whether (and why) it ended. The state stays after the run
completes (``"complete": true``), so a later run can compare its settings with the file's and
continue from the saved cursors when ``--max_reviews`` is raised.

Crash-safe order: reviews are appended and fsynced before the state that counts them is written
(atomically), and on completion ``.part`` is renamed to ``<out>`` before the state says
``complete``. A kill at any point leaves files a rerun reads without loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from steam_persona.common import atomic
from steam_persona.common import lock as locking
from steam_persona.common.errors import UserError

#: Settings that select which reviews Steam returns: a run may only resume or extend a file made
#: with the same values (``--max_reviews``, ``--num_per_page`` and the pacing flags may change).
QUERY_FIELDS = ("language", "filter", "review_type", "purchase_type", "day_range")


def paths(out: Path) -> tuple[Path, Path, Path]:
    """``(<out>.part, <out>.state.json, <out>.lock)``."""
    return tuple(out.with_name(out.name + s) for s in (".part", ".state.json", ".lock"))  # type: ignore[return-value]


def details_path(out: Path) -> Path:
    """Where ``--with_details`` stores appdetails for ``out``: ``raw/570.jsonl`` → ``raw/570.appdetails.json``."""
    return out.with_suffix(".appdetails.json")


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` (:func:`steam_persona.common.lock.locked`) while the block writes ``out``; first
    remove the temp files that a killed run left beside ``out``'s files (one line names them).

    Raises:
        UserError: another live run holds the lock, or ``out``'s folder cannot be written.
    """
    part, state_path, lock = paths(out)
    with locking.locked(
            lock, lambda pid, _: f"{lock}: another collect (pid {pid}) is writing {out}; wait for it to end, "
                                 "or give this run another --out",
            lambda why: f"{out}: cannot write there ({why}); give --out a writable path"):
        atomic.note_removed([p for t in (out, part, state_path, details_path(out)) for p in atomic.remove_stale(t)])
        yield


def query_of(cfg: Any) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in QUERY_FIELDS}


def differing_flags(saved: dict[str, Any], cfg: Any) -> str:
    """``"--language english (file: schinese), --filter all (file: recent)"``, or ``""`` when the same.
    ``day_range`` counts only with ``filter=all`` on both sides: Steam ignores it otherwise."""
    return ", ".join(f"--{k} {getattr(cfg, k)} (file: {saved.get(k)})" for k in QUERY_FIELDS
                     if saved.get(k) != getattr(cfg, k)
                     and (k != "day_range" or saved.get("filter") == "all" or cfg.filter == "all"))


def read_state(state_path: Path) -> dict[str, Any] | None:
    """The saved state, or ``None`` when there is none.

    Raises:
        UserError: the state file is unreadable.
    """
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("apps"), dict):
            raise ValueError
    except ValueError:
        raise UserError(f"{state_path}: unreadable collect state; delete it (and any .part beside it) "
                        "to start over") from None
    return state


def save_state(state_path: Path, state: dict[str, Any]) -> None:
    atomic.write_json(state_path, state, indent=None)


def repair_part(part: Path) -> tuple[set[str], Counter[str]]:
    """Read the review ids saved in ``part`` and count them per app; cut a torn last line left by a kill.

    Raises:
        UserError: a line that is not a saved review.
    """
    ids: set[str] = set()
    per_app: Counter[str] = Counter()
    if not part.exists():
        return ids, per_app
    data = part.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):
        with open(part, "r+b") as f:
            f.truncate(good)
    # "\n" only: str.splitlines() also breaks at U+0085/U+2028 inside a saved review's text
    for n, line in enumerate(data[:good].decode("utf-8").split("\n")[:-1], 1):
        try:
            rec = json.loads(line)
            ids.add(str(rec["recommendationid"]))
            per_app[str(rec["appid"])] += 1
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{part}: line {n} is not a saved review; delete {part} and its .state.json "
                            "to start over") from None
    return ids, per_app


def check_part(part: Path, state_path: Path, state: dict[str, Any], per_app: Counter[str]) -> None:
    """Refuse to resume when ``.part`` holds fewer reviews of an app than the state says were saved
    (it was removed, cut or replaced): continuing from the saved cursor would lose the earlier pages.

    Raises:
        UserError: naming the app, both counts and the fix.
    """
    for appid, st in state["apps"].items():
        if per_app[appid] < st.get("reviews", 0) and not part.exists() and part.with_suffix("").exists():
            out = part.with_suffix("")
            raise UserError(f"{state_path}: left by an older unfinished run beside the complete {out}; delete "
                            f"{state_path} to keep {out} as it is, or pass --overwrite to collect it again")
        if per_app[appid] < st.get("reviews", 0):
            raise UserError(f"{part}: holds {per_app[appid]} reviews of app {appid} but {state_path} says "
                            f"{st['reviews']} were saved (the .part was removed or cut); restore it, or delete "
                            f"{state_path} to collect from the start")


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def reopen_complete(out: Path, part: Path) -> None:
    """Continue a complete ``out``: copy it to ``part`` (``out`` stays whole until the run finishes;
    an output not written, as no app had a review, gives an empty ``part``)."""
    with atomic.atomic_path(part) as tmp:
        if out.exists():
            shutil.copyfile(out, tmp)
        else:
            Path(tmp).write_bytes(b"")


def finish(out: Path, part: Path, state_path: Path, state: dict[str, Any], overwrite: bool) -> None:
    """Move ``part`` to ``out`` and mark the state complete, in that order. An empty ``part`` (no app
    had a review) writes no output: an empty file would only stop ``prepare`` on a folder.

    Raises:
        UserError: without ``--overwrite``, ``out`` exists with more reviews than ``part``: nothing is
            replaced; or an ``--overwrite`` collected no review: ``out`` and the state it had
            (``state["replaces"]``) are kept, ``part`` is removed.
    """
    if out.exists() and not overwrite and count_lines(out) > count_lines(part):
        raise UserError(f"{out}: holds {count_lines(out)} reviews, more than the {count_lines(part)} this run "
                        f"collected in {part}; kept both: pass --overwrite to replace it, or delete {part} and "
                        f"{state_path}")
    empty = not (part.exists() and part.stat().st_size)
    if empty and out.exists() and "replaces" in state:
        _keep_replaced(out, part, state_path, state["replaces"])
    state.pop("replaces", None)
    if not empty:
        os.replace(part, out)
    else:
        out.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
    state["complete"] = True
    save_state(state_path, state)


def _keep_replaced(out: Path, part: Path, state_path: Path, old_state: dict[str, Any] | None) -> None:
    """Raises UserError after putting back the state of ``out`` (none if it had none) and removing
    the empty ``part``: an ``--overwrite`` that found no review never deletes a complete file."""
    if old_state is None:
        state_path.unlink(missing_ok=True)
    else:
        save_state(state_path, old_state)
    part.unlink(missing_ok=True)
    raise UserError(f"{out}: --overwrite collected no review (Steam has none with these settings), so the "
                    f"{count_lines(out):,} reviews it holds are kept as they were; check --language and the "
                    f"other flags, or delete {out} yourself")
