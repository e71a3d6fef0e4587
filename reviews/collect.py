"""``steam-train collect``: download Steam reviews from the public ``appreviews`` API to JSON Lines.

API: ``GET {base_url}/appreviews/<appid>?json=1&cursor=…`` (../shared/reference/steam-api.md).
Paging follows the ``cursor`` each response returns (``*`` first; sent URL-encoded, as it holds
``+ / =``) and ends an app on an empty page, a cursor that comes back unchanged, ``--max_reviews``,
:data:`STALL_PAGES` pages in a row without a new review, or a cursor sent before (a cycle).

Robustness: the HTTP side (rate limit, retries, ``Retry-After``, deadlines) is
:mod:`.collect_fetch`; the files (lock, resume state, ``.part``, crash-safe finish) are
:mod:`.collect_state`. A rerun of the same command after Ctrl-C, SIGTERM, SIGHUP, a kill, a crash, a
failed app or the time bound continues without duplicates or lost pages. An app that fails (or a
missing appdetails) does not stop the others; the command exits 2 at the end, naming each failed
app. A request that still gets HTTP 429 after the retries stops the run: the limit is the client's.

Output: one raw review object per line, unchanged apart from an added ``appid`` (a review whose
``review`` is not text is skipped and counted; a null ``author`` is dropped); no file when no app
of it has a review. With
``--with_details`` the ``appdetails`` response (name, genres) of each app is saved once beside it
as ``<out stem>.appdetails.json``, which ``prepare`` picks up. Every page and retry is logged as
JSON lines in ``<out stem>.log.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.progress import TextColumn

from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona.common.config import arg
from steam_persona.common.console import PLAIN_EVERY_S, console, plain_progress, progress, summary_table
from steam_persona.common.errors import UserError, stop_signals_interrupt
from steam_persona.reviews import collect_state as cs
from steam_persona.reviews import language as language_mod
from steam_persona.reviews.columns import steam_appid
from steam_persona.reviews.collect_fetch import Budget, Fetcher, RateLimited


@dataclass
class CollectConfig:
    """Settings of ``steam-train collect`` (= its flags = its YAML keys)."""

    appid: list[str] = arg([], "Steam app id(s) to collect; repeat the flag or comma-separate; a store page URL "
                                  "(store.steampowered.com/app/570/…) gives its id.")
    language: str = arg("schinese", "Steam API language code (schinese, tchinese, english, …) or 'all'.")
    filter: str = arg("recent", "Order: recent (creation time), updated (update time), all (helpfulness).",
                      choices=("recent", "updated", "all"))
    review_type: str = arg("all", "Which reviews: all, positive or negative.", choices=("all", "positive", "negative"))
    purchase_type: str = arg("all", "Which buyers: all, steam or non_steam_purchase.",
                             choices=("all", "steam", "non_steam_purchase"))
    day_range: int | None = arg(None, "With --filter all: only reviews from the last N days.")
    num_per_page: int = arg(100, "Reviews per request (1–100).")
    max_reviews: int = arg(0, "Stop after this many reviews per app (0 = all); raising it later continues a "
                           "complete file.")
    out: str = arg("raw/{appid}.jsonl", "Output JSON Lines file (not a folder); '{appid}' gives one file per "
                   "app, else all apps go into one file (an app left off a later command is no longer collected "
                   "into it).")
    with_details: bool = arg(False, "Also fetch appdetails (name, genres) once per app, saved as "
                             "<out stem>.appdetails.json.")
    details_language: str = arg("schinese", "Language of appdetails names and genres (the 'l' parameter).")
    details_only: bool = arg(False, "Fetch only appdetails (name, genres) to <out stem>.appdetails.json, no reviews: "
                             "names for review archives that lack them (give them to prepare as an input).")
    base_url: str = arg("https://store.steampowered.com", "API root; point it at a mirror or a test server.")
    rate_limit: float = arg(1.0, "Most requests per second (0 = no limit). Be polite: Steam answers 429 "
                            "when pushed.")
    timeout: float = arg(30.0, "Seconds for one whole response (connect to last byte); a slower one is retried.")
    max_retries: int = arg(6, "Retries of one request on 429, 5xx, timeouts and malformed pages; a 429 past them "
                           "stops the run (rerun later).")
    backoff_base: float = arg(1.0, "First retry waits up to this many seconds; doubles each retry (with jitter).")
    backoff_max: float = arg(60.0, "Longest backoff between retries (seconds); a longer Retry-After is still "
                               "honoured, up to an hour (more stops the run).")
    max_time: float = arg(3600.0, "Stop after this many seconds in all, requests and waits included (0 = no "
                            "bound); the data is then partial: exit 2, rerun to continue.")
    overwrite: bool = arg(False, "Collect again from the start even when the output file is complete "
                          "(replacing it), and fetch appdetails again; a shared file must name all its apps.")


#: Consecutive pages without a new review after which an app ends: ``filter=all`` on Steam can
#: hand out fresh cursors over the same reviews for ever.
STALL_PAGES = 5
#: The cause and fix of an HTTP 400 on a cursor saved by an earlier run (one handed out in this run is retried).
SAVED_CURSOR_REJECTED = ("Steam rejected the saved cursor (cursors expire); rerun the same command once, and if it "
                         "is rejected again, pass --overwrite to collect this output again from the start (on a "
                         "shared file that collects all its apps again)")
#: ``--out`` extensions refused, and why: collect writes plain JSON lines, which ``prepare``
#: (``reviews.sources``) would read as a table, or which the name would call compressed.
OTHER_FORMATS = {".csv": "prepare reads a .csv file as a CSV table", ".tsv": "prepare reads a .tsv file as a TSV table",
                 ".parquet": "prepare reads a .parquet file as Parquet",
                 ".gz": "collect writes plain JSON lines, not gzip"}
#: Why an app has no appdetails when Steam answered ``success: false`` (any other reason is a failed request).
NO_DETAILS = "Steam returned no appdetails (delisted, region-locked or a wrong id)"


def _check_page(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "malformed page: not a JSON object"
    if data.get("success") != 1:
        return (f"!Steam answered success={data.get('success')!r}: the app id may be wrong (or --language/--filter); "
                "fix it, or leave it out of the command")
    if not isinstance(data.get("reviews"), list):
        return "malformed page: 'reviews' is not a list"
    bad = next((i for i, r in enumerate(data["reviews"], 1)
                if not isinstance(r, dict) or "recommendationid" not in r), None)
    if bad is not None:
        return f"malformed page: review {bad} has no recommendationid"
    if data["reviews"] and not isinstance(data.get("cursor"), str):
        return "malformed page: no 'cursor'"
    return None


def _new_app() -> dict[str, Any]:
    return {"cursor": "*", "done": False, "end": None, "pages": 0, "reviews": 0, "skipped": 0, "total": None}


def _apply_max_reviews(st: dict[str, Any], cfg: CollectConfig) -> None:
    """A raised ``--max_reviews`` reopens an app that stopped at the old one; a lowered one ends it
    (keeping what is saved)."""
    if st["done"] and st.get("end") == "max_reviews" and (not cfg.max_reviews or st["reviews"] < cfg.max_reviews):
        st["done"], st["end"] = False, None
    if not st["done"] and cfg.max_reviews and st["reviews"] >= cfg.max_reviews:
        st["done"], st["end"] = True, "max_reviews"


def _open(out: Path, appids: list[str], cfg: CollectConfig) -> tuple[dict[str, Any], set[str]] | None:
    """The state to run with and the review ids already in ``.part``; ``None`` when ``out`` is complete
    and nothing more is asked.

    Raises:
        UserError: ``out`` or its state was made with other query flags (named), the state is
            unreadable, or ``.part`` holds fewer reviews than the state says were saved.
    """
    part, state_path, _ = cs.paths(out)
    state = old = cs.read_state(state_path)
    if state is not None and state.get("complete") and not out.exists() and _saved(state):
        state = None  # the output was deleted: collect it again (an app without reviews writes none)
    if cfg.overwrite and state is not None:
        _refuse_dropping(out, state, appids)
    if cfg.overwrite and state is not None and (
            state.get("complete") or cs.differing_flags(state.get("query") or {}, cfg)):
        state = None  # --overwrite starts again, but still resumes its own unfinished run
    if state is None and out.exists() and not cfg.overwrite:
        console.print(f"{out}: already complete ({cs.count_lines(out):,} reviews; its settings were not recorded); "
                      "pass --overwrite to collect again")
        return None
    if state is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"")
        state = {"query": cs.query_of(cfg), "complete": False, "apps": {a: _new_app() for a in appids}}
        if out.exists():  # the state of the file being replaced, restored if the new one has no review
            state["replaces"] = old["replaces"] if old is not None and "replaces" in old else old
        return state, set()
    diff = cs.differing_flags(state.get("query") or {}, cfg)
    if diff:
        raise UserError(f"{out}: collected with other settings: {diff}; use the file's values, pass --overwrite "
                        "to collect it again, or give another --out")
    if not state.get("complete") and not part.exists() and out.exists() and _finishable(state["apps"]):
        state["complete"] = True  # a kill came between renaming .part and saving the state
        cs.save_state(state_path, state)
    for a in appids:
        state["apps"].setdefault(a, _new_app())
    _drop_unnamed(out, state, appids)
    for st in state["apps"].values():
        _apply_max_reviews(st, cfg)
    if state.get("complete"):
        if all(st["done"] for st in state["apps"].values()):
            more = ", or raise --max_reviews to add more" if any(
                st.get("end") == "max_reviews" for st in state["apps"].values()) else ""
            console.print(f"{out}: already complete ({_saved(state):,} reviews); pass --overwrite to collect "
                          f"again{more}")
            return None
        cs.reopen_complete(out, part)
        state["complete"] = False
    seen, per_app = cs.repair_part(part)
    cs.check_part(part, state_path, state, per_app)
    for appid, st in state["apps"].items():  # the .part file is the truth (a kill may beat the state write)
        st["reviews"] = per_app[appid]
    console.print(f"{out}: resuming ({len(seen):,} reviews saved)")
    return state, seen


def _refuse_dropping(out: Path, state: dict[str, Any], appids: list[str]) -> None:
    """Raises UserError: ``--overwrite`` of a shared file would lose the reviews of apps this command does not name."""
    others = [a for a, st in state["apps"].items() if a not in appids and st.get("reviews")]
    if others:
        raise UserError(f"{out}: --overwrite would drop the reviews of app(s) {', '.join(others)}, which this command "
                        "does not name; name them too, or give another --out")


def _finishable(apps: dict[str, dict[str, Any]]) -> bool:
    """A file is finished once every app is done or failed and one is done."""
    return all(st["done"] or st.get("failed") for st in apps.values()) and any(st["done"] for st in apps.values())


def _saved(state: dict[str, Any]) -> int:
    return sum(st.get("reviews", 0) for st in state["apps"].values())


def _progressed(state: dict[str, Any]) -> bool:
    """Whether any app of ``state`` has a page fetched (a cursor to resume from) or a review saved."""
    return bool(_saved(state)) or any(st.get("pages") for st in state["apps"].values())


def _drop_unnamed(out: Path, state: dict[str, Any], appids: list[str]) -> None:
    """An unfinished app of a shared file that this command does not name stops being pending (a
    mistyped id must not block the file for ever); its saved reviews stay, and naming it again resumes it."""
    for a, st in state["apps"].items():
        if a in appids and st.get("end") == "dropped":
            st["done"], st["end"] = False, None
        elif a not in appids and not st["done"]:
            st["done"], st["end"] = True, "dropped"
            console.print(f"[yellow]{out}: app {a} is not in this command; no longer collected into this file "
                          "(what it saved stays; name it again to resume it)")


def _collect_file(out: Path, appids: list[str], cfg: CollectConfig, fetch: Fetcher) -> dict[str, Any]:
    """Collect ``appids`` into ``out``, under its lock (an unfinished app of the file that ``appids``
    leaves out is dropped from the apps still to collect: :func:`_drop_unnamed`).

    The file is finished (``.part`` renamed, or removed when no app had a review) once every app
    is done or failed and one is done: a failed app of a shared file is marked in the state and
    retried by a rerun, without holding back the others' reviews.

    Returns:
        ``{"file", "complete", "skipped", "stopped": reason or None, "failed": {appid: message},
        "details_failed": {appid: message}, "apps": {appid: {"reviews", "pages", "done", "end", "skipped"}}}``.
    """
    _, state_path, _ = cs.paths(out)
    with cs.locked(out):
        opened = _open(out, appids, cfg)
        if opened is None:
            return {"file": str(out), "complete": True, "skipped": True, "stopped": None, "failed": {},
                    "details_failed": {}, "apps": {}}
        state, seen = opened
        fetch.log = atomic.JsonlLog(log_path(out))
        fetch.log.write(event="start", pid=os.getpid(), out=str(out), appids=list(state["apps"]), query=state["query"],
                        max_reviews=cfg.max_reviews, resumed=bool(seen))
        details_failed: dict[str, str] = {}
        try:
            stopped, failed = _collect_apps(out, state, cfg, fetch, seen)
            complete = stopped is None and _finishable(state["apps"])
            if complete:
                cs.finish(out, cs.paths(out)[0], state_path, state, cfg.overwrite)
            if complete and cfg.with_details:
                stopped, details_failed = _details(out, [a for a in appids if state["apps"][a]["done"]], cfg, fetch)
        except BaseException as e:
            fetch.log.write(event="error", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            fetch.log.write(event="end", requests=fetch.requests, retries=fetch.retries,
                            complete=bool(state.get("complete")))
            fetch.log.close()
        if not complete:
            _forget_failed(out, state)
    apps = {a: {k: st.get(k) for k in ("reviews", "pages", "done", "end", "skipped")}
            for a, st in state["apps"].items()}
    return {"file": str(out), "complete": complete, "skipped": False, "stopped": stopped, "failed": failed,
            "details_failed": details_failed, "apps": apps}


def _forget_failed(out: Path, state: dict[str, Any]) -> None:
    """Remove the empty ``.part`` and the state of a new file that has no page of any app yet (every app failed, a
    wrong app id; or Steam's rate limit stopped the run before its first page): nothing is left to resume, and a
    rerun starts the same way."""
    part, state_path, _ = cs.paths(out)
    if out.exists() or _progressed(state) or (part.exists() and part.stat().st_size):
        return
    part.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)


def _collect_apps(out: Path, state: dict[str, Any], cfg: CollectConfig, fetch: Fetcher,
                  seen: set[str]) -> tuple[str | None, dict[str, str]]:
    """Page through every unfinished app of ``state``; an app that fails does not stop the others.

    Returns:
        ``(why the time bound or Steam's rate limit stopped the run, or None; {appid: error message})``;
        a failed app is marked ``"failed"`` in the state.
    """
    part, state_path, _ = cs.paths(out)
    failed: dict[str, str] = {}
    if all(st["done"] for st in state["apps"].values()):
        return None, failed  # no empty progress display
    with progress(TextColumn("{task.fields[pages]} pages"), TextColumn("{task.fields[rate]:.1f} reviews/s")) as bar, \
            open(part, "a", encoding="utf-8", errors="backslashreplace") as sink:  # a lone surrogate: escaped
        for appid, st in state["apps"].items():
            if st["done"]:
                continue
            st.pop("failed", None)
            page = _Pager(appid, st, cfg, fetch, seen, sink, lambda: cs.save_state(state_path, state))
            task = bar.add_task(f"app {appid}", total=page.shown_total(), completed=st["reviews"], pages=st["pages"],
                                rate=0.0)
            try:
                while not st["done"]:
                    page.next()
                    bar.update(task, completed=st["reviews"], pages=st["pages"], rate=page.rate(),
                               total=page.shown_total())
                    page.plain_line()
            except (Budget, RateLimited) as e:
                fetch.log.write(event="stopped", appid=appid, reason=str(e))
                kept = f"progress saved in {state_path}" if _progressed(state) else "nothing was saved yet"
                console.print(f"stopped at app {appid} page {st['pages'] + 1}: {e}; {kept}; "
                              "rerun the same command to continue", style="yellow", markup=False)
                return str(e), failed
            except UserError as e:
                failed[appid] = st["failed"] = e.message
                cs.save_state(state_path, state)
                fetch.log.write(event="app_failed", appid=appid, error=e.message)
                console.print(f"app {appid} failed: {e.message}; going on with the others", style="red", markup=False)
    return None, failed


class _Pager:
    """The pages of one app: fetch, de-duplicate, append to ``.part``, advance its state ``st``."""

    def __init__(self, appid: str, st: dict[str, Any], cfg: CollectConfig, fetch: Fetcher, seen: set[str], sink: Any,
                 save: Callable[[], None]) -> None:
        self.appid, self.st, self.cfg, self.fetch = appid, st, cfg, fetch
        self.seen, self.sink, self.save = seen, sink, save
        self.cursors: set[str] = set()
        self.idle = 0  # consecutive pages without a new review
        self.t0, self.got0 = time.monotonic(), st["reviews"]
        self.shown_at: float | None = None
        self.saved_cursor = st["cursor"] if st["pages"] else None  # from an earlier run, not from Steam just now

    def plain_line(self) -> None:
        """A plain progress line without a terminal: the first page, every :data:`PLAIN_EVERY_S`, the last."""
        now = time.monotonic()
        if self.st["done"] or self.shown_at is None or now - self.shown_at >= PLAIN_EVERY_S:
            self.shown_at = now
            plain_progress(f"app {self.appid} reviews", self.st["reviews"], self.shown_total(),
                           {"pages": self.st["pages"], "reviews/s": f"{self.rate():.1f}"})

    def rate(self) -> float:
        return (self.st["reviews"] - self.got0) / max(time.monotonic() - self.t0, 1e-6)

    def shown_total(self) -> int | None:
        """Steam's ``total_reviews`` capped by ``--max_reviews``, never below what is saved; the saved
        count once the app is done (Steam's total counts reviews the query does not return)."""
        st, cap = self.st, self.cfg.max_reviews
        if st["done"]:
            return st["reviews"]
        if st["total"] is None:
            return cap or None
        return max(st["reviews"], min(st["total"], cap) if cap else st["total"])

    def next(self) -> None:
        """Fetch the page at ``st["cursor"]``, append its new reviews (fsynced), then advance and save ``st``.

        Raises:
            UserError: a 4xx (a 400 on a cursor only when an earlier run saved it), Steam's
                ``success != 1``, or failures after ``--max_retries`` (``Fetcher``).
            Budget: the time bound.
        """
        st, cfg, cursor = self.st, self.cfg, self.st["cursor"]
        self.cursors.add(cursor)
        data = self.fetch.get_json(f"{cfg.base_url.rstrip('/')}/appreviews/{self.appid}", self._params(cursor),
                                   f"app {self.appid} page {st['pages'] + 1} (cursor {cursor!r})", _check_page,
                                   SAVED_CURSOR_REJECTED if cursor == self.saved_cursor else None)
        summary = data.get("query_summary")
        if st["total"] is None and isinstance(summary, dict) and isinstance(summary.get("total_reviews"), int):
            st["total"] = summary["total_reviews"]
        lines, skipped, cut = self._new_lines(data["reviews"])
        self.sink.writelines(lines)
        self.sink.flush()
        os.fsync(self.sink.fileno())
        st["pages"] += 1
        st["reviews"] += len(lines)
        st["skipped"] = st.get("skipped", 0) + skipped
        self.idle = 0 if lines else self.idle + 1
        new_cursor = data.get("cursor") or cursor
        st["end"] = self._end(data["reviews"], cursor, new_cursor)
        # a page cut short by --max_reviews keeps its own cursor: a raised --max_reviews asks for it again
        # (the reviews already saved are de-duplicated), whatever page size the server really sent
        st["done"], st["cursor"] = st["end"] is not None, cursor if cut else new_cursor
        self.save()
        self.fetch.log.write(event="page", appid=self.appid, page=st["pages"], cursor=cursor, next_cursor=new_cursor,
                             received=len(data["reviews"]), new=len(lines), skipped=skipped, saved=st["reviews"],
                             done=st["done"], end=st["end"])

    def _params(self, cursor: str) -> dict[str, Any]:
        cfg, n = self.cfg, self.cfg.num_per_page
        if cfg.max_reviews:
            n = max(1, min(n, cfg.max_reviews - self.st["reviews"]))
        params = {"json": 1, "language": cfg.language, "filter": cfg.filter, "review_type": cfg.review_type,
                  "purchase_type": cfg.purchase_type, "num_per_page": n, "cursor": cursor}
        if cfg.day_range is not None:
            params["day_range"] = cfg.day_range
        return params

    def _new_lines(self, reviews: list[dict]) -> tuple[list[str], int, bool]:
        """JSON lines of the reviews not seen before (up to ``--max_reviews``), how many were skipped
        for having no review text, and whether ``--max_reviews`` cut the page short. A non-object
        ``author`` (null) is dropped so prepare reads the record."""
        lines, skipped = [], 0
        for r in reviews:
            rid = str(r["recommendationid"])
            if rid in self.seen:
                continue
            if not isinstance(r.get("review"), str):
                self.seen.add(rid)  # counted once, however often Steam repeats it
                skipped += 1
                continue
            if self.cfg.max_reviews and self.st["reviews"] + len(lines) >= self.cfg.max_reviews:
                return lines, skipped, True
            if "author" in r and not isinstance(r["author"], dict):
                r = {k: v for k, v in r.items() if k != "author"}
            self.seen.add(rid)
            lines.append(json.dumps({**r, "appid": int(self.appid)}, ensure_ascii=False) + "\n")
        return lines, skipped, False

    def _end(self, reviews: list[dict], cursor: str, new_cursor: str) -> str | None:
        """Why the app ends after this page (``"end"``, ``"max_reviews"``, ``"stalled"``, ``"cycle"``), or ``None``."""
        if self.cfg.max_reviews and self.st["reviews"] >= self.cfg.max_reviews:
            return "max_reviews"
        if not reviews or new_cursor == cursor:
            if not reviews and new_cursor != cursor:
                self.fetch.log.write(event="empty_page_new_cursor", appid=self.appid, cursor=cursor,
                                     next_cursor=new_cursor)
                console.print(f"[yellow]app {self.appid}: an empty page with a new cursor; taking it as the end "
                              "(Steam's rule)")
            if not self.st["reviews"]:
                console.print(f"[yellow]app {self.appid}: Steam has no reviews for it with these settings; check the "
                              "app id, --language and --filter")
            return "end"
        if self.idle >= STALL_PAGES:
            console.print(f"[yellow]app {self.appid}: {STALL_PAGES} pages in a row brought no new review; "
                          "taking it as the end")
            return "stalled"
        if new_cursor in self.cursors:
            console.print(f"[yellow]app {self.appid}: Steam sent a cursor it had sent before; taking it as the end")
            return "cycle"
        return None


def log_path(out: Path) -> Path:
    """The JSON-lines event log (pages, retries) beside ``out``: ``raw/570.jsonl`` → ``raw/570.log.jsonl``."""
    return out.with_suffix(".log.jsonl")


def _details(out: Path, appids: list[str], cfg: CollectConfig, fetch: Fetcher) -> tuple[str | None, dict[str, str]]:
    """Fetch appdetails of ``appids`` missing from ``cs.details_path(out)`` (all with ``--overwrite``).
    Only ``success: true`` answers are saved, and a saved entry is kept when the new answer fails, so
    a later run asks again for the others. A failed request is a warning: the other apps go on.

    Returns:
        ``(why the time bound or Steam's rate limit stopped it, or None; {appid: why it has no appdetails})``.

    Raises:
        UserError: the saved appdetails file is unreadable (:func:`_read_details`).
    """
    path = cs.details_path(out)
    have = _read_details(path)
    failed: dict[str, str] = {}
    for appid in appids:
        if not cfg.overwrite and isinstance(have.get(appid), dict) and have[appid].get("success") is True:
            continue

        def check(data: Any, appid: str = appid) -> str | None:
            if not isinstance(data, dict) or not isinstance(data.get(appid), dict):
                return f"malformed appdetails: no entry for {appid}"
            return None

        try:
            data = fetch.get_json(f"{cfg.base_url.rstrip('/')}/api/appdetails",
                                  {"appids": appid, "l": cfg.details_language}, f"appdetails of app {appid}", check)
        except (Budget, RateLimited) as e:
            console.print(f"stopped before appdetails of {appid}: {e}; rerun to continue", style="yellow", markup=False)
            return str(e), failed
        except UserError as e:
            failed[appid] = e.message
            fetch.log.write(event="no_details", appid=appid, error=e.message)
            console.print(f"app {appid}: no appdetails ({e.message}); a rerun asks again", style="yellow", markup=False)
            continue
        entry = data[appid]
        if entry.get("success") is not True or not isinstance(entry.get("data"), dict):
            failed[appid] = NO_DETAILS
            fetch.log.write(event="no_details", appid=appid, answer=entry)
            console.print(f"[yellow]app {appid}: {NO_DETAILS}; "
                          f"a rerun asks again. prepare drops its reviews as unknown_game unless you name the game: "
                          f"--app_name {appid}=NAME")
            continue
        have[appid] = entry
        atomic.write_json(path, have)
    return None, failed


def _read_details(path: Path) -> dict[str, Any]:
    """The saved appdetails ``{appid: answer}`` of ``path`` (``{}`` when absent).

    Raises:
        UserError: ``path`` is not a JSON object (cut by hand or by a disk fault).
    """
    if not path.exists():
        return {}
    try:
        have = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        have = e
    if not isinstance(have, dict):
        why = f"not JSON ({have})" if isinstance(have, ValueError) else "not a JSON object"
        raise UserError(f"{path}: unreadable appdetails file: {why}; delete it and rerun to fetch it again")
    return have


def _details_file(out: Path, appids: list[str], cfg: CollectConfig, fetch: Fetcher) -> dict[str, Any]:
    """``--details_only``: appdetails of ``appids`` into ``cs.details_path(out)``; no reviews."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with cs.locked(out), atomic.JsonlLog(log_path(out)) as log:
        fetch.log = log
        stopped, failed = _details(out, appids, cfg, fetch)
        log.write(event="end", complete=stopped is None, requests=fetch.requests, retries=fetch.retries)
    return {"file": str(cs.details_path(out)), "complete": stopped is None, "skipped": False, "stopped": stopped,
            "failed": {}, "details_failed": failed, "apps": {}}


def _appids(cfg: CollectConfig) -> list[str]:
    """``--appid`` values split at commas (also full-width ``，``), stripped, read as users write them
    (:func:`~steam_persona.reviews.columns.steam_appid`: ``５７０``, a store URL), de-duplicated in order.

    Raises:
        UserError: none given, a non-number, or another flag out of range.
    """
    given = [a.strip() for item in cfg.appid for a in str(item).replace("，", ",").split(",") if a.strip()]
    if not given:
        raise UserError("collect: no --appid given; e.g. --appid 570 (the number in the store URL)")
    bad = [a for a in given if not int(steam_appid(a) or 0)]
    if bad:
        raise UserError(f"--appid {bad[0]}: app ids are numbers from 1 (store.steampowered.com/app/<id>/); fix it")
    appids = list(dict.fromkeys(steam_appid(a) for a in given))
    if not 1 <= cfg.num_per_page <= 100:
        raise UserError(f"--num_per_page {cfg.num_per_page}: Steam allows 1–100")
    seconds = {"timeout": cfg.timeout, "rate_limit": cfg.rate_limit, "max_time": cfg.max_time,
               "backoff_base": cfg.backoff_base, "backoff_max": cfg.backoff_max}
    odd = next((f"--{k} {v}" for k, v in seconds.items() if not math.isfinite(v)), None)
    if odd:
        raise UserError(f"{odd}: not a number of seconds or requests; give a finite number (--max_time 0 and "
                        "--rate_limit 0 mean no bound)")
    if min(cfg.max_reviews, cfg.rate_limit, cfg.max_retries, cfg.max_time, cfg.backoff_base, cfg.backoff_max) < 0 \
            or cfg.timeout <= 0:
        raise UserError("--max_reviews, --rate_limit, --max_retries, --max_time, --backoff_base and --backoff_max "
                        "must be >= 0 and --timeout > 0")
    for code in cfg.language.split(","):
        if code != "all" and code not in language_mod.STEAM_LANGUAGES:
            hint = language_mod.steam_language(code)
            fix = f"did you mean {hint}?" if hint else f"use all or one of {', '.join(language_mod.STEAM_LANGUAGES)}"
            raise UserError(f"--language {code}: not a Steam API language code; {fix}")
    if cfg.day_range is not None and cfg.filter != "all":
        console.print(f"[yellow]--day_range {cfg.day_range}: Steam applies it only with --filter all")
    return appids


def _jobs(cfg: CollectConfig, appids: list[str]) -> list[tuple[Path, list[str]]]:
    """The output files and the apps of each: one per app with ``{appid}`` in ``--out``, else one.
    Warns about an output that ``prepare`` would not pick up from a folder (no ``.jsonl``/``.json``/``.ndjson``).

    Raises:
        UserError: ``--out`` names a folder (ends in ``/`` or exists as one), or has an extension that
            ``prepare`` reads as another format (:data:`OTHER_FORMATS`).
    """
    if cfg.out.endswith(("/", os.sep)) or Path(cfg.out.replace("{appid}", appids[0])).is_dir():
        folder = cfg.out.rstrip("/" + os.sep) or "."
        raise UserError(f"--out {cfg.out}: a folder; name the file, e.g. --out {folder}/{{appid}}.jsonl (one per app)")
    jobs = [(Path(cfg.out.replace("{appid}", a)), [a]) for a in appids] if "{appid}" in cfg.out \
        else [(Path(cfg.out), appids)]
    suffix = Path(cfg.out).suffix.lower()
    if suffix in OTHER_FORMATS:
        raise UserError(f"--out {cfg.out}: {OTHER_FORMATS[suffix]}; name it .jsonl, e.g. --out "
                        f"{Path(cfg.out).with_suffix('.jsonl')}")
    if suffix not in (".jsonl", ".json", ".ndjson"):
        console.print(f"[yellow]--out {cfg.out}: prepare reads only .jsonl, .json, .ndjson, .csv, .tsv and .parquet "
                      "files from a folder, so it skips this one there without a note; give it to prepare by name, "
                      "or name it .jsonl")
    return jobs


def _one_file(out: Path, ids: list[str], cfg: CollectConfig, fetch: Fetcher, go_on: bool) -> dict[str, Any]:
    """One output file (reviews, or appdetails with ``--details_only``). With ``go_on``, a refusal of
    this file (its lock, settings or state) fails only its apps, so the other files get their turn.

    Raises:
        UserError: that refusal, without ``go_on``.
    """
    try:
        res = (_details_file if cfg.details_only else _collect_file)(out, ids, cfg, fetch)
        if res["skipped"] and cfg.with_details:  # a complete file still gets the appdetails it lacks
            details = _details_file(out, ids, cfg, fetch)
            res.update(complete=details["complete"], stopped=details["stopped"],
                       details_failed=details["details_failed"])
        return res
    except UserError as e:
        if not go_on:
            raise
        console.print(f"{e.message}; going on with the others", style="red", markup=False)
        return {"file": str(out), "complete": False, "skipped": False, "stopped": None,
                "failed": {a: e.message for a in ids}, "details_failed": {}, "apps": {}}


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect reviews for ``cfg.appid``; every output file gets its turn even when one fails.

    Returns:
        ``{"files": [see _collect_file], "complete": bool, "stopped": reason or None,
        "failed": {appid: message}, "details_failed": {appid: message}, "not_reached": [appids of the outputs a
        stop left untouched], "requests": int, "retries": int, "seconds": float}``.

    Raises:
        UserError: bad flags, or an output whose lock, settings or state forbid the run.
    """
    appids = _appids(cfg)
    jobs = _jobs(cfg, appids)
    t0 = time.monotonic()
    fetch = Fetcher(cfg, t0 + cfg.max_time if cfg.max_time > 0 else None)
    files: list[dict[str, Any]] = []
    try:
        with stop_signals_interrupt():  # SIGTERM / SIGHUP: saved, logged, exit 143 / 129, as Ctrl-C
            for out, ids in jobs:
                files.append(_one_file(out, ids, cfg, fetch, len(jobs) > 1))
                if files[-1]["stopped"]:
                    break
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; progress is saved: rerun the same command to resume")
        raise
    finally:
        fetch.close()
    return {"files": files, "complete": len(files) == len(jobs) and all(f["complete"] and not f["failed"]
                                                                        for f in files),
            "stopped": next((f["stopped"] for f in files if f["stopped"]), None),
            "failed": {a: m for f in files for a, m in f["failed"].items()},
            "details_failed": {a: m for f in files for a, m in f["details_failed"].items()},
            "not_reached": [a for _, ids in jobs[len(files):] for a in ids],
            "requests": fetch.requests, "retries": fetch.retries, "seconds": round(time.monotonic() - t0, 2)}


def _summary_rows(res: dict[str, Any]) -> list[tuple[object, object]]:
    rows: list[tuple[object, object]] = []
    for f in res["files"]:
        for a, s in f["apps"].items():
            note = " (failed: a rerun retries it)" if a in f["failed"] else "" if s["done"] else " (unfinished)"
            if s["done"] and not s["reviews"] and s["end"] == "end":
                note = " (Steam has none with these settings)"
            elif s["end"] == "dropped":
                note = " (not in this command: left as it was)"
            extra = f", {s['skipped']} without text skipped" if s.get("skipped") else ""
            pages = f"{s['pages']} page{'' if s['pages'] == 1 else 's'}"
            rows.append((f"app {a}", f"{s['reviews']:,} reviews, {pages}{extra}{note}"))
        rows += [(f"app {a}", "failed") for a in f["failed"] if a not in f["apps"]]
        rows += [(f"app {a}", f"no appdetails: {m}") for a, m in f["details_failed"].items()]
        done = "" if f["complete"] else " (unfinished: rerun to finish)" if f["file"].endswith(".appdetails.json") \
            else " (.part: rerun to finish)"
        if f["complete"] and not f["skipped"] and not Path(f["file"]).exists():
            done = " (not written: no reviews)"
        rows.append(("file", f["file"] + done))
    rows += [(f"app {a}", "not started (the run stopped first): a rerun collects it") for a in res["not_reached"]]
    return rows + [("requests", f"{res['requests']} ({res['retries']} retries)"), ("time", f"{res['seconds']:.1f} s")]


def run(cfg: CollectConfig) -> dict[str, Any]:
    """``steam-train collect``: :func:`collect`, a summary table, and exit 2 unless every file is complete.

    Steam's ``success: false`` for appdetails is a warning (listed in the summary; a rerun asks again),
    except with ``--details_only``, where it is the whole job; an appdetails request that failed (HTTP
    error or timeout after the retries) exits 2, as ``prepare`` would drop that app's reviews.

    Raises:
        UserError: as :func:`collect`; and at the end, after the summary, when an app failed (one line
            each above it), Steam's rate limit or the time bound stopped the run (the data is partial:
            rerun to continue), ``--details_only`` got no appdetails for an app, or an appdetails
            request failed (the reviews files are finished first).
    """
    res = collect(cfg)
    summary_table("collect", _summary_rows(res))
    for appid, message in res["failed"].items():
        console.print(f"app {appid}: {message}", markup=False, soft_wrap=True)
    if res["failed"]:
        others = {a for f in res["files"] for a in f["apps"]} - set(res["failed"])
        raise UserError(f"collect: {len(res['failed'])} app(s) failed (above)"
                        + ("; the others are saved" if others else "")
                        + "; rerun the same command to retry them, or leave a wrong app id out of it")
    if res["stopped"]:
        saved = any(Path(f["file"]).exists() or cs.paths(Path(f["file"]))[0].exists() for f in res["files"])
        raise UserError(f"collect: {res['stopped']}; " + ("the data is partial (.part): rerun the same command to "
                        "continue" if saved else "nothing was saved yet: rerun the same command later"))
    if cfg.details_only and res["details_failed"]:
        raise UserError(f"collect: no appdetails for app(s) {', '.join(res['details_failed'])} (above); the others "
                        "are saved; rerun the same command to ask again")
    unfetched = [a for a, m in res["details_failed"].items() if m != NO_DETAILS]
    if unfetched:
        raise UserError(f"collect: the appdetails request failed for app(s) {', '.join(unfetched)} (above); their "
                        "reviews are saved, but prepare would drop them as unknown_game: rerun the same command to "
                        "fetch the appdetails")
    return res


command = config.command(
    CollectConfig, run, name="collect", config_option="option",
    help="Download Steam reviews (appreviews API) to JSON Lines, one raw review + appid per line.\n\n"
         "Resumable: rerun the same command after an interruption (Ctrl-C, SIGTERM or SIGHUP: exit 128 + the signal's number), a failed "
         "app or appdetails request, Steam's rate limit or --max_time (these exit 2 with the data kept). One run "
         "at a time per output file. "
         "Example:\n\n"
         "steam-train collect --appid 570 --appid 730 --language schinese --max_reviews 2000 --with_details")
