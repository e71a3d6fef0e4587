"""A local stand-in for Steam's store API that replays pages built from real reviews.

Steam's servers cannot be reached from tests, so :class:`SteamReplay` serves
``GET /appreviews/<appid>`` and ``GET /api/appdetails`` over real HTTP (``http.server`` in a
thread). Pages are built at test time from the archived reviews in
``../shared/data/raw/appreviews/`` (nothing is copied into the repo): the reviews of an app in
archive order, ``num_per_page`` from the request's position. Cursors look like Steam's (base64
with ``+``, ``/`` and ``=``) and name a position, so the page size may change between requests; a
client that does not URL-encode them gets HTTP 400 here, as a wrong cursor would derail it on
Steam. After the last page the API answers an empty page with the same cursor, as Steam does.

Faults for robustness tests go in ``faults``, a list consumed one per ``/appreviews`` request:
an ``int`` answers that HTTP status, ``(status, headers)`` that status with those headers (e.g.
``Retry-After``), ``"malformed"`` a truncated JSON body, ``"bad_review"`` a page whose first review
lacks its id, ``"slow"`` waits ``slow_seconds`` before answering, ``"trickle"`` sends the page one
byte every ``trickle_seconds``, ``"stall"`` sends one byte after ``trickle_seconds`` and the rest
after ``slow_seconds`` more, ``"repeat_cursor"`` answers the page with the request's own cursor,
``("cursor", c)`` answers it with cursor ``c``, ``"dups"`` answers the first reviews again with a
fresh cursor whatever was asked (Steam's endless ``filter=all``), ``None`` answers normally.
``details_faults`` does the same for ``/api/appdetails`` requests (an ``int`` status or
``(status, headers)``). ``answers`` maps an app id to a fixed JSON answer (e.g. ``{"success": 2}``). ``min_page`` makes pages at least that long whatever ``num_per_page`` asks (a server that
ignores small page sizes). ``delay`` slows every
page (to interrupt a run in the middle). ``requests`` records each query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def cursor_for(appid: str, position: int) -> str:
    """A Steam-like cursor for the reviews after the first ``position``; it always contains ``+``, ``/`` and ``=``."""
    digest = base64.b64encode(hashlib.sha1(f"{appid}:{position}".encode()).digest()).decode()
    return f"AoJ{digest[:6]}+{position}/{digest[6:10]}=="


def _position(appid: str, cursor: str) -> int | None:
    if cursor == "*":
        return 0
    m = re.search(r"\+(\d+)/.{4}==$", cursor)
    return int(m.group(1)) if m and cursor_for(appid, int(m.group(1))) == cursor else None


class SteamReplay:
    """Serve recorded review pages for some apps; use as a context manager.

    Args:
        reviews: app id → list of raw review objects (as in the API's ``reviews`` list).
        details: app id → appdetails ``data`` object (name, genres).
    """

    def __init__(self, reviews: dict[str, list[dict]], details: dict[str, dict] | None = None) -> None:
        self.reviews = reviews
        self.details = details or {}
        self.faults: list = []
        self.details_faults: list = []
        self.delay = 0.0
        self.min_page = 0
        self.slow_seconds = 2.0
        self.trickle_seconds = 0.1
        self.answers: dict[str, dict] = {}
        self._fresh = 0
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"replay": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @classmethod
    def from_archives(cls, files: list[Path], details: dict[str, dict] | None = None) -> "SteamReplay":
        """Build from archived dumps ``review_<appid>.json`` (``reviews`` is a dict keyed by id)."""
        reviews = {}
        for f in files:
            appid = f.stem.split("_")[-1]
            reviews[appid] = list(json.loads(f.read_text(encoding="utf-8"))["reviews"].values())
        return cls(reviews, details)

    def __enter__(self) -> "SteamReplay":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self, details: bool = False):
        faults = self.details_faults if details else self.faults
        with self._lock:
            return faults.pop(0) if faults else None

    def page(self, appid: str, cursor: str, n: int) -> dict | None:
        """The API answer for ``cursor`` (``None`` for an unknown cursor)."""
        revs = self.reviews.get(appid, [])
        i = _position(appid, cursor)
        if i is None:
            return None
        chunk = revs[i:i + n]
        body = {"success": 1, "cursor": cursor_for(appid, i + len(chunk)) if chunk else cursor, "reviews": chunk}
        if i == 0:
            body["query_summary"] = {"num_reviews": len(chunk), "total_reviews": len(revs)}
        return body

    def fresh_cursor(self) -> str:
        with self._lock:
            self._fresh += 1
            return cursor_for("fresh", self._fresh)


class _Handler(BaseHTTPRequestHandler):
    replay: SteamReplay

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: str | bytes, ctype: str = "application/json", headers: dict | None = None,
              trickle: float = 0.0, stall: tuple[float, float] | None = None) -> None:
        # a lone surrogate (half an emoji) goes as its JSON escape, as Steam sends one
        data = body.encode("utf-8", "backslashreplace") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if stall:
            try:
                self.wfile.flush()
                time.sleep(stall[0])
                self.wfile.write(data[:1])
                self.wfile.flush()
                time.sleep(stall[1])
                self.wfile.write(data[1:])
            except OSError:
                pass
            return
        if not trickle:
            self.wfile.write(data)
            return
        for i in range(len(data)):  # until the client hangs up
            try:
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(trickle)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        rp = self.replay
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        rp.requests.append({"path": parts.path, "query": q, "raw_query": parts.query})
        if parts.path.startswith("/api/appdetails"):
            appid = q.get("appids", "")
            fault = rp.next_fault(details=True)
            if fault is not None:
                status, headers = fault if isinstance(fault, tuple) else (fault, {})
                self._send(status, "<html>error</html>", "text/html", headers=headers)
                return
            data = rp.details.get(appid)
            self._send(200, json.dumps({appid: {"success": True, "data": data} if data else {"success": False}}))
            return
        if not parts.path.startswith("/appreviews/"):
            self._send(404, "not found", "text/plain")
            return
        fault = rp.next_fault()
        if rp.delay:
            time.sleep(rp.delay)
        if isinstance(fault, int):
            self._send(fault, "<html>error</html>", "text/html")
            return
        if isinstance(fault, tuple) and isinstance(fault[0], int):
            self._send(fault[0], "<html>error</html>", "text/html", headers=fault[1])
            return
        if fault == "slow":
            time.sleep(rp.slow_seconds)
        appid = parts.path.rsplit("/", 1)[-1]
        if appid in rp.answers:
            self._send(200, json.dumps(rp.answers[appid]))
            return
        n = max(int(q.get("num_per_page", "20")), rp.min_page)
        body = rp.page(appid, "*" if fault == "dups" else q.get("cursor", ""), n)
        if body is None:
            self._send(400, json.dumps({"success": 2, "error": f"unknown cursor {q.get('cursor')!r}"}))
            return
        if fault == "repeat_cursor":
            body["cursor"] = q.get("cursor")
        if fault == "dups":
            body["cursor"] = rp.fresh_cursor()
        if isinstance(fault, tuple) and fault[0] == "cursor":
            body["cursor"] = fault[1]
        if fault == "bad_review" and body["reviews"]:
            body["reviews"] = [{"review": "no id"}] + body["reviews"][1:]
        text = json.dumps(body, ensure_ascii=False)
        if fault == "malformed":
            text = text[: len(text) // 2]
        if fault == "stall":
            self._send(200, text, stall=(rp.trickle_seconds, rp.slow_seconds))
            return
        self._send(200, text, trickle=rp.trickle_seconds if fault == "trickle" else 0.0)
