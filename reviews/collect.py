"""``steam-train collect``: download Steam reviews from the public ``appreviews`` API to JSON Lines.

API: ``GET {base_url}/appreviews/<appid>?json=1&cursor=…`` (../shared/reference/steam-api.md).
Paging follows the ``cursor`` each response returns (``*`` first; sent URL-encoded, as it holds
``+ / =``) and stops on an empty page, a cursor that comes back unchanged, or ``--max_reviews``.

Robustness:

* a rate limit (``--rate_limit`` requests per second) and, on HTTP 429, 5xx, timeouts, connection
  errors and malformed pages, retries with exponential backoff and full jitter
  (``sleep = uniform(0, min(backoff_max, backoff_base * 2**attempt))``, AWS Architecture Blog,
  "Exponential Backoff And Jitter", 2015), honouring ``Retry-After``; a bound on the total time;
* resumable: reviews are appended to ``<out>.part`` (flushed and fsynced per page), which is the
  record of the ids seen; after each page ``<out>.state.json`` records the next cursor per app
  (written atomically, after the reviews). A rerun of the same command after Ctrl-C, a kill or a
  crash re-reads the ids in ``.part`` and continues from the saved cursor, so a page fetched again
  adds no duplicate and no page is lost. (Keeping the ids in the state file too would rewrite
  all of them after every page: quadratic in the number of reviews.) When
  every app is done ``.part`` is renamed to ``<out>`` and the state file removed.

Output: one raw review object per line, unchanged apart from an added ``appid``. With
``--with_details`` the ``appdetails`` response (name, genres) of each app is saved once beside it
as ``<out stem>.appdetails.json``, which ``prepare`` picks up. Every page and retry is logged as
JSON lines in ``<out stem>.log.jsonl``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from rich.progress import TextColumn

from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona.common.config import arg
from steam_persona.common.console import console, progress, summary_table
from steam_persona.common.errors import UserError

#: Query parameters that must match between a run and the run it resumes.
_QUERY_FIELDS = ("language", "filter", "review_type", "purchase_type", "day_range", "num_per_page", "max_reviews")


@dataclass
class CollectConfig:
    """Settings of ``steam-train collect`` (= its flags = its YAML keys)."""

    appid: list[str] = arg([], "Steam app id(s) to collect; repeat the flag or comma-separate.")
    language: str = arg("schinese", "Steam API language code (schinese, tchinese, english, …) or 'all'.")
    filter: str = arg("recent", "Order: recent (creation time), updated (update time), all (helpfulness).",
                      choices=("recent", "updated", "all"))
    review_type: str = arg("all", "Which reviews: all, positive or negative.", choices=("all", "positive", "negative"))
    purchase_type: str = arg("all", "Which buyers: all, steam or non_steam_purchase.",
                             choices=("all", "steam", "non_steam_purchase"))
    day_range: int | None = arg(None, "With --filter all: only reviews from the last N days.")
    num_per_page: int = arg(100, "Reviews per request (1–100).")
    max_reviews: int = arg(0, "Stop after this many reviews per app (0 = all).")
    out: str = arg("raw/{appid}.jsonl", "Output JSON Lines; '{appid}' gives one file per app, else all apps "
                   "go into one file.")
    with_details: bool = arg(False, "Also fetch appdetails (name, genres) once per app, saved as "
                             "<out stem>.appdetails.json.")
    details_language: str = arg("schinese", "Language of appdetails names and genres (the 'l' parameter).")
    details_only: bool = arg(False, "Fetch only appdetails (name, genres) to <out stem>.appdetails.json, no reviews: "
                             "names for review archives that lack them (give them to prepare as an input).")
    base_url: str = arg("https://store.steampowered.com", "API root; point it at a mirror or a test server.")
    rate_limit: float = arg(1.0, "Most requests per second (0 = no limit). Be polite: Steam answers 429 "
                            "when pushed.")
    timeout: float = arg(30.0, "Seconds to wait for one response.")
    max_retries: int = arg(6, "Retries of one request on 429, 5xx, timeouts and malformed pages.")
    backoff_base: float = arg(1.0, "First retry waits up to this many seconds; doubles each retry (with jitter).")
    backoff_max: float = arg(60.0, "Longest wait between retries (seconds).")
    max_time: float = arg(3600.0, "Stop after this many seconds in all (0 = no bound); rerun to continue.")
    overwrite: bool = arg(False, "Collect again even when the output file is already complete.")


class _Budget(Exception):
    """The total time bound was reached (not an error: the run stops and can be resumed)."""


class _Fetcher:
    """One polite HTTP client: rate limit, retries with backoff + jitter, total-time bound."""

    def __init__(self, cfg: CollectConfig, deadline: float | None) -> None:
        self.cfg = cfg
        self.deadline = deadline
        self.client = httpx.Client(timeout=cfg.timeout, follow_redirects=True,
                                   headers={"User-Agent": "steam-persona-collect/0.1"})
        self._last = 0.0
        self.requests = 0
        self.retries = 0
        self.log: atomic.JsonlLog | None = None  # set per output file by _collect_file

    def close(self) -> None:
        self.client.close()

    def _sleep(self, seconds: float) -> None:
        if self.deadline is not None and time.monotonic() + seconds > self.deadline:
            raise _Budget()
        if seconds > 0:
            time.sleep(seconds)

    def _wait_rate(self) -> None:
        if self.cfg.rate_limit > 0:
            self._sleep(max(0.0, self._last + 1.0 / self.cfg.rate_limit - time.monotonic()))
        elif self.deadline is not None and time.monotonic() > self.deadline:
            raise _Budget()
        self._last = time.monotonic()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): full jitter, at least Retry-After."""
        cap = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** attempt)
        wait = random.uniform(0, cap)
        return max(wait, min(retry_after, self.cfg.backoff_max)) if retry_after else wait

    def get_json(self, url: str, params: dict[str, Any], what: str, check: Any) -> dict:
        """GET ``url`` and return its JSON object once ``check(obj)`` returns ``None`` (else the
        problem as text). Retries transient failures; raises UserError when they persist or on a
        4xx other than 429."""
        problem, retry_after = "", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
                wait = self.backoff(attempt - 1, retry_after)
                if self.log:
                    self.log.write(event="retry", what=what, problem=problem, attempt=attempt, wait_s=round(wait, 3))
                self._sleep(wait)
            retry_after = None
            self._wait_rate()
            self.requests += 1
            try:
                resp = self.client.get(url, params=params)
            except httpx.TimeoutException:
                problem = f"no answer within {self.cfg.timeout:g} s"
                continue
            except httpx.TransportError as e:
                problem = f"connection failed ({type(e).__name__}: {e})"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                problem = f"HTTP {resp.status_code}"
                ra = resp.headers.get("Retry-After", "")
                retry_after = float(ra) if ra.replace(".", "", 1).isdigit() else None
                continue
            if resp.status_code >= 400:
                raise UserError(f"{resp.url}: HTTP {resp.status_code} for {what}; check --appid and --base_url")
            try:
                data = resp.json()
            except ValueError:
                problem = f"malformed page: not JSON (starts {resp.text[:40]!r})"
                continue
            problem = check(data) or ""
            if not problem:
                return data
            if problem.startswith("!"):  # a definite answer, not a glitch: no retry
                raise UserError(f"{resp.url}: {problem[1:]}")
        if self.log:
            self.log.write(event="gave_up", what=what, problem=problem, tries=self.cfg.max_retries + 1)
        raise UserError(f"{url}: {what}: {problem} after {self.cfg.max_retries + 1} tries; progress is saved, "
                        "rerun the same command to resume (or raise --max_retries / lower --rate_limit)")


def _check_page(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "malformed page: not a JSON object"
    if data.get("success") != 1:
        return f"!Steam answered success={data.get('success')!r}; check the app id and --language/--filter values"
    if not isinstance(data.get("reviews"), list):
        return "malformed page: 'reviews' is not a list"
    bad = next((i for i, r in enumerate(data["reviews"], 1)
                if not isinstance(r, dict) or "recommendationid" not in r or "review" not in r), None)
    if bad is not None:
        return f"malformed page: review {bad} has no recommendationid/review"
    if data["reviews"] and not isinstance(data.get("cursor"), str):
        return "malformed page: no 'cursor'"
    return None


def _query(cfg: CollectConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _QUERY_FIELDS}


def _repair_part(part: Path) -> tuple[set[str], Counter[str]]:
    """Read the review ids already saved in ``part`` and count them per app; cut a torn last line
    left by a kill."""
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
            raise UserError(f"{part}: line {n} is not a saved review; delete {part} and its .state.json to start over") from None
    return ids, per_app


def _collect_file(out: Path, appids: list[str], cfg: CollectConfig, fetch: _Fetcher) -> dict[str, Any]:
    """Collect ``appids`` into ``out`` (resuming a saved state). Returns per-app counts."""
    part = out.with_name(out.name + ".part")
    state_path = out.with_name(out.name + ".state.json")
    if out.exists() and not state_path.exists() and not cfg.overwrite:
        n = sum(1 for _ in open(out, encoding="utf-8"))
        console.print(f"{out}: already complete ({n:,} reviews); pass --overwrite to collect again")
        return {"file": str(out), "complete": True, "skipped": True, "apps": {}}
    state, seen = _open_state(out, part, state_path, cfg)
    for appid in appids:
        state["apps"].setdefault(appid, {"cursor": "*", "done": False, "pages": 0, "reviews": 0, "total": None})
    fetch.log = atomic.JsonlLog(log_path(out))

    def save() -> None:
        atomic.write_json(state_path, state, indent=None)

    complete = True
    with progress(TextColumn("{task.fields[pages]} pages"), TextColumn("{task.fields[rate]:.1f} reviews/s")) as bar, \
            open(part, "a", encoding="utf-8") as sink:
        for appid in appids:
            st = state["apps"][appid]
            if st["done"]:
                continue
            task = bar.add_task(f"app {appid}", total=st["total"], completed=st["reviews"], pages=st["pages"], rate=0.0)
            t0, got0 = time.monotonic(), st["reviews"]
            try:
                while not st["done"]:
                    _collect_page(appid, st, cfg, fetch, seen, sink, save)
                    elapsed = max(time.monotonic() - t0, 1e-6)
                    bar.update(task, completed=st["reviews"], pages=st["pages"], rate=(st["reviews"] - got0) / elapsed,
                               total=st["reviews"] if st["done"] else st["total"])
            except _Budget:
                complete = False
                console.print(f"[yellow]time bound --max_time {cfg.max_time:g} s reached at app {appid} page "
                              f"{st['pages'] + 1}; progress saved in {state_path}; rerun the same command to continue")
                break
    if complete and cfg.with_details:
        complete = _details(out, appids, cfg, fetch)
    fetch.log.write(event="end", complete=complete, requests=fetch.requests, retries=fetch.retries)
    fetch.log.close()
    result = {"file": str(out), "complete": complete, "skipped": False,
              "apps": {a: {k: state["apps"][a][k] for k in ("reviews", "pages", "done")} for a in appids}}
    if complete:
        os.replace(part, out)
        state_path.unlink()
    return result


def _open_state(out: Path, part: Path, state_path: Path, cfg: CollectConfig) -> tuple[dict[str, Any], set[str]]:
    """The resume state and the review ids already in ``part`` (repaired after a kill), or a fresh state
    and an empty ``part``.

    Raises:
        UserError: the state file is unreadable or was saved with other settings.
    """
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{state_path}: unreadable resume state; delete it and {part} to start over") from None
        if state.get("query") != _query(cfg):
            raise UserError(f"{state_path}: saved by a run with other settings ({state.get('query')}); rerun with "
                            f"those, or delete it and {part} to start over")
        seen, per_app = _repair_part(part)
        for appid, st in state["apps"].items():  # the .part file is the truth (a kill may beat the state write)
            st["reviews"] = per_app[appid]
        console.print(f"{out}: resuming ({len(seen):,} reviews saved)")
    else:
        state = {"query": _query(cfg), "apps": {}}
        seen = set()
        out.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(b"")
    return state, seen


def _collect_page(appid: str, st: dict[str, Any], cfg: CollectConfig, fetch: _Fetcher, seen: set[str], sink: Any,
                  save: Callable[[], None]) -> None:
    """Fetch the next page of ``appid`` at ``st["cursor"]``, append its new reviews to ``sink`` (fsynced),
    advance ``st`` (cursor, pages, reviews, total, done) and ``save()`` the state. A page with no reviews, the same or no next
    cursor, or ``--max_reviews`` reached ends the app.

    Raises:
        UserError: the page is malformed (``_check_page``) or the server keeps failing (``_Fetcher``).
    """
    url_params = {"json": 1, "language": cfg.language, "filter": cfg.filter, "review_type": cfg.review_type,
                  "purchase_type": cfg.purchase_type, "num_per_page": cfg.num_per_page}
    if cfg.day_range is not None:
        url_params["day_range"] = cfg.day_range
    cursor = st["cursor"]
    data = fetch.get_json(f"{cfg.base_url.rstrip('/')}/appreviews/{appid}", {**url_params, "cursor": cursor},
                          f"app {appid} page {st['pages'] + 1} (cursor {cursor!r})", _check_page)
    if st["total"] is None and isinstance(data.get("query_summary"), dict):
        total = data["query_summary"].get("total_reviews")
        if isinstance(total, int):
            st["total"] = min(total, cfg.max_reviews) if cfg.max_reviews else total
    lines = []
    for r in data["reviews"]:
        rid = str(r["recommendationid"])
        if rid in seen:
            continue
        if cfg.max_reviews and st["reviews"] + len(lines) >= cfg.max_reviews:
            break
        seen.add(rid)
        lines.append(json.dumps({**r, "appid": int(appid) if appid.isdigit() else appid}, ensure_ascii=False) + "\n")
    sink.writelines(lines)
    sink.flush()
    os.fsync(sink.fileno())
    st["pages"] += 1
    st["reviews"] += len(lines)
    new_cursor = data.get("cursor")
    st["done"] = (not data["reviews"] or new_cursor == cursor or not new_cursor
                  or bool(cfg.max_reviews and st["reviews"] >= cfg.max_reviews))
    st["cursor"] = new_cursor or cursor
    save()
    fetch.log.write(event="page", appid=appid, page=st["pages"], cursor=cursor, next_cursor=new_cursor,
                    received=len(data["reviews"]), new=len(lines), saved=st["reviews"], done=st["done"])


def log_path(out: Path) -> Path:
    """The JSON-lines event log (pages, retries) beside ``out``: ``raw/570.jsonl`` → ``raw/570.log.jsonl``."""
    return out.with_suffix(".log.jsonl")


def details_path(out: Path) -> Path:
    """Where ``--with_details`` stores appdetails for ``out``: ``raw/570.jsonl`` → ``raw/570.appdetails.json``."""
    return out.with_suffix(".appdetails.json")


def _details(out: Path, appids: list[str], cfg: CollectConfig, fetch: _Fetcher) -> bool:
    path = details_path(out)
    have = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    for appid in appids:
        if appid in have:
            continue

        def check(data: Any, appid: str = appid) -> str | None:
            if not isinstance(data, dict) or not isinstance(data.get(appid), dict):
                return f"malformed appdetails: no entry for {appid}"
            return None

        try:
            data = fetch.get_json(f"{cfg.base_url.rstrip('/')}/api/appdetails", {"appids": appid, "l": cfg.details_language},
                                  f"appdetails of app {appid}", check)
        except _Budget:
            console.print(f"[yellow]time bound reached before appdetails of {appid}; rerun to continue")
            return False
        have[appid] = data[appid]
        atomic.write_json(path, have)
    return True


def _details_file(out: Path, appids: list[str], cfg: CollectConfig, fetch: _Fetcher) -> dict[str, Any]:
    """``--details_only``: appdetails of ``appids`` into ``details_path(out)``; no reviews."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fetch.log = atomic.JsonlLog(log_path(out))
    complete = _details(out, appids, cfg, fetch)
    fetch.log.write(event="end", complete=complete, requests=fetch.requests, retries=fetch.retries)
    fetch.log.close()
    return {"file": str(details_path(out)), "complete": complete, "skipped": False, "apps": {}}


def run(cfg: CollectConfig) -> dict[str, Any]:
    """Collect reviews for ``cfg.appid``.

    Returns:
        ``{"files": [{"file", "complete", "skipped", "apps": {appid: {"reviews", "pages", "done"}}}],
        "complete": bool, "requests": int, "retries": int, "seconds": float}``.

    Raises:
        UserError: bad flags, a 4xx answer, Steam's ``success != 1``, a request that keeps failing
            after ``--max_retries`` (progress is kept: rerun to resume), or resume state from
            other settings.
    """
    appids = [a.strip() for item in cfg.appid for a in str(item).split(",") if a.strip()]
    if not appids:
        raise UserError("collect: no --appid given; e.g. --appid 570 (the number in the store URL)")
    bad = [a for a in appids if not a.isdigit()]
    if bad:
        raise UserError(f"--appid {bad[0]}: app ids are numbers (store.steampowered.com/app/<id>/); fix it")
    if not 1 <= cfg.num_per_page <= 100:
        raise UserError(f"--num_per_page {cfg.num_per_page}: Steam allows 1–100")
    if cfg.max_reviews < 0 or cfg.rate_limit < 0 or cfg.max_retries < 0 or cfg.timeout <= 0:
        raise UserError("--max_reviews, --rate_limit and --max_retries must be >= 0 and --timeout > 0")
    if "{appid}" in cfg.out:
        jobs = [(Path(cfg.out.replace("{appid}", a)), [a]) for a in appids]
    else:
        jobs = [(Path(cfg.out), appids)]
    t0 = time.monotonic()
    fetch = _Fetcher(cfg, t0 + cfg.max_time if cfg.max_time > 0 else None)
    files = []
    try:
        for out, ids in jobs:
            res = _details_file(out, ids, cfg, fetch) if cfg.details_only else _collect_file(out, ids, cfg, fetch)
            files.append(res)
            if not res["complete"]:
                break
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; progress is saved: rerun the same command to resume")
        raise
    finally:
        fetch.close()
    result = {"files": files, "complete": len(files) == len(jobs) and all(f["complete"] for f in files),
              "requests": fetch.requests, "retries": fetch.retries, "seconds": round(time.monotonic() - t0, 2)}
    rows: list[tuple[object, object]] = []
    for f in files:
        for a, s in f["apps"].items():
            rows.append((f"app {a}", f"{s['reviews']:,} reviews, {s['pages']} pages" + ("" if s["done"] else " (unfinished)")))
        rows.append(("file", f["file"] + ("" if f["complete"] else " (.part: rerun to finish)")))
    rows += [("requests", f"{fetch.requests} ({fetch.retries} retries)"), ("time", f"{result['seconds']:.1f} s")]
    summary_table("collect", rows)
    return result


command = config.command(
    CollectConfig, run, name="collect", config_option="option",
    help="Download Steam reviews (appreviews API) to JSON Lines, one raw review + appid per line.\n\n"
         "Resumable: rerun the same command after an interruption. Example:\n\n"
         "steam-train collect --appid 570 --appid 730 --language schinese --max_reviews 2000 --with_details")
