"""Flat review tables (CSV/TSV, JSON, JSON Lines, Parquet rows) → :class:`~steam_persona.reviews.sources.Review`.

Each column is matched to one of our fields by its header (:data:`ALIASES`: Steam API names,
flattened as ``author.playtime_forever``; store-page scrape headers ``Tag, Hours, Date, Content,
AppID``; Chinese survey headers ``用户名, 推荐, 游戏时长, 评论``), or by ``--columns field=header,…``
(LLaMA-Factory's ``columns`` idea). Values are parsed leniently: ``推荐`` / ``Not Recommended`` /
``true`` / ``1`` for ``voted_up``; ``总时数 30.7 小时`` / ``30.7 hrs on record`` for hours; Steam's
``playtime_*`` fields are minutes.

Author columns (user names, steam ids) never reach the outputs: they are kept on the record only so
that the cleaning rules can remove the author's own name from the text.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import math
import re
from typing import Any

from steam_persona.common.errors import UserError
from steam_persona.reviews import noise

#: our field → accepted header names, compared after :func:`_norm` (case, spaces, ``_``/``-``/``.``).
ALIASES: dict[str, tuple[str, ...]] = {
    "review": ("review", "review_text", "reviewtext", "text", "content", "comment", "comments", "body",
               "user_review", "review_content", "review_body", "评论", "评论内容", "评测", "评测内容", "内容",
               "评价", "评价内容", "正文", "留言"),
    "voted_up": ("voted_up", "recommended", "recommend", "is_recommended", "recommendation", "tag", "verdict",
                 "rating", "review_score", "user_recommends", "is_positive", "推荐", "是否推荐", "评价类型", "推荐与否"),
    "playtime_minutes": ("author.playtime_at_review", "author.playtime_forever", "playtime_at_review",
                         "playtime_forever", "author_playtime_forever", "author_playtime_at_review",
                         "minutes_played", "playtime_minutes"),
    "playtime_hours": ("hours", "playtime_hours", "hours_played", "hour_played", "playtime", "play_time", "hours_on_record",
                       "游戏时长", "时长", "总时数", "游玩时长", "游戏时间"),
    "language": ("language", "lang", "review_language", "语言"),
    "appid": ("appid", "app_id", "steam_appid", "item_id", "game_id", "steamappid", "游戏id", "appid号"),
    "app_name": ("app_name", "game", "game_name", "title", "game_title", "游戏", "游戏名", "游戏名称"),
    "tags": ("tags", "genres", "genre", "标签", "游戏标签", "类型"),
    "votes_up": ("votes_up", "helpful", "votes_helpful", "helpful_votes", "review_votes", "found_helpful",
                 "helpful_count", "有用", "有价值"),
    "review_id": ("recommendationid", "review_id", "reviewid"),
    "author": ("author", "user", "username", "user_name", "author_name", "author.personaname", "personaname",
               "nickname", "name", "steam_name", "profile_name", "reviewer", "reviewer_name", "persona_name",
               "steam_user", "user_nickname", "用户名", "用户", "昵称", "作者", "玩家", "评测者", "用户昵称", "玩家昵称"),
    "author_id": ("author.steamid", "steamid", "steam_id", "author_steamid", "user_id", "userid", "author_id"),
    "timestamp_updated": ("timestamp_updated", "updated", "updated_at", "last_updated", "last_edited", "date_updated",
                          "time_updated", "edited_at"),
    "timestamp_created": ("timestamp_created", "created", "created_at", "date_created", "time_created", "date_posted",
                          "posted_at"),
}
FIELDS = tuple(ALIASES)
_AUTHOR_FIELDS = ("author", "author_id")


def _norm(header: str) -> str:
    """A header as :data:`ALIASES` are compared: no case, spaces, ``_ - .``, BOM, or the question mark, colon or
    asterisk a survey or form export puts around its questions (``Recommended?``, ``Review:``, ``*Review``)."""
    return re.sub(r"[\s_\-.]+", "", header.strip().lstrip("\ufeff").strip("?？:：!！* ").lower())


_LOOKUP = {_norm(a): f for f, names in ALIASES.items() for a in names}


#: a playtime header's unit suffix: ``Playtime (hours)``, ``playtime_mins``, ``游戏时长(分钟)``.
_UNIT = re.compile(r"^(?P<base>.+?)[(（\[]?(?:(?P<min>minutes?|mins?|分钟)|hours?|hrs?|h|小时)[)）\]]?$")


@functools.lru_cache(maxsize=4096)  # called for every key of every record; a file repeats a few headers
def field_of(header: str) -> str | None:
    """Our field for a header by :data:`ALIASES` (``"Content"`` → ``"review"``), else ``None``. A
    playtime header with a unit (``Playtime (hours)``, ``playtime_mins``, ``游戏时长(分钟)``) is
    ``playtime_minutes`` or ``playtime_hours`` by that unit."""
    key = _norm(header)
    if key in _LOOKUP:
        return _LOOKUP[key]
    m = _UNIT.match(key)
    if m and _LOOKUP.get(m["base"]) in ("playtime_hours", "playtime_minutes"):
        return "playtime_minutes" if m["min"] else "playtime_hours"
    return None


def parse_columns(spec: str) -> dict[str, str]:
    """``"review=评论,voted_up=推荐"`` → ``{"review": "评论", "voted_up": "推荐"}``.

    Raises:
        UserError: an unknown field or an item without ``=``.
    """
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise UserError(f"--columns '{item}': write FIELD=COLUMN, e.g. review=评论")
        if key not in FIELDS:
            raise UserError(f"--columns '{item}': unknown field '{key}'; use {', '.join(FIELDS)}")
        out[key] = value.strip()
    return out


def flatten(rec: dict, prefix: str = "") -> dict[str, Any]:
    """``{"author": {"steamid": 1}}`` → ``{"author.steamid": 1}`` (Steam API records in JSON)."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def detect(headers: list[str], given: dict[str, str], path: Any,
           samples: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Map our fields to the file's headers: ``given`` (``--columns``) first, then :data:`ALIASES`.

    Returns ``{field: header}``; a ``playtime_minutes`` column wins over a ``playtime_hours`` one.
    ``samples`` (the first rows) let the error suggest the column with the longest text.

    Raises:
        UserError: a ``--columns`` header the file lacks; no review-text column; or two headers that are one
            name but for case, spaces and ``_ - .`` (``review`` and ``Review``) for a field ``given`` does not name,
            where either could be meant. The message lists the columns found or names both and a ``--columns``
            line that would work.
    """
    mapping: dict[str, str] = {}
    for f, h in given.items():
        if h not in headers:
            raise UserError(f"{path}: --columns {f}={h}: no such column; columns found: {', '.join(headers[:20])}")
        mapping[f] = h
    _refuse_twins(headers, given, path)
    taken = set(mapping.values())
    for h in sorted(headers, key=_rank):
        f = field_of(h)
        if f and f not in mapping and h not in taken:
            mapping[f] = h
            taken.add(h)
    mapping = {f: mapping[f] for f in [*given, *(field_of(h) for h in headers)] if f in mapping}  # file order
    if "playtime_minutes" in mapping and "playtime_hours" in mapping and "playtime_hours" not in given:
        del mapping["playtime_hours"]
    if "review" not in mapping:
        raise UserError(f"{path}: no review-text column among the columns found ({', '.join(headers[:20]) or 'none'}); "
                        f"name it, e.g. --columns {suggest(headers, mapping, samples or [])}")
    return mapping


def _refuse_twins(headers: list[str], given: dict[str, str], path: Any) -> None:
    """Raise ``UserError`` for two headers of one field that differ only in case or separators (see :func:`detect`)."""
    seen: dict[str, str] = {}
    for h in headers:
        f = field_of(h)
        if f is None or f in given:
            continue
        twin = seen.setdefault(_norm(h), h)
        if twin != h:
            raise UserError(f"{path}: columns {twin!r} and {h!r} both read as the {f} field; name the one to use, "
                            f"e.g. --columns {f}={twin}")


def repeated(headers: list[str], given: dict[str, str], path: Any) -> list[str]:
    """One warning per header name that a CSV header holds more than once and that is read (a field's alias, or named
    by ``given``): only its last column is read, as ``csv.DictReader`` keeps the last value of a name.

    Raises:
        UserError: the review text's column named more than once (either could hold the text).
    """
    warnings = []
    for h in dict.fromkeys(headers):
        at = [i for i, name in enumerate(headers, 1) if name == h]
        f = _read_as(h, given)
        if len(at) < 2 or f is None:
            continue
        listed = ", ".join(map(str, at[:-1])) + f" and {at[-1]}"
        if f == "review":
            raise UserError(f"{path}: the header names {h!r}, the review text's column, {len(at)} times (columns "
                            f"{listed}); rename all but one, e.g. to {h}_2")
        warnings.append(f"{path}: the header names {h!r} {len(at)} times (columns {listed}); column {at[-1]} is read "
                        f"as the {f} field, the others are not; rename them if another one holds it")
    return warnings


def _read_as(header: str, given: dict[str, str]) -> str | None:
    """The field ``header`` is read as: the one ``given`` maps to it, else its alias's unless ``given`` maps that
    field to another header."""
    named = [f for f, h in given.items() if h == header]
    if named:
        return named[0]
    f = field_of(header)
    return None if f in given else f


def _rank(header: str) -> int:
    """Where a header stands in its field's :data:`ALIASES`: with two candidates (``playtime_at_review``
    and ``playtime_forever``), the one listed first wins."""
    names = [_norm(a) for a in ALIASES.get(field_of(header) or "", ())]
    return names.index(_norm(header)) if _norm(header) in names else len(names)


def suggest(headers: list[str], mapping: dict[str, str], samples: list[dict[str, Any]]) -> str:
    """A ``--columns`` line for the error message: the fields recognised so far, and as ``review`` the
    column not taken by them whose values are longest in ``samples`` (the text of a review is the
    longest thing in a row), else the first free column."""
    free = [h for h in headers if h not in mapping.values()]
    length = {h: sum(len(str(row.get(h) or "")) for row in samples) for h in free}
    review = max(free, key=lambda h: (length[h], free.index(h))) if free else "TEXT_COLUMN"
    return ",".join(f"{f}={h}" for f, h in {**mapping, "review": review}.items())


#: yes / no as a spreadsheet in Steam's languages writes them (Ja/Nein, Oui/Non, Sí, Sim/Não, Да/Нет, Tak/Nie, Evet/Hayır,
#: はい/いいえ, 예/아니요 …), and Steam's own verdict words (Empfohlen / Nicht empfohlen, Recommandé … from noise)
_NO = re.compile(rf"^(?:{noise.VERDICTS_DOWN}|not\s*recommended|false|falsch|faux|falso|no|0|n|negative|neg|thumbs?\s*down|👎"
                 r"|差评|不|否|nein|non|não|nao|нет|nie|hayır|hayir|いいえ|아니요|아니오|✗|✘|❌)$", re.I)
_YES = re.compile(rf"^(?:{noise.VERDICTS_UP}|true|wahr|vrai|verdadero|verdadeiro|vero|yes|1|y|positive|pos|thumbs?\s*up"
                  r"|👍|好评|是|ja|oui|sí|si|sì|sim|да|tak|evet|はい|예|네|✓|✔|✅)$", re.I)
_IN_MINUTES = re.compile(r"^\D*\d[\d,.]*\s*(?:min|mins|minutes?|分钟)\W*$", re.I)  # "90 min" in an hours column


def voted(v: Any) -> bool | None:
    """``True``/``False`` from a bool, a number or a word (推荐/不推荐, Recommended/Not Recommended…)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v > 0  # 1/0, and 1/-1 review scores
    if re.fullmatch(r"\s*-\d+(?:\.0+)?\s*", str(v)):
        return False
    s = str(v or "").strip()
    if not s:
        return None
    return False if _NO.match(s) else True if _YES.match(s) else None


#: a number as written in a cell, decimal mark and thousands separators included: ``1,204.5``, ``1.204,5``, ``12,5``.
_NUMBER = re.compile(r"\d(?:[\d,.]*\d)?")
_GROUPED = re.compile(r"\d{1,3}(?:[,.]\d{3})+")  # 1,234 / 1.234 / 1,234,567: a thousands separator, or a decimal mark
NUMERIC_FIELDS = ("playtime_minutes", "playtime_hours", "votes_up")
#: thousands grouped by a space, a no-break space (U+00A0, French Excel), a narrow one (U+202F) or an apostrophe
#: (Swiss): ``1 204,5``, ``1'204.5``, ``12 345 678``; only groups of exactly three digits after a lead of one to three
_SPACED = re.compile(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u202f'\u2019]\d{3})+(?!\d)")
_SPACES = re.compile(r"[ \u00a0\u202f'\u2019]")


def _first_number(v: str) -> str | None:
    """The first :data:`_NUMBER` in ``v`` with its space or apostrophe thousands separators (:data:`_SPACED`) dropped."""
    m = _NUMBER.search(_SPACED.sub(lambda g: _SPACES.sub("", g.group(0)), v))
    return m.group(0) if m else None


def _mark(token: str) -> str | None:
    """The decimal mark that ``token`` (a :data:`_NUMBER` match) shows for sure, else ``None``: the later of
    ``,`` and ``.`` when both are there; a lone mark not followed by exactly three digits (``12,5``, ``30.75``)."""
    if "," in token and "." in token:
        return "," if token.rfind(",") > token.rfind(".") else "."
    for m in ",.":
        if token.count(m) == 1 and not _GROUPED.fullmatch(token):
            return m
    return None


def decimal_comma(values: list[Any], semicolon: bool) -> bool:
    """Whether the numbers of one file (``values``: its playtime and votes cells) use a decimal comma.

    The rule, in order: the marks the numbers show for sure (:func:`_mark`) decide, by majority (a tie:
    decimal point); a file whose numbers show neither (``1,234``, ``12``) reads with a decimal comma when
    it is ``;``-separated (Excel's CSV where the comma is the decimal mark: German, French … locales), else
    with a decimal point."""
    marks = [_mark(t) for v in values if isinstance(v, str) and (t := _first_number(v))]
    comma, point = marks.count(","), marks.count(".")
    return comma > point if comma or point else semicolon


def number(v: Any, comma: bool = False, whole: bool = False) -> float | None:
    """The first number in a value: ``"总时数 1,030.7 小时"`` → ``1030.7``; ``None`` when there is none.

    ``comma`` (from :func:`decimal_comma`) says how to read a number whose mark is ambiguous: ``1,234``
    is ``1.234`` with it and ``1234`` without; ``1.234`` is ``1234`` with it and ``1.234`` without. A count
    (``whole``: votes, minutes) reads either as ``1234``. A number that shows its mark (:func:`_mark`:
    ``1,204.5``, ``1.204,5``, ``12,5``) is read by it either way, the other mark being a thousands separator.
    Thousands grouped by a space or an apostrophe (:data:`_SPACED`: ``1 204,5``, ``1'204.5``) read as one number."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None  # NaN: pandas' empty cell (Parquet, json.dumps)
    token = _first_number(str(v))
    if token is None:
        return None
    if whole and _GROUPED.fullmatch(token):
        return float(re.sub(r"[,.]", "", token))
    mark = _mark(token) or ("," if comma and "," in token and token.count(",") == 1 else None)
    mark = mark or ("." if not comma and token.count(".") == 1 else None)
    before, _, frac = token.rpartition(mark) if mark else (token, "", "")
    digits = re.sub(r"[,.]", "", before)
    return float(f"{digits}.{frac}" if mark else digits)


def row_fields(row: dict[str, Any], mapping: dict[str, str], comma: bool = False) -> dict[str, Any]:
    """One row's values under our field names (``playtime_hours`` in hours, unknown → ``None``); ``comma``:
    the file's numbers use a decimal comma (:func:`decimal_comma`)."""
    get = {f: row.get(h) for f, h in mapping.items()}
    minutes = number(get.get("playtime_minutes"), comma, whole=True)
    if minutes is None and _IN_MINUTES.search(str(get.get("playtime_hours") or "")):
        minutes = number(get.get("playtime_hours"), comma, whole=True)
    hours = round(minutes / 60, 1) if minutes is not None else number(get.get("playtime_hours"), comma)
    votes = number(get.get("votes_up"), comma, whole=True)
    text = get.get("review")
    tags = get.get("tags")
    return {
        "text": "" if text is None else str(text),
        "voted_up": voted(get.get("voted_up")),
        "playtime_hours": hours,
        "votes_up": int(votes) if votes is not None else None,
        "language": (str(get["language"]).strip().lower() or None) if get.get("language") else None,
        "appid": _appid_cell(get.get("appid")),
        "game_name": str(get["app_name"]).strip() or None if get.get("app_name") else None,
        "tags": split_tags(tags),
        "review_id": _id(get.get("review_id")),
        "updated": written(get.get("timestamp_updated"), get.get("timestamp_created")),
        "unread_time": unread_time(get.get("timestamp_updated"), get.get("timestamp_created")),
        "author_id": steam_author(get.get("author_id")),
        "author": "\n".join(str(get[f]).strip() for f in _AUTHOR_FIELDS if get.get(f) not in (None, "")) or None,
    }


#: an epoch above this is in milliseconds (in seconds it would be after the year 5000)
_MS_EPOCH = 10**11


def timestamp(v: Any) -> int | None:
    """Seconds since 1970 from a Unix time (a number or a numeric string; milliseconds too), an ISO-8601 date
    (``2024-05-01T00:00:00Z``, ``2024-05-01 12:00``; without a zone, UTC), an RFC 2822 date (``Mon, 01 Jan 2024
    00:00:00 GMT``) or a ``datetime`` (Parquet); else ``None``."""
    if isinstance(v, str):
        v = v.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", v):
            v = float(v)
        else:
            v = _date_text(v)
            if v is None:
                return None
    if isinstance(v, datetime.date) and not isinstance(v, datetime.datetime):
        v = datetime.datetime(v.year, v.month, v.day)
    if isinstance(v, datetime.datetime):
        return int((v if v.tzinfo else v.replace(tzinfo=datetime.timezone.utc)).timestamp())
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return int(v // 1000 if v >= _MS_EPOCH else v)
    return None


def _date_text(v: str) -> datetime.datetime | None:
    """An ISO-8601 or RFC 2822 date as text, else ``None``."""
    try:
        return datetime.datetime.fromisoformat(v)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None


def unread_time(*values: Any) -> str | None:
    """The first of ``values`` that holds a time :func:`timestamp` cannot read, as text; ``None`` when each is read,
    empty, ``0`` (Steam's "never") or NaN (an empty cell)."""
    for v in values:
        if v is not None and not isinstance(v, bool) and str(v).strip() not in ("", "0", "nan") and timestamp(v) is None:
            return str(v)
    return None


def written(updated: Any, created: Any) -> int | None:
    """When a review was last written: its :func:`timestamp` of Steam's ``timestamp_updated``, else of
    ``timestamp_created`` (a review never edited has the two equal)."""
    t = timestamp(updated)
    return t if t is not None else timestamp(created)


#: author ids that name nobody in particular: an export's placeholder for a hidden or deleted account
_NO_AUTHOR = re.compile(r"0+|-+|\?+|anon(?:ymous)?|unknown|none|null|nan|n/?a|\[?deleted]?|hidden|private", re.I)


def steam_author(v: Any) -> str | None:
    """An author's id as text (``76561198000000001``), ``None`` when unknown or a placeholder (:data:`_NO_AUTHOR`)."""
    s = _id(v)
    return None if s is None or _NO_AUTHOR.fullmatch(s) else s


def _id(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip() or None


_FULLWIDTH_DIGITS = str.maketrans("０１２３４５６７８９，", "0123456789,")
#: a Steam store or community page of an app: ``https://store.steampowered.com/app/570/Dota_2/``
_APP_URL = re.compile(r"(?:https?://)?(?:store\.steampowered\.com|steamcommunity\.com)/app/(\d+)(?:[/?#]\S*)?", re.I)


def steam_appid(v: Any) -> str | None:
    """An app id as users write one, in ASCII digits: ``570``, full-width ``５７０`` (a CJK input method), the store
    page's URL ``https://store.steampowered.com/app/570/Dota_2/`` (pasted from the browser) → ``"570"``; ``None``
    for anything else (``²``, ``Dota 2``, an empty cell)."""
    s = str(_id(v) or "").translate(_FULLWIDTH_DIGITS).strip()
    m = _APP_URL.fullmatch(s)
    if m:
        return m.group(1)
    return s if re.fullmatch(r"[0-9]+", s) else None


def _appid_cell(v: Any) -> str | None:
    """An appid cell: :func:`steam_appid` when it reads as one, else the cell's text (another catalogue's id)."""
    return steam_appid(v) or _id(v)


def split_tags(v: Any) -> list[str] | None:
    """Tags from a list or a ``"动作, 狩猎"`` / ``"a|b"`` string; ``None`` when there are none."""
    if isinstance(v, list):
        items = [str(t).strip() for t in v]
    elif v:
        items = [t.strip(" '\"[]") for t in re.split(r"[,，、;|]", str(v))]
    else:
        return None
    return [t for t in items if t] or None
