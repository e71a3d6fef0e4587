"""The HTTP side of ``steam-train collect``: one polite client with a rate limit, retries with backoff
and jitter, ``Retry-After``, a whole-response deadline and the run's total time bound.

Backoff: ``sleep = uniform(0, min(backoff_max, backoff_base * 2**attempt))`` (full jitter, AWS
Architecture Blog, "Exponential Backoff And Jitter", 2015), and at least ``Retry-After`` (RFC 9110
§10.2.3: seconds or an HTTP-date) even above ``--backoff_max``.

Why our own deadline: httpx's ``timeout`` bounds each wait for bytes, not a whole response, so a
server that trickles one byte at a time would hold a request for ever. Each phase (connect, send,
headers) gets at most ``min(--timeout, time left)``; the body is streamed, the clock checked after
each chunk, and a timer shuts the socket (httpcore's documented ``network_stream`` extension) at
the deadline, so a server that stalls mid-body is cut off on time too.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import socket
import threading
import time
from typing import Any, Callable

import httpx

from steam_persona.common import atomic
from steam_persona.common.console import console
from steam_persona.common.errors import UserError

#: A ``Retry-After`` above this many seconds (or not finite) stops the run instead of sleeping: the
#: user reruns later rather than watching a frozen bar for hours.
RETRY_AFTER_MAX_S = 3600.0
#: A wait before a retry longer than this many seconds prints a line (short ones are only logged).
LONG_WAIT_S = 5.0


#: The problem of an HTTP 400 answer to a request with a ``cursor``.
REJECTED_CURSOR = "HTTP 400 (cursor rejected)"


class Budget(Exception):
    """The total time bound (``--max_time``) stops the run (not an error: the run can be resumed).

    ``str(e)`` says why, e.g. ``"time bound --max_time 5 s reached"``."""


class RateLimited(UserError):
    """Steam kept answering HTTP 429 past ``--max_retries``, or asked (``Retry-After``) to wait more
    than :data:`RETRY_AFTER_MAX_S`: the limit holds for the whole client, so the run stops
    (resumable) rather than failing every later app."""


class _Slow(Exception):
    """One response took longer than ``--timeout`` in all."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: ``"120"`` or an HTTP-date
    (``"Wed, 21 Oct 2026 07:28:00 GMT"``, measured from ``now``, Unix seconds); ``None`` when absent
    or unreadable (``nan``). A date in the past gives 0; ``inf`` or a far-future date stays large
    (the caller bounds it)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
        return None if seconds != seconds else max(0.0, seconds)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _hang_up(resp: httpx.Response) -> None:
    """Shut the socket under ``resp`` (from a timer thread): a blocked read returns at once."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class Fetcher:
    """GET JSON politely. ``deadline`` is the run's end on ``time.monotonic()`` (``None``: unbounded)."""

    def __init__(self, cfg: Any, deadline: float | None) -> None:
        self.cfg = cfg
        self.deadline = deadline
        self.client = httpx.Client(timeout=cfg.timeout, follow_redirects=True,
                                   headers={"User-Agent": "steam-persona-collect/0.1"})
        self._last = 0.0
        self.requests = 0
        self.retries = 0
        self.log: atomic.JsonlLog | None = None  # set per output file by the caller

    def close(self) -> None:
        self.client.close()

    def _left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def _sleep(self, seconds: float, why: str) -> None:
        if seconds > self._left():
            raise Budget(f"{why} would pass --max_time {self.cfg.max_time:g} s")
        if seconds > 0:
            time.sleep(seconds)

    def _wait_rate(self) -> None:
        if self._left() <= 0:
            raise Budget(f"time bound --max_time {self.cfg.max_time:g} s reached")
        if self.cfg.rate_limit > 0:
            self._sleep(max(0.0, self._last + 1.0 / self.cfg.rate_limit - time.monotonic()), "the rate limit's wait")
        self._last = time.monotonic()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): full jitter, at least ``retry_after``."""
        wait = random.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** attempt))
        return max(wait, retry_after) if retry_after is not None else wait

    def _get(self, url: str, params: dict[str, Any]) -> tuple[httpx.Response, bytes]:
        """One GET whose whole response (connect to last byte) ends within ``min(--timeout, time left)``.

        Raises:
            Budget: the run's time bound came first. _Slow: ``--timeout`` came first.
            httpx.TransportError: connection problems (retried by the caller).
        """
        limit = min(self.cfg.timeout, self._left())
        end = time.monotonic() + limit
        try:
            with self.client.stream("GET", url, params=params, timeout=httpx.Timeout(limit)) as resp:
                body = bytearray()
                timer = threading.Timer(max(0.0, end - time.monotonic()), _hang_up, (resp,))
                timer.start()
                try:
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if time.monotonic() > end:
                            break
                finally:
                    timer.cancel()
        except httpx.TransportError:
            if time.monotonic() < end:
                raise
        if time.monotonic() >= end:
            if self._left() <= 0:
                raise Budget(f"time bound --max_time {self.cfg.max_time:g} s reached during a request")
            raise _Slow()
        return resp, bytes(body)

    def get_json(self, url: str, params: dict[str, Any], what: str, check: Callable[[Any], str | None],
                 on_rejected_cursor: str | None = None) -> Any:
        """GET ``url`` and return its JSON once ``check(obj)`` returns ``None`` (else the problem as
        text; a problem starting with ``"!"`` is Steam's definite answer and is not retried). An HTTP
        400 on a ``cursor`` is retried as a hiccup, unless ``on_rejected_cursor`` (the cause and fix
        to report) is given.

        Raises:
            UserError: a 4xx other than 429 (a 400 on a cursor only with ``on_rejected_cursor``), a
                definite answer, or failures after ``--max_retries``.
            RateLimited: (a UserError) the failures after ``--max_retries`` were HTTP 429.
            Budget: the total time bound stops the run.
        """
        problem, retry_after = "", None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._wait_to_retry(attempt, what, problem, retry_after)
            self._wait_rate()
            self.requests += 1
            problem, retry_after, data = self._try(url, params, what)
            if not problem:
                problem = check(data) or ""
                if not problem:
                    return data
            if problem.startswith("!"):
                raise UserError(f"{url}: {what}: {problem[1:]}")
            if problem == REJECTED_CURSOR and on_rejected_cursor:
                raise UserError(f"{url}: {REJECTED_CURSOR} for {what}: {on_rejected_cursor}")
        if self.log:
            self.log.write(event="gave_up", what=what, problem=problem, tries=self.cfg.max_retries + 1)
        if problem == "HTTP 429":
            raise RateLimited(f"Steam kept answering HTTP 429 (rate limit) for {what} after "
                              f"{self.cfg.max_retries + 1} tries; wait a few minutes, lower --rate_limit or raise "
                              "--max_retries")
        raise UserError(f"{url}: {what}: {problem} after {self.cfg.max_retries + 1} tries; progress is saved, "
                        "rerun the same command to resume (or raise --max_retries / lower --rate_limit)")

    def _wait_to_retry(self, attempt: int, what: str, problem: str, retry_after: float | None) -> None:
        """Log and sleep the backoff before retry ``attempt``; a line on screen for a long one.

        Raises:
            RateLimited: ``Retry-After`` over :data:`RETRY_AFTER_MAX_S`. Budget: the wait passes ``--max_time``.
        """
        if retry_after is not None and retry_after > RETRY_AFTER_MAX_S:
            raise RateLimited(f"Steam asks to wait {retry_after:,.0f} s (Retry-After) before retrying {what} "
                              f"({problem}), more than {RETRY_AFTER_MAX_S:g} s; rerun later")
        wait = self.backoff(attempt - 1, retry_after)
        if self.log:
            self.log.write(event="retry", what=what, problem=problem, attempt=attempt, wait_s=round(wait, 3),
                           retry_after_s=retry_after)
        if wait > LONG_WAIT_S and wait <= self._left():
            why = "Steam's Retry-After" if retry_after is not None and wait == retry_after else "backoff"
            console.print(f"{problem} for {what}: waiting {wait:.0f} s ({why}) before retry {attempt} of "
                          f"{self.cfg.max_retries}", style="yellow", markup=False)
        self._sleep(wait, f"waiting {wait:.1f} s to retry {what} ({problem})")
        self.retries += 1

    def _try(self, url: str, params: dict[str, Any], what: str) -> tuple[str, float | None, Any]:
        """One request: ``(problem, retry_after_seconds, data)``; ``problem`` is ``""`` on a JSON answer."""
        try:
            resp, body = self._get(url, params)
        except _Slow:
            return f"no whole answer within --timeout {self.cfg.timeout:g} s", None, None
        except httpx.TransportError as e:
            return f"connection failed ({type(e).__name__}: {e})", None, None
        if resp.status_code == 429 or resp.status_code >= 500:
            return f"HTTP {resp.status_code}", retry_after_seconds(resp.headers.get("Retry-After")), None
        if resp.status_code == 400 and params.get("cursor", "*") != "*":
            return REJECTED_CURSOR, None, None
        if resp.status_code >= 400:
            raise UserError(f"{resp.url}: HTTP {resp.status_code} for {what}; check --appid and --base_url")
        try:
            return "", None, json.loads(body)
        except ValueError:
            return f"malformed page: not JSON (starts {body[:40].decode('utf-8', 'replace')!r})", None, None
