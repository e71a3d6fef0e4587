"""Input formats for ``steam-train prepare``: detect each file's format and read it into
:class:`Review` records plus per-app metadata (:class:`AppInfo`).

One reader per format, behind :func:`read` (LLaMA-Factory's ``data/converter.py`` style):

========================  ========================================================================
format                    what it looks like
========================  ========================================================================
``collect-jsonl``         JSON Lines from ``steam-train collect``: one raw review + ``appid`` a line
``api-page``              a live ``appreviews`` response: ``{"success": 1, "reviews": [ ... ]}``
``api-archive``           an archived dump: ``{"query_summary": …, "reviews": {"<id>": {…}}}``
``review-list``           a JSON array of raw review objects
``appdetails``            store metadata: ``{"<appid>": {"success": true, "data": {…}}}`` or the
                          bare ``data`` object (name, genres) — gives names and tags, no reviews
``store-csv``             the store-scrape CSV: UTF-8 with BOM, ``title``, ``tags_raw`` (Steam
                          tag ids), ``user_reviews`` (a JSON list inside a cell)
``table``                 any other flat review table: CSV/TSV, JSON array, JSON Lines or Parquet
                          rows whose columns :mod:`steam_persona.reviews.columns` matches (or ``--columns`` maps)
``alpaca``                alpaca JSON array or JSONL (``instruction``, ``input``, ``output``)
``sharegpt``              sharegpt JSON/JSONL (``conversations`` from/value or ``messages``
                          role/content); each user → assistant pair becomes one record
========================  ========================================================================

Any file may be gzip-compressed (``.gz``, detected by its magic bytes). Review JSON follows Steam's ``appreviews`` API (../shared/reference/steam-api.md); store
metadata follows ``api/appdetails``. Every problem raises :class:`~steam_persona.common.errors.UserError`
naming the file, the record and the fix.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, NoReturn

from rich.markup import escape

from steam_persona.common.console import byte_size, console
from steam_persona.reviews import columns as columns_mod
from steam_persona.reviews import csvquotes
from steam_persona.common import memory, persona
from steam_persona.common.textfile import decode, json_msg, load_json
from steam_persona.common.errors import UserError
from steam_persona.resources import packaged_copy_hint

#: Steam user-tag ids → (English, 简体中文) names, for ``tags_raw`` in the store-scrape CSV.
#: Ids and English names: Steam's tag list (``store.steampowered.com/tagdata/populartags/english``);
#: Chinese names: the store's ``schinese`` tag names as far as they could be checked offline,
#: spelled as in the seed data where the seed agrees with the id (多人, 动作, 免费开玩, 类Rogue …);
#: a few rarer ones may be worded differently from today's store. The seed file maps some ids wrongly (it
#: calls 1685 "沙盒" although 1685 is Co-op, 1663 "类Rogue" although 1663 is FPS); we follow Steam.
#: Ids not listed here are skipped and counted in the report (``unknown_tag_ids``).
STEAM_TAGS: dict[int, tuple[str, str]] = {
    19: ("Action", "动作"), 492: ("Indie", "独立"), 21: ("Adventure", "冒险"), 9: ("Strategy", "策略"),
    122: ("RPG", "RPG"), 599: ("Simulation", "模拟"), 597: ("Casual", "休闲"),
    113: ("Free to Play", "免费开玩"), 4182: ("Singleplayer", "单人"),
    128: ("Massively Multiplayer", "大型多人在线"), 3859: ("Multiplayer", "多人"), 699: ("Racing", "竞速"),
    701: ("Sports", "体育"), 1756: ("Great Soundtrack", "出色的配乐"), 4166: ("Atmospheric", "氛围"),
    1695: ("Open World", "开放世界"), 1664: ("Puzzle", "解谜"), 1685: ("Co-op", "合作"),
    1667: ("Horror", "恐怖"), 3942: ("Sci-fi", "科幻"), 1774: ("Shooter", "射击"),
    1663: ("FPS", "第一人称射击"), 1684: ("Fantasy", "奇幻"), 3871: ("2D", "2D"),
    3839: ("First-Person", "第一人称"), 1742: ("Story Rich", "剧情丰富"),
    7208: ("Female Protagonist", "女性主角"), 1625: ("Platformer", "平台游戏"), 3810: ("Sandbox", "沙盒"),
    4085: ("Anime", "动漫"), 4026: ("Difficult", "困难"), 4136: ("Funny", "搞笑"), 1719: ("Comedy", "喜剧"),
    1662: ("Survival", "生存"), 1693: ("Classic", "经典"), 1698: ("Point & Click", "点击"),
    1697: ("Third Person", "第三人称"), 1677: ("Turn-Based", "回合制"), 3964: ("Pixel Graphics", "像素风"),
    5350: ("Family Friendly", "家庭友好"), 1659: ("Zombies", "僵尸"), 1773: ("Arcade", "街机"),
    3843: ("Online Co-Op", "在线合作"), 4004: ("Retro", "复古"), 3834: ("Exploration", "探索"),
    1755: ("Space", "太空"), 4345: ("Gore", "血腥"), 1708: ("Tactical", "战术"),
    3841: ("Local Co-Op", "本地合作"), 4231: ("Action RPG", "动作角色扮演"), 4175: ("Realistic", "现实"),
    1676: ("RTS", "即时战略"), 1716: ("Roguelike", "类Rogue"), 1687: ("Stealth", "潜行"),
    7368: ("Local Multiplayer", "本地多人"), 1741: ("Turn-Based Strategy", "回合制策略"),
    3968: ("Physics", "物理"), 3799: ("Visual Novel", "视觉小说"), 4726: ("Cute", "可爱"),
    3978: ("Survival Horror", "生存恐怖"), 3987: ("Historical", "历史"),
    3814: ("Third-Person Shooter", "第三人称射击"), 1721: ("Psychological Horror", "心理恐怖"),
    1643: ("Building", "建造"), 1646: ("Hack and Slash", "砍杀"), 4342: ("Dark", "黑暗"),
    1702: ("Crafting", "制作"), 5716: ("Mystery", "悬疑"), 1775: ("PvP", "玩家对战"), 1678: ("War", "战争"),
    3835: ("Post-apocalyptic", "后末日"), 1754: ("MMORPG", "大型多人在线角色扮演"),
    1645: ("Tower Defense", "塔防"), 5611: ("Mature", "成人"), 1743: ("Fighting", "格斗"),
    4150: ("World War II", "二战"), 1621: ("Music", "音乐"), 12472: ("Management", "管理"),
    4434: ("JRPG", "日式角色扮演"), 4791: ("Top-Down", "俯视"), 4172: ("Medieval", "中世纪"),
    4747: ("Character Customization", "角色自定义"), 3878: ("Competitive", "竞技"),
    4168: ("Military", "军事"), 4106: ("Action-Adventure", "动作冒险"), 4604: ("Dark Fantasy", "黑暗奇幻"),
    4885: ("Bullet Hell", "弹幕射击"), 5711: ("Team-Based", "团队导向"), 4115: ("Cyberpunk", "赛博朋克"),
    1644: ("Driving", "驾驶"), 5125: ("Procedural Generation", "程序生成"), 4036: ("Parkour", "跑酷"),
    4667: ("Violent", "暴力"), 1654: ("Relaxing", "轻松"), 9551: ("Dating Sim", "约会模拟"),
    4328: ("City Builder", "城市营造"), 4364: ("Grand Strategy", "大战略"), 3959: ("Roguelite", "轻度 Rogue"),
    1628: ("Metroidvania", "类银河战士恶魔城"), 21978: ("VR", "VR"), 1718: ("MOBA", "多人在线战术竞技"),
    1666: ("Card Game", "卡牌游戏"), 4695: ("Economy", "经济"), 6426: ("Choices Matter", "选择取向"),
    4325: ("Turn-Based Combat", "回合制战斗"), 6730: ("PvE", "玩家对战环境"), 5055: ("eSports", "电子竞技"),
    1752: ("Rhythm", "节奏"), 4376: ("Assassin", "刺客"), 9564: ("Hunting", "狩猎"),
    6915: ("Martial Arts", "武术"), 4236: ("Loot", "战利品"), 3955: ("Character Action Game", "角色动作"),
    493: ("Early Access", "抢先体验"), 29482: ("Souls-like", "类魂"), 42804: ("Action Roguelike", "动作类 Rogue"),
    176981: ("Battle Royale", "大逃杀"), 1100689: ("Open World Survival Craft", "开放世界生存制作"),
    12095: ("Sexual Content", "性内容"), 6650: ("Nudity", "裸露"), 1720: ("Dungeon Crawler", "地牢探索"),
    7332: ("Base Building", "基地建设"), 5900: ("Walking Simulator", "步行模拟"),
}

FORMATS = {
    "collect-jsonl": "steam-train collect JSON Lines",
    "api-page": "Steam appreviews page (reviews list)",
    "api-archive": "Steam appreviews archive (reviews keyed by id)",
    "review-list": "JSON array of Steam reviews",
    "appdetails": "Steam appdetails (store metadata)",
    "store-csv": "store-scrape CSV (reviews in a JSON cell, Steam tag ids)",
    "table": "review table",
    "alpaca": "alpaca JSON",
    "sharegpt": "sharegpt JSON",
}
_CSV_COLUMNS = ("item_id", "title", "tags_raw", "user_reviews")
_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")
#: spreadsheet workbooks, which prepare does not read: a folder's are skipped with a note, one named alone is refused
_WORKBOOKS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_WORKBOOK_NOTE = ("a spreadsheet workbook, which prepare does not read; save the sheet as CSV UTF-8 (Excel: File > "
                  "Save As > CSV UTF-8) and give that file")


@dataclass(slots=True)
class Review:
    """One review on its way through ``prepare``.

    ``text`` is the review (cleaned in place); ``where`` is ``"file: record N"`` for messages
    (records, lines, reviews and turns count from 1; CSV rows are file line numbers).
    Unknown values are ``None``. ``prompt`` holds a verbatim ``(instruction, input)`` for alpaca /
    sharegpt records whose prompt does not follow the persona templates (kept as is);
    ``prompt_language`` is ``"zh"``/``"en"`` when it followed the templates of that language.
    ``author`` (user name and/or steam id, one per line) only feeds the screen-name scrubber; it is
    never written. ``author_id`` is the author's account id alone (a steam id; a placeholder is ``None``):
    ``prepare`` keeps one review per author and app.
    ``length`` is set by ``prepare``'s length rule (:func:`steam_persona.reviews.noise.length`).
    ``over_limit`` marks a CSV record that a field over :data:`CSV_FIELD_LIMIT` kept from being read (its ``text``
    is empty): ``prepare`` counts it ``too_long``, as it does the same review in JSON Lines.
    """

    text: str
    where: str
    appid: str | None = None
    game_name: str | None = None
    tags: list[str] | None = None
    language: str | None = None
    voted_up: bool | None = None
    votes_up: int | None = None
    playtime_hours: float | None = None
    review_id: str | None = None
    updated: int | None = None  # when the author last wrote the review (columns.written)
    unread_time: str | None = None  # a timestamp value that could not be read (columns.unread_time)
    author: str | None = None
    author_id: str | None = None
    length: tuple[int, str] | None = None
    over_limit: bool = False
    prompt: tuple[str, str] | None = None
    prompt_language: str | None = None


@dataclass(slots=True)
class AppInfo:
    """Store metadata of one app: its name and tag/genre names (either may be unknown)."""

    name: str | None = None
    tags: list[str] | None = None


@dataclass
class Loaded:
    """What one input file gave: its detected format, reviews, app metadata and notes.

    ``columns`` is the ``{field: header}`` mapping a ``table`` file was read with; ``compressed`` is
    ``"gzip"`` for a ``.gz`` file; ``encoding`` is ``"UTF-16"`` when a byte-order mark said so;
    ``warnings`` are one-line notes on what was read but may be wrong (shown and put in the report).
    """

    path: Path
    format: str
    reviews: list[Review] = field(default_factory=list)
    apps: dict[str, AppInfo] = field(default_factory=dict)
    unknown_tag_ids: set[int] = field(default_factory=set)
    columns: dict[str, str] | None = None
    compressed: str | None = None
    container: str = ""
    encoding: str | None = None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        what = f"{len(self.reviews):,} review{'s' * (len(self.reviews) != 1)}" if self.format != "appdetails" else f"{len(self.apps)} apps"
        name = FORMATS[self.format]
        if self.path.suffix.lower() == ".jsonl" and name.endswith(" JSON"):
            name += " Lines"
        if self.container:
            name += f" ({self.container})"
        if self.compressed:
            name += f", {self.compressed}"
        if self.encoding:
            name += f", {self.encoding}"
        cols = f"; columns {', '.join(f'{k}={v}' for k, v in self.columns.items())}" if self.columns else ""
        return f"{self.path}: {name} ({what}{cols})"


def _suffix(p: Path) -> str:
    """The format suffix, looking through ``.gz``: ``a.csv.gz`` → ``.csv``."""
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


#: Files ``steam-train collect`` keeps beside its output (state, log, lock): never review inputs;
#: left out of folders quietly, noted when named. An unfinished ``.part`` is noted in both.
_COLLECT_SIDE_FILES = (".state.json", ".log.jsonl", ".lock")


def _skip_note(f: Path, in_folder: bool = False) -> str | None:
    """Why ``f`` is not a review input (collect's side file, an empty JSON Lines file, any empty file or
    header-only CSV/TSV found in a folder: a stray failed export must not stop the others), or ``None``."""
    if f.name.endswith(".part"):
        return "an unfinished collect output (rerun that collect to finish it)"
    if f.name.endswith(_COLLECT_SIDE_FILES):
        return "collect's state/log/lock file, not reviews"
    if _suffix(f) in (".jsonl", ".ndjson") and f.stat().st_size == 0:
        return "empty (e.g. collect found no reviews for the app)"
    if f.stat().st_size == 0 and in_folder:
        return "empty (0 bytes: a failed export or save?)"
    if in_folder and _suffix(f) in (".csv", ".tsv") and _header_only(f):
        return "a header and no rows (an export that found no reviews?)"
    if _suffix(f) in _WORKBOOKS:
        return _WORKBOOK_NOTE
    return None


def _header_only(f: Path) -> bool:
    """``f`` (a small plain CSV/TSV) holds one non-blank line: a table's header without rows. Files over
    :data:`_HEAD_BYTES` are not read here (a header that long is no review export's)."""
    if f.stat().st_size > _HEAD_BYTES:
        return False
    try:
        lines = f.read_bytes().splitlines()
    except OSError:
        return False  # read() names the error
    return sum(1 for line in lines if line.strip()) == 1


@dataclass(frozen=True)
class Output:
    """A file prepare writes: its path, what names it (``--out x.json``, ``the val split of --out x.json``), the flag
    that moves it, and whether the earlier run's report names it as that run's output."""

    path: Path
    what: str
    flag: str
    earlier: bool = False


#: the keys of each record prepare writes
_PREPARE_KEYS = {"instruction", "input", "output"}
_OWN_OUTPUT_NOTE = "the outputs of this prepare: --out, its val split, --report or --register; a rerun does not read them back"


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files under ``folder`` that are read (review suffixes, and workbooks and ``.part`` files, which get a note)
    and the others, which get a note: other suffixes, broken links, pipes. Left out quietly: hidden files and
    folders, ``prepare_report.json``, ``dataset_info.json``, collect's side files, and ``README*``, ``LICENSE*`` and
    ``*.md`` files of other suffixes."""
    entries = sorted(f for f in folder.rglob("*") if not any(part.startswith(".") for part in f.relative_to(folder).parts)
                     and not f.is_dir() and f.name not in ("prepare_report.json", "dataset_info.json")
                     and not f.name.endswith(_COLLECT_SIDE_FILES))
    found = [f for f in entries if f.is_file() and (_suffix(f) in _SUFFIXES + _WORKBOOKS or f.name.endswith(".part"))]
    read = set(found)
    return found, [f for f in entries if f not in read and not _folder_doc(f)]


def _folder_doc(f: Path) -> bool:
    """Whether ``f`` is a data folder's documentation: ``README*``, ``LICENSE*``, ``*.md``."""
    return f.name.upper().startswith(("README", "LICENSE")) or f.suffix.lower() == ".md"


def _other_note(f: Path, outputs: Iterable[Output]) -> str:
    """Why a file found in an input folder is not read (see :func:`_folder_files`)."""
    if not f.exists():
        return "a broken link"
    if not f.is_file():
        return "not a regular file (a pipe, socket or device)"
    if any(o.path.exists() and os.path.samefile(f, o.path) for o in outputs):
        return _OWN_OUTPUT_NOTE
    return (f"not a review file type ({_suffix(f) or 'no suffix'}): a folder is read for "
            f"{', '.join(_SUFFIXES)} files; name the file on its own if it holds reviews")


def _own_output_note(f: Path, outputs: Iterable[Output], in_folder: bool) -> str | None:
    """The skip note for an earlier run's output found in an input folder, or ``None`` when ``f`` is no output.

    Raises:
        UserError: ``f`` is an output named on its own, or one found in a folder that the earlier run's report does
            not name: the run would replace the raw data."""
    same = next((o for o in outputs if o.path.exists() and os.path.samefile(f, o.path)), None)
    if same is None:
        return None
    if in_folder and same.earlier:
        return _OWN_OUTPUT_NOTE
    if in_folder and _in_prepare_layout(f):
        raise UserError(f"{same.what} is also an input ({f}) and looks like an earlier prepare output (alpaca, no "
                        "report names it): delete it or move it out of the input folder (if it is your data, give "
                        f"another {same.flag})")
    raise UserError(f"{same.what} is also an input ({f}); prepare would replace your raw data: give another {same.flag}")


def _in_prepare_layout(f: Path) -> bool:
    """Whether ``f`` is a JSON array of alpaca records with prepare's keys (``instruction``, ``input``, ``output``)."""
    try:
        records = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(records, list) and bool(records) \
        and all(isinstance(r, dict) and set(r) == _PREPARE_KEYS for r in records)


def expand_inputs(paths: list[str], outputs: Iterable[Output] = (), skipped: list[str] | None = None) -> list[Path]:
    """Resolve the INPUT arguments: files as given, folders to their ``.json``/``.jsonl``/``.ndjson``/
    ``.csv``/``.tsv``/``.parquet`` files, gzipped or not (recursively, sorted; ``prepare_report.json``,
    ``dataset_info.json`` and hidden files skipped). In folders and file lists alike, collect's side
    files (``*.state.json``, ``*.log.jsonl``, ``*.lock``, ``*.part``) and empty ``.jsonl`` files are
    skipped with one printed note each. Found in a folder, these are skipped with a note too: an empty file of any
    format (a stray failed export must not stop the others), a spreadsheet workbook (``.xlsx`` …: save it as CSV;
    named on its own it is refused), a file of another type (``.txt``, ``.png`` …), a broken link or a pipe
    (:func:`_folder_files`) and an earlier run's ``outputs`` (``Output.earlier``), which a rerun would otherwise read
    back as inputs (one note per folder names them all). Each note is also appended to ``skipped`` when given (prepare's
    report lists them).

    Raises:
        UserError: no inputs, a path that does not exist, nothing left to read, or an input that is one of
            ``outputs`` (named on its own, or found in a folder but no earlier output): the run would replace it.
    """
    if not paths:
        raise UserError("prepare: no INPUT given; pass review files or folders, e.g. raw/570.jsonl")
    out: list[Path] = []
    for p in map(Path, paths):
        others: list[Path] = []  # noted only
        if p.is_dir():
            found, others = _folder_files(p)
            if not found:
                raise UserError(f"{p}: folder has no .json, .jsonl, .csv, .tsv or .parquet files; check the path")
        elif p.is_file() and _suffix(p) in _WORKBOOKS:
            raise UserError(f"{p}: {_WORKBOOK_NOTE}")
        elif p.is_file():
            found = [p]
        else:
            raise UserError(f"{p}: input not found; check the path{packaged_copy_hint(p)}")
        noted = set(others)
        earlier: list[Path] = []
        for f in sorted(found + others):
            note = _other_note(f, outputs) if f in noted else \
                _own_output_note(f, outputs, p.is_dir()) or _skip_note(f, p.is_dir())
            if note == _OWN_OUTPUT_NOTE:
                earlier.append(f)
            elif note:
                _note(f"{f}: skipped, {note}", skipped)
            else:
                out.append(f)
        if earlier:
            _note(f"{p}: skipped {len(earlier)} output{'s' * (len(earlier) > 1)} of the earlier run: "
                  f"{', '.join(f.relative_to(p).as_posix() for f in earlier)} ({_OWN_OUTPUT_NOTE})", skipped)
    if not out:
        raise UserError(f"prepare: nothing to read in {', '.join(paths)} (every file was skipped, above); "
                        "check the paths or finish the collect")
    return out


def _note(line: str, skipped: list[str] | None) -> None:
    """Print a skip note, and append it to ``skipped`` when given (prepare's report lists them)."""
    console.print(f"[yellow]note[/] {escape(line)}")
    if skipped is not None:
        skipped.append(line)


def read(path: Path, tag_language: str = "zh", encoding: str = "utf-8", columns: dict[str, str] | None = None) -> Loaded:
    """Detect the format of ``path`` and read it.

    Args:
        path: one input file (gzip-compressed or not).
        tag_language: ``"zh"`` or ``"en"``: which name to use for Steam tag ids.
        encoding: the file's text encoding (``utf-8`` also accepts a BOM; e.g. ``gbk``).
        columns: ``--columns`` as ``{field: header}``; a file of flat records is read as a ``table``.

    Raises:
        UserError: undecodable bytes (with a ``--encoding`` hint), an unknown encoding, invalid
            JSON / CSV, unknown columns or record shapes.
    """
    suffix = _suffix(path)
    streamed = _read_streamed(path, suffix, encoding, tag_language, columns)
    if streamed is not None:
        return streamed
    raw, compressed = _read_bytes(path)
    if suffix in (".csv", ".tsv", *_JSONL_SUFFIXES):
        _refuse_long_line(path, raw)
    _note_memory(path, len(raw))
    if suffix == ".parquet" or raw[:4] == b"PAR1":
        loaded = _read_parquet(path, raw, columns or {})
    else:
        encoding = _utf16(path, raw, encoding)
        text = decode(path, raw, encoding)
        del raw  # a big file's bytes need not stay beside its text while it is parsed
        loaded = _read_decoded(path, text, suffix, tag_language, columns)
        loaded.encoding = "UTF-16" if encoding == "utf-16" else None
    loaded.compressed = compressed
    return loaded


#: the peak memory of a prepare run that reads a file whole, as a multiple of its (uncompressed) size, for reviews of
#: about 250 bytes a record or more (more records a byte take more: measured in docs/data.md, Known limits)
_WHOLE_READ_FACTOR = 10


def _whole_read_memory(size: int) -> tuple[int, int]:
    """The memory that reading a text of ``size`` bytes whole takes, and the memory available."""
    return size * _WHOLE_READ_FACTOR, memory.available_memory_bytes()


def _note_memory(path: Path, size: int) -> None:
    """A note before a file of ``size`` bytes is read whole when that takes more memory than is available, so that a
    run the system then kills has said why and what to do."""
    need, free = _whole_read_memory(size)
    if need > free:
        console.print(f"[yellow]note[/] {escape(str(path))}: read whole ({size / 2**20:,.0f} MiB: a JSON document, "
                      f"another encoding than UTF-8 or Parquet), which takes about {need / 2**30:,.1f} GiB of memory, "
                      f"more than the {free / 2**30:,.1f} GiB available; if prepare is killed, convert it to UTF-8 JSON "
                      "Lines, which is read a line at a time")


#: bytes read before a file is streamed: a UTF-16 byte-order mark or Parquet's magic bytes are told from them
_HEAD_BYTES = 1 << 16


def _read_streamed(path: Path, suffix: str, encoding: str, tag_language: str,
                   columns: dict[str, str] | None) -> Loaded | None:
    """A UTF-8 JSON Lines or CSV/TSV file (gzipped or not) read one binary line at a time and decoded line by line, so
    that a big file's text is never held whole (2.5x its size, at 4 bytes a character once one emoji is in it);
    ``None`` for every other file, which :func:`read` reads whole. A ``.csv``/``.tsv`` is streamed when its first
    line is not blank; another file when its first non-blank line is one JSON object with another non-blank line
    after it, where the whole text fails as one document with "Extra data". The lines, values and messages are
    those of the whole-text reading. No line is held longer than :data:`LINE_BYTES_CAP` bytes: a longer line in the
    first :data:`_HEAD_BYTES` of a file not named ``.csv``/``.tsv``/``.jsonl``/``.ndjson`` may be one JSON document,
    which :func:`read` reads whole.

    Raises:
        UserError: as :func:`read`, for the file's records, its undecodable bytes and a broken gzip stream.
        LongLine: a line over :data:`LINE_BYTES_CAP` bytes.
    """
    if suffix == ".parquet" or encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        return None
    with _binary(path) as (f, compressed):
        lines = _CappedLines(path, f) if f else iter(())
        try:
            head = _head(lines)
        except (OSError, EOFError, zlib.error):
            return None  # read() names the error
        except LongLine:
            if suffix in (".csv", ".tsv", *_JSONL_SUFFIXES):
                raise
            return None  # perhaps one JSON document on one line, which read() reads whole
        start = _start(head)
        if not start or start[:4] == b"PAR1" or _utf16(path, start, encoding) != encoding:
            return None
        raw = itertools.chain(_drained(head), _checked(path, lines))
        if suffix in (".csv", ".tsv"):
            chunks = _utf8_chunks(path, raw)
            first = next(chunks)
            if not first.strip():
                return None
            loaded = _read_csv(path, itertools.chain([first], chunks), tag_language, columns)
        else:
            lines = _utf8_lines(path, raw)
            records = _first_records(lines)
            if records is None:
                return None
            loaded = _read_records(path, _parse_jsonl(path, itertools.chain(records, lines)), jsonl=True,
                                   tag_language=tag_language, columns=columns)
    loaded.compressed = compressed
    return loaded


@contextmanager
def _binary(path: Path) -> Iterator[tuple[IO[bytes] | None, str | None]]:
    """``path`` open for reading its bytes, through gzip when its magic bytes say so, and ``"gzip"`` then;
    ``(None, None)`` when it cannot be opened (:func:`_read_bytes` says why)."""
    try:
        f = path.open("rb")
    except OSError:
        yield None, None
        return
    with f:
        if f.peek(2)[:2] != b"\x1f\x8b":
            yield f, None
            return
        import gzip

        with gzip.GzipFile(fileobj=f) as g:
            yield g, "gzip"


class LongLine(UserError):
    """A physical line of a JSON Lines or CSV/TSV file longer than :data:`LINE_BYTES_CAP`; ``head``: its first bytes,
    which tell the likely cause: old Mac line ends (a bare carriage return ends each line, which this bound does not
    split at), one JSON document on one line, or texts joined into one line."""

    def __init__(self, path: Path, number: int, head: bytes = b""):
        where = f"{path}: line {number}: over {LINE_BYTES_CAP:,} bytes"
        if b"\r" in head:
            fix = (f"{where} without a line feed: its lines end in a bare carriage return (old Mac line ends); "
                   f"convert them to line feeds (tr '\\r' '\\n' < {path.name} > fixed{path.suffix}) and prepare that")
        elif number == 1 and head.lstrip(b"\xef\xbb\xbf \t\n")[:1] == b"[":
            fix = (f"{where}: one JSON document on one line, not JSON Lines; name it .json to read it as one "
                   "document")
        else:
            fix = (f"{where}, far longer than any review (texts joined into one line, or not a review dump); split "
                   "the text into records of their own, or leave the file out")
        super().__init__(fix)


class _CappedLines:
    """``f``'s binary lines, each read with a bound: no more than :data:`LINE_BYTES_CAP` + 1 bytes of a line are held.
    An iterator that keeps no reference to the line it gave, so a long line's bytes go once the reader decoded them.

    Raises:
        LongLine: a line over the cap, before the rest of it is read.
    """

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path, self.f, self.number = path, f, 0

    def __iter__(self) -> _CappedLines:
        return self

    def __next__(self) -> bytes:
        line = self.f.readline(LINE_BYTES_CAP + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) > LINE_BYTES_CAP:
            raise LongLine(self.path, self.number, line[:_HEAD_BYTES])
        return line


def _refuse_long_line(path: Path, raw: bytes) -> None:
    """The bound of :class:`_CappedLines` on the bytes of a JSON Lines or CSV/TSV file read whole (another encoding
    than UTF-8), before they are decoded.

    Raises:
        LongLine: the first line over :data:`LINE_BYTES_CAP` bytes.
    """
    start = 0
    for number in itertools.count(1):
        end = raw.find(b"\n", start)
        stop = len(raw) if end < 0 else end + 1
        if stop - start > LINE_BYTES_CAP:
            raise LongLine(path, number, raw[start:start + _HEAD_BYTES])
        if end < 0:
            return
        start = stop


def _head(lines: Iterator[bytes]) -> list[bytes]:
    """The first of ``lines`` up to the first line end at or after :data:`_HEAD_BYTES` bytes."""
    taken, size = [], 0
    for line in lines:
        taken.append(line)
        size += len(line)
        if size >= _HEAD_BYTES:
            break
    return taken


#: bytes at a file's start that tell a UTF-16 or Parquet file (:func:`_utf16` reads 400)
_START_BYTES = 400


def _start(lines: list[bytes]) -> bytes:
    """The first :data:`_START_BYTES` bytes of ``lines``, without joining a long one whole."""
    start = b""
    for line in lines:
        if len(start) >= _START_BYTES:
            break
        start += line[:_START_BYTES - len(start)]
    return start


def _drained(items: list[bytes]) -> Iterator[bytes]:
    """``items`` in order, each let go of by the list as it is given (a long line's bytes go once decoded)."""
    items.reverse()
    while items:
        yield items.pop()


def _checked(path: Path, lines: Iterable[bytes]) -> Iterator[bytes]:
    """``lines`` (a file's binary lines); a broken gzip stream raises :func:`_read_bytes`'s error."""
    try:
        yield from lines
    except (OSError, EOFError, zlib.error):
        _read_bytes(path)
        raise


def _utf8_chunks(path: Path, chunks: Iterable[bytes]) -> Iterator[str]:
    """The binary lines ``chunks`` of ``path`` (each ending at ``\\n``), decoded as UTF-8 (a BOM allowed).

    Raises:
        UserError: undecodable bytes, as :func:`~steam_persona.common.textfile.decode` names them in the whole file.
    """
    codec = "utf-8-sig"
    for chunk in chunks:
        yield _decoded(path, chunk, codec)
        codec = "utf-8"


def _decoded(path: Path, data: bytes | memoryview, codec: str) -> str:
    """``data`` of ``path`` decoded.

    Raises:
        UserError: undecodable bytes, as :func:`~steam_persona.common.textfile.decode` names them in the whole file.
    """
    try:
        return str(data, codec)
    except UnicodeDecodeError:
        decode(path, _read_bytes(path)[0], "utf-8")
        raise


def _utf8_lines(path: Path, chunks: Iterable[bytes]) -> Iterator[str]:
    """What :func:`_lines` gives of the UTF-8 text (a BOM allowed) whose binary pieces ending at ``\\n`` are
    ``chunks``: a piece holding a lone ``\\r`` is split there too. Each piece is decoded without its line end and
    let go of before its line is given, so a long line is held as bytes and text at once only while it is decoded.

    Raises:
        UserError: undecodable bytes (:func:`_decoded`).
    """
    codec, ended = "utf-8-sig", True
    for chunk in chunks:
        ended = chunk.endswith(b"\n")
        end = 2 if chunk.endswith(b"\r\n") else 1 if ended else 0
        body = _decoded(path, memoryview(chunk)[:len(chunk) - end], codec)
        del chunk
        codec = "utf-8"
        yield from _lines(body) if "\r" in body else (body,)
    if ended:
        yield ""


def _first_records(lines: Iterator[str]) -> list[str] | None:
    """The lines up to the second non-blank one, taken from ``lines``, when the first non-blank line is one JSON
    object on its own (a file the whole-text reading reads as JSON Lines); else ``None``."""
    taken: list[str] = []
    for line in lines:
        taken.append(line)
        if not line.strip():
            continue
        if len(taken) > 1 and any(t.strip() for t in taken[:-1]):
            return taken
        if not line.lstrip().startswith("{"):
            return None
        try:
            load_json(_jsonl_text(line), parse_constant=_empty_constant)
        except json.JSONDecodeError:
            return None
    return None


def _utf16(path: Path, raw: bytes, encoding: str) -> str:
    """``"utf-16"`` for a file with a UTF-16 byte-order mark read as the default ``utf-8`` (Excel's
    "Unicode text" export: UTF-16LE with BOM, tab-separated), else ``encoding``.

    Raises:
        UserError: UTF-16 without a byte-order mark (a zero byte beside most ASCII characters), which
            would otherwise read as a CSV of one broken column.
    """
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        return encoding
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    head = raw[:400]
    if len(head) >= 8 and head.count(0) > len(head) // 4:
        order = "le" if head[1::2].count(0) > head[0::2].count(0) else "be"
        raise UserError(f"{path}: looks UTF-16 without a byte-order mark (zero bytes between the letters); "
                        f"pass --encoding utf-16-{order}, or re-save it as UTF-8")
    return encoding


def _empty_constant(name: str) -> None:
    """JSON's non-standard ``NaN`` / ``Infinity`` (``json.dumps`` of a pandas frame writes ``NaN`` for an empty cell)
    read as an empty value, not as a number whose text ``nan`` would reach a prompt or a review."""
    return None


def _read_decoded(path: Path, text: str, suffix: str, tag_language: str, columns: dict[str, str] | None) -> Loaded:
    stripped = text.lstrip()
    if not stripped:
        raise UserError(f"{path}: file is empty; remove it from the inputs")
    if suffix in (".csv", ".tsv") or stripped[0] not in "[{":
        _not_json(path, stripped, suffix)
        return _read_csv(path, io.StringIO(text, newline="\n"), tag_language, columns)
    data: Any
    try:
        data = load_json(text, parse_constant=_empty_constant)
    except json.JSONDecodeError as e:
        if not _json_lines(text, suffix, e):
            raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({json_msg(e)}); fix the file") from None
        return _read_records(path, _parse_jsonl(path, _lines(text)), jsonl=True, tag_language=tag_language,
                             columns=columns)
    if isinstance(data, list):
        return _read_records(path, list(enumerate(data, 1)), jsonl=False, tag_language=tag_language, columns=columns)
    if isinstance(data, dict):
        return _read_object(path, data, tag_language, columns)
    raise UserError(f"{path}: unknown JSON shape (a {type(data).__name__}); expected reviews, "
                    "an alpaca/sharegpt list or appdetails")


_JSONL_SUFFIXES = (".jsonl", ".ndjson")

#: a JSON scalar as its kind: ``42`` → number
_JSON_KINDS = {int: "number", float: "number", str: "string", bool: "true/false", type(None): "null"}


def _not_json(path: Path, stripped: str, suffix: str) -> None:
    """A ``.json``/``.jsonl``/``.ndjson`` file that starts as no JSON records do: an HTML/XML page or one JSON
    scalar is refused with what it is (a file of other text is read as a table, a CSV saved under that name).

    Raises:
        UserError: an HTML/XML page or a JSON number, string, true/false or null."""
    if suffix not in (".json", *_JSONL_SUFFIXES) or stripped[0] in "[{":
        return
    if stripped.startswith("<"):
        raise UserError(f"{path}: not JSON but an HTML/XML page ({stripped[:40]!r}…; a saved error or login page?); "
                        "save the reviews themselves as JSON")
    try:
        value = json.loads(stripped)
    except (json.JSONDecodeError, RecursionError):
        return
    raise UserError(f"{path}: a JSON {_JSON_KINDS.get(type(value), 'value')} ({stripped.strip()[:40]}), not review "
                    "records; expected a list or an object of reviews")
#: how many non-blank lines after the first tell JSON Lines from a pretty-printed document in a ``.json`` file
_LINES_SAMPLED = 5


def _json_lines(text: str, suffix: str, e: json.JSONDecodeError) -> bool:
    """Whether ``text``, which does not parse as one JSON document (``e``), is JSON Lines: its first character is
    ``{`` and either the first value ends before more data (a good first line), or the file is named ``.jsonl`` /
    ``.ndjson``, or most of the lines after the first are JSON objects on their own (JSON Lines whose first line is
    broken; a pretty-printed document's lines are not). Its broken lines are then named one by one."""
    if not text.lstrip().startswith("{"):
        return False
    if e.msg == "Extra data" or suffix in _JSONL_SUFFIXES:
        return True
    rest = (line.strip().lstrip("\ufeff") for line in itertools.islice(_lines(text.lstrip()), 1, None))
    sample = list(itertools.islice(filter(None, rest), _LINES_SAMPLED))
    return sum(map(_object_line, sample)) * 2 > len(sample)


def _object_line(line: str) -> bool:
    """``line`` alone is a JSON object with members."""
    try:
        value = load_json(line, parse_constant=_empty_constant)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and bool(value)


def _read_object(path: Path, data: dict, tag_language: str, columns: dict[str, str] | None) -> Loaded:
    """One JSON object: an appreviews page/archive, appdetails, or a single record."""
    reviews = data.get("reviews")
    if reviews is None and data.get("success") not in (None, 1, True) and set(data) <= {"success", "message", "error"}:
        raise UserError(f"{path}: a saved Steam answer success={data.get('success')} with no reviews (Steam refused "
                        "the request: a wrong app id or parameter); remove it from the inputs, or collect it again")
    if isinstance(reviews, (list, dict)) and not reviews:
        return Loaded(path, "api-page" if isinstance(reviews, list) else "api-archive")
    if isinstance(reviews, list):
        if data.get("success") not in (None, 1):
            raise UserError(f"{path}: Steam answered success={data.get('success')} (no reviews); re-collect it")
        loaded = _read_records(path, list(enumerate(reviews, 1)), jsonl=False, tag_language=tag_language,
                               columns=columns, word="review")
        loaded.format = "api-page" if loaded.format == "review-list" else loaded.format
        return loaded
    if isinstance(reviews, dict):
        loaded = _read_records(path, list(reviews.items()), jsonl=False, tag_language=tag_language,
                               columns=columns, word="review")
        loaded.format = "api-archive" if loaded.format == "review-list" else loaded.format
        return loaded
    apps = _appdetails(data)
    if apps is not None:
        return Loaded(path, "appdetails", apps=apps)
    if data and all(isinstance(v, dict) and not isinstance(v.get("reviews"), (list, dict)) for v in data.values()):
        return _read_keyed(path, data, tag_language, columns)
    if data and all(k.isdigit() and isinstance(v, (list, dict)) for k, v in data.items()):
        return _read_by_app(path, data, tag_language, columns)
    for key in ("data", "records", "items", "rows"):  # {"data": [ {...}, ... ]} exports
        if isinstance(data.get(key), list) and data[key] and isinstance(data[key][0], dict):
            loaded = _read_records(path, list(enumerate(data[key], 1)), jsonl=False, tag_language=tag_language,
                                   columns=columns)
            loaded.container = f"records under '{key}'"
            return loaded
    return _read_records(path, [(1, data)], jsonl=True, tag_language=tag_language, columns=columns)


def _read_keyed(path: Path, data: dict, tag_language: str, columns: dict[str, str] | None) -> Loaded:
    """``{"<id>": {record}, …}`` (a dump keyed by review id): the records, each key its ``review_id``
    unless the record has one."""
    loaded = _read_records(path, list(data.items()), jsonl=False, tag_language=tag_language, columns=columns)
    for key, r in zip(data, loaded.reviews):
        r.review_id = r.review_id or str(key)
    loaded.container = "records keyed by id"
    return loaded


def _is_page(rec: Any) -> bool:
    """An ``appreviews`` response: a ``reviews`` list beside ``success`` / ``query_summary`` / ``cursor``."""
    return isinstance(rec, dict) and isinstance(rec.get("reviews"), list) and bool(
        {"success", "query_summary", "cursor"} & rec.keys())


def _read_pages(path: Path, rows: list[tuple[Any, Any]], word: str, tag_language: str,
                columns: dict[str, str] | None) -> Loaded:
    """A JSON array or JSON Lines of ``appreviews`` pages (a paged download saved as is): every page's
    reviews, ``where`` naming the page and the review.

    Raises:
        UserError: a record that is not a page, or a page Steam answered with ``success`` other than 1.
    """
    reviews: list[tuple[str, Any]] = []
    for n, page in rows:
        if not _is_page(page):
            raise UserError(f"{path}: {word} {n}: not an appreviews page like the first one; keep one format per file")
        if page.get("success") not in (None, 1):
            raise UserError(f"{path}: {word} {n}: Steam answered success={page.get('success')} (no reviews); "
                            "re-collect it or delete the page")
        reviews += [(f"{n} review {i}", r) for i, r in enumerate(page["reviews"], 1)]
    if not reviews:
        return Loaded(path, "api-page", container=f"{len(rows)} pages")
    loaded = _read_records(path, reviews, jsonl=False, tag_language=tag_language, columns=columns, word=word)
    loaded.format = "api-page" if loaded.format in ("review-list", "collect-jsonl") else loaded.format
    loaded.container = f"{len(rows)} pages"
    return loaded


def _read_by_app(path: Path, data: dict, tag_language: str, columns: dict[str, str] | None) -> Loaded:
    """``{"<appid>": [reviews…]}`` or ``{"<appid>": {"reviews": …}}``: each app's reviews, app id from the key."""
    loaded = Loaded(path, "review-list", container="reviews keyed by app id")
    for appid, value in data.items():
        part = value if isinstance(value, list) else value.get("reviews")
        if isinstance(part, dict):
            part = list(part.values())
        if not isinstance(part, list):
            raise UserError(f"{path}: app {appid}: expected a list of reviews; fix the file")
        if not part:
            continue
        one = _read_records(path, [(f"{appid} #{i}", r) for i, r in enumerate(part, 1)], jsonl=False,
                            tag_language=tag_language, columns=columns, word="app")
        for r in one.reviews:
            r.appid = r.appid or appid
        loaded.reviews += one.reviews
        loaded.format, loaded.columns = ("table", one.columns) if one.format == "table" else (loaded.format, None)
    return loaded


def _read_bytes(path: Path) -> tuple[bytes, str | None]:
    """``path``'s bytes, decompressed when gzip's magic bytes start it (and ``"gzip"`` then).

    Raises:
        UserError: an unreadable file, a broken gzip stream, or one whose text takes more memory to read whole than
            is available (:func:`_gunzip`).
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}); check the path and permissions") from None
    if raw[:2] != b"\x1f\x8b":
        return raw, None
    return _gunzip(path, raw), "gzip"


#: gzip is decompressed this many bytes at a time, so that the bound on its size holds as it is read
_GUNZIP_PIECE = 1 << 24


def _gunzip(path: Path, raw: bytes) -> bytes:
    """The gzip data ``raw`` of ``path`` decompressed, when its text fits the memory available to be read whole
    (:func:`_whole_read_memory`), judged as it is decompressed (a small ``.json.gz`` can hold gigabytes); a refusal
    says the size its trailer records (a lower bound) when that is believable and does not fit, else "more than"
    what was decompressed. A file cut short ends in no trailer and is refused as broken.

    Raises:
        UserError: a broken gzip stream, or a text that needs more memory than is available.
    """
    import gzip

    limit = memory.available_memory_bytes() // _WHOLE_READ_FACTOR
    pieces, size = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            while size <= limit and (piece := f.read(_GUNZIP_PIECE)):
                pieces.append(piece)
                size += len(piece)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: broken gzip file ({e}); re-download or decompress it") from None
    if size > limit:
        recorded = _isize(raw, len(raw)) or 0
        _refuse_gzip(path, *_whole_read_memory(recorded if recorded > limit else size), more=recorded <= limit)
    return b"".join(pieces)


#: the fewest bytes a gzip file has: a 10-byte header and an 8-byte trailer
_GZIP_MIN = 18
#: the most bytes deflate's data can decompress to per byte (a 258-byte match in 2 bits): a trailer that records
#: more than this many times the file's size is no trailer (the file was cut short, or is not gzip)
_DEFLATE_MAX_RATIO = 1032


def _isize(tail: bytes, size: int) -> int | None:
    """The size that gzip bytes of ``size`` ending in ``tail`` decompress to, as gzip's trailer records it (ISIZE):
    modulo 2**32, and the last member's alone, so a lower bound; ``None`` for a file too short to have a trailer, or
    whose last 4 bytes say more than deflate can reach (:data:`_DEFLATE_MAX_RATIO`)."""
    if size < _GZIP_MIN:
        return None
    isize = int.from_bytes(tail[-4:], "little")
    return isize if isize <= _DEFLATE_MAX_RATIO * size else None


def gzip_size(path: Path) -> int | None:
    """:func:`_isize` of ``path`` when gzip's magic bytes start it, read without decompressing it; else ``None``."""
    try:
        with path.open("rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return None
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 4, 0))
            return _isize(f.read(4), size)
    except OSError:
        return None  # read() names the error


def _refuse_gzip(path: Path, need: int, free: int, more: bool = False) -> NoReturn:
    raise UserError(f"{path}: {'more than ' * more}{byte_size(need // _WHOLE_READ_FACTOR)} once decompressed, which "
                    f"takes about {byte_size(need)} of memory to read whole, more than the {byte_size(free)} "
                    "available; decompress it and convert it to UTF-8 JSON Lines (read a line at a time), or free "
                    "memory and rerun")


_LINE_END = re.compile(r"\r\n?|\n")


def _lines(text: str) -> Iterator[str]:
    """``_LINE_END.split(text)`` one line at a time (a 200 MB file's lines are not all copied at once)."""
    start = 0
    for m in _LINE_END.finditer(text):
        yield text[start:m.start()]
        start = m.end()
    yield text[start:]


def _jsonl_text(line: str) -> str:
    """A JSON Lines line as it is parsed: a BOM inside (files joined by cat) and a comma ending it dropped."""
    return line.strip().lstrip("\ufeff").removesuffix(",").rstrip()


def _parse_jsonl(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """The lines of a JSON Lines file (:func:`_lines`, :func:`_utf8_lines`) → ``(line number, value)`` one line at a
    time (a big file's records become reviews one by one instead of all being held as dicts first). Blank lines are
    skipped, and so is a comma ending a line or standing alone (objects pasted out of a JSON array): neither can hide
    a record. Lines end at
    ``\\n``, ``\\r\\n`` or ``\\r`` (JSON keeps neither raw inside a string) and nowhere else: ``str.splitlines``
    would also split at U+0085, U+2028 and U+2029, which JSON allows raw inside a review's text.

    Raises:
        UserError: after the last line, every line that is not JSON (:func:`_bad_lines_error`); at once,
            NUL bytes (a file cut short).
    """
    bad: list[tuple[int, json.JSONDecodeError]] = []
    count = 0
    for n, line in enumerate(lines, 1):
        line = _jsonl_text(line)
        if not line:
            continue
        try:
            value = load_json(line, parse_constant=_empty_constant)
        except json.JSONDecodeError as e:
            if line[e.pos:e.pos + 1] == "\x00":  # a crash or a full disk zero-fills a file's last block
                raise UserError(f"{path}: line {n}: NUL bytes from column {e.colno} (the file was cut short by a crash "
                                "or a full disk); delete them, and the torn record before them if any") from None
            count += 1
            if len(bad) < _BAD_LINES_NAMED:
                bad.append((n, e))
            continue
        yield n, value
    if bad:
        raise _bad_lines_error(path, bad, count)


#: how many broken JSON lines one error names by number (the rest are counted).
_BAD_LINES_NAMED = 5


def _bad_lines_error(path: Path, bad: list[tuple[int, json.JSONDecodeError]], count: int) -> UserError:
    """One line naming the broken JSON lines: the first's column and reason, the first
    :data:`_BAD_LINES_NAMED` numbers and, when there are more, how many in all."""
    (first, e), numbers = bad[0], [str(n) for n, _ in bad]
    if count == 1:
        return UserError(f"{path}: line {first}: invalid JSON at column {e.colno} ({json_msg(e)}); fix or delete the line")
    named = (f"{', '.join(numbers[:-1])} and {numbers[-1]}" if count == len(bad)
             else f"{', '.join(numbers)} and {count - len(bad):,} more")
    return UserError(f"{path}: lines {named} ({count:,} lines): invalid JSON (line {first} at column {e.colno}:"
                     f" {json_msg(e)}); fix or delete them")


#: what browsers and file managers add to a copy's name: ``review_440 (1)``, ``review_440 - Copy``, ``570-copy``,
#: ``570 copy 2``, ``570_copy``.
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|\s*[-_ ]\s*copy(?:\s*\(?\d+\)?)?)+$", re.IGNORECASE)


def _appid_from_name(path: Path) -> str | None:
    """``review_623080.json`` / ``appID_570.json`` / ``570.jsonl`` → the app id, also from a copy's name
    (``review_440 (1).json``, ``review_440-copy.json``: :data:`_COPY_SUFFIX`); else ``None``."""
    m = re.search(r"(?:^|[_-])(\d{2,})$", _COPY_SUFFIX.sub("", path.stem))
    return m.group(1) if m else None


#: the fields :func:`_from_steam` reads; a record with a column for any other field is a ``table``.
_STEAM_FIELDS = {None, "review", "voted_up", "language", "appid", "votes_up", "review_id", "timestamp_updated",
                 "timestamp_created"}


def _kind(rec: Any) -> str | None:
    """``"review"`` (a raw Steam review: nested ``author``, no other columns), ``"alpaca"``,
    ``"sharegpt"``, or ``None`` (a flat record: read as a ``table``, e.g. ``author.playtime_forever``
    flattened or an ``app_name`` column beside ``review``/``voted_up``)."""
    if not isinstance(rec, dict):
        return None
    if "review" in rec and ("recommendationid" in rec or "voted_up" in rec):
        flat = (columns_mod.field_of(k) for k, v in rec.items() if not (k == "author" and (isinstance(v, dict) or v is None)))
        return "review" if all(f in _STEAM_FIELDS for f in flat) else None
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if isinstance(rec.get("conversations"), list) or isinstance(rec.get("messages"), list):
        return "sharegpt"
    return None


def _read_records(path: Path, records: Iterable[tuple[Any, Any]], jsonl: bool, tag_language: str,
                  columns: dict[str, str] | None = None, word: str = "") -> Loaded:
    """Read records ``(number, value)`` (JSON array or JSON Lines) whose kind is decided by the first one;
    flat records of no known kind (or any review records when ``columns`` is given) are a ``table``.
    Reviews, alpaca and sharegpt records are read one at a time from ``records``."""
    word = word or ("line" if jsonl else "record")
    rest = iter(records)
    head = next(rest, None)
    if head is None:
        raise UserError(f"{path}: no records; remove it from the inputs")
    rows = itertools.chain([head], rest)
    if _is_page(head[1]):
        return _read_pages(path, list(rows), "line" if jsonl else "page", tag_language, columns)
    first = _kind(head[1])
    if (first is None or (columns and first == "review")) and isinstance(head[1], dict):
        loaded = _read_table(path, [(f"{word} {n}", columns_mod.flatten(rec) if isinstance(rec, dict) else rec)
                                    for n, rec in rows], columns or {})
        loaded.container = "JSON lines" if jsonl else "JSON"
        return loaded
    if first is None:
        raise UserError(f"{path}: {word} {head[0]}: unknown record shape ({_a(type(head[1]).__name__)}); "
                        "expected review objects, alpaca (instruction, output) or sharegpt (conversations)")
    fmt = {"review": "collect-jsonl" if jsonl else "review-list", "alpaca": "alpaca", "sharegpt": "sharegpt"}[first]
    loaded = Loaded(path, fmt)
    appid = _appid_from_name(path)
    prefix = f"{path}: {word} "
    odd: list[int] = []
    for n, rec in rows:
        where = prefix + str(n)
        kind = _kind(rec)
        if first == "review" and _odd_review(rec):
            odd.append(n)
            continue
        if kind != first:
            raise UserError(f"{where}: record is not like the first one ({first}); keep one format per file")
        if kind == "review":
            loaded.reviews.append(_from_steam(rec, where, appid))  # a record's own appid wins
        elif kind == "alpaca":
            loaded.reviews.append(_from_alpaca(rec, where))
        else:
            loaded.reviews.extend(_from_sharegpt(rec, where))
    if odd:
        loaded.warnings.append(f"{path}: skipped {len(odd)} review record(s) without 'review' text or with odd fields "
                               f"({word} {', '.join(map(str, odd[:5]))}{' …' if len(odd) > 5 else ''})")
    if fmt == "collect-jsonl":
        details = path.with_suffix(".appdetails.json")
        if details.is_file():
            loaded.apps = read(details, tag_language).apps
    return loaded


def _odd_review(rec: Any) -> bool:
    """A record of a review file that Steam sent oddly (``"review": null``, a non-object ``author``,
    an unknown field): it names a review but cannot be read as one. Skipped with a warning, so one
    odd record does not block its file; records of another kind still stop the file."""
    return isinstance(rec, dict) and ("recommendationid" in rec or "review" in rec) and (
        _kind(rec) != "review" or not isinstance(rec.get("review"), str))


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: ``"an int"``, ``"a list"``."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _read_table(path: Path, rows: list[tuple[str, Any]], columns: dict[str, str], semicolon: bool = False) -> Loaded:
    """Flat rows ``[(where, {header: value})]`` → a ``table`` :class:`Loaded` (see :mod:`steam_persona.reviews.columns`);
    ``semicolon``: a ``;``-separated CSV (its numbers are read with a decimal comma unless they show a point,
    :func:`~steam_persona.reviews.columns.decimal_comma`)."""
    headers: list[str] = []
    for _, row in rows[:50]:
        if isinstance(row, dict):
            headers += [h for h in row if h not in headers]
    mapping = columns_mod.detect(headers, columns, path, [row for _, row in rows[:50] if isinstance(row, dict)])
    loaded = Loaded(path, "table", columns=mapping)
    appid = _appid_from_name(path)
    unread: Counter[str] = Counter()  # verdict cells that read as neither (a word we do not know)
    comma = columns_mod.decimal_comma([row.get(mapping[f]) for _, row in rows if isinstance(row, dict)
                                       for f in columns_mod.NUMERIC_FIELDS if f in mapping], semicolon)
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{path}: {where}: not a record like the first one; keep one format per file")
        text = row.get(mapping["review"])
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            row = {**row, mapping["review"]: str(text)}  # a number is its text, as in a CSV ("100", "9.5")
        elif not isinstance(text, str) and text is not None:  # a list, a truth value: the wrong column, or a broken record
            raise UserError(f"{path}: {where}: '{mapping['review']}' holds {type(text).__name__} {str(text)[:40]!r}, "
                            "not text; fix the record, or map the text column with --columns review=COLUMN")
        v = columns_mod.row_fields(row, mapping, comma)
        if v["voted_up"] is None and str(row.get(mapping.get("voted_up")) or "").strip():
            unread[str(row[mapping["voted_up"]]).strip()] += 1
        loaded.reviews.append(Review(where=f"{path}: {where}", appid=v.pop("appid") or appid, **v))
    if not any(r.text.strip() for r in loaded.reviews):
        raise UserError(f"{path}: column '{mapping['review']}' holds no review text; map the text column with "
                        f"--columns review=COLUMN (columns found: {', '.join(headers[:20])})")
    if unread:
        shown = ", ".join(repr(v) for v, _ in unread.most_common(3))
        loaded.warnings.append(f"{path}: {sum(unread.values()):,} value(s) of column '{mapping['voted_up']}' read as "
                               f"no verdict ({shown}); --voted_up and a {{verdict}} template drop those reviews: "
                               "write them as yes/no, true/false or Recommended/Not Recommended, or map another column")
    return loaded


def _read_parquet(path: Path, raw: bytes, columns: dict[str, str]) -> Loaded:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow, or export the file "
                        "to CSV / JSON Lines") from None
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable Parquet file ({e}); re-export it") from None
    rows = [(f"row {n}", columns_mod.flatten(r)) for n, r in enumerate(table.to_pylist(), 1)]
    if not rows:
        raise UserError(f"{path}: no records; remove it from the inputs")
    loaded = _read_table(path, rows, columns)
    loaded.container = "Parquet"
    return loaded


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _from_steam(rec: Any, where: str, appid: str | None) -> Review:
    """A raw ``appreviews`` review object → :class:`Review` (text unchanged)."""
    if not isinstance(rec, dict) or not isinstance(rec.get("review"), str):
        raise UserError(f"{where}: not a Steam review (no 'review' text); fix or remove it")
    author = rec.get("author")
    author = author if isinstance(author, dict) else {}
    at_review = author.get("playtime_at_review")
    minutes = _int(at_review if at_review is not None else author.get("playtime_forever"))
    voted, app, rid, steamid = rec.get("voted_up"), rec.get("appid"), rec.get("recommendationid"), author.get("steamid")
    return Review(
        text=rec["review"], where=where,
        appid=columns_mod.steam_appid(app) or (str(app) if app is not None else appid),  # 570.0, "５７０", a URL
        language=rec.get("language"), voted_up=columns_mod.voted(voted),
        votes_up=_int(rec.get("votes_up")), playtime_hours=round(minutes / 60, 1) if minutes is not None else None,
        review_id=str(rid) if rid is not None else None,
        updated=columns_mod.written(rec.get("timestamp_updated"), rec.get("timestamp_created")),
        unread_time=columns_mod.unread_time(rec.get("timestamp_updated"), rec.get("timestamp_created")),
        author=str(steamid) if steamid else None, author_id=columns_mod.steam_author(steamid))


def _template_regex(template: str, field_name: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(template).replace(re.escape("{" + field_name + "}"), f"(?P<{field_name}>.+)") + "$", re.S)


_PROMPT_RES = {
    lang: (_template_regex(instr, "name"), _template_regex(inp, "tags"))
    for lang, instr, inp in (("zh", persona.INSTRUCTION_TEMPLATE, persona.INPUT_TEMPLATE),
                             ("en", persona.INSTRUCTION_TEMPLATE_EN, persona.INPUT_TEMPLATE_EN))
}


def parse_prompt(instruction: str, input_text: str) -> tuple[str | None, list[str] | None, str | None]:
    """Recover ``(game name, tags, "zh" | "en")`` from a prompt written with the persona templates
    of either language; ``(None, None, None)`` when it does not follow them (kept verbatim then)."""
    for lang, (irx, trx) in _PROMPT_RES.items():
        m = irx.match(instruction.strip())
        if not m:
            continue
        tags: list[str] = []
        if input_text.strip():
            mt = trx.match(input_text.strip())
            if not mt:
                return None, None, None  # an input we cannot re-render
            tags = [t.strip() for t in re.split(r"[,，、]", mt.group("tags")) if t.strip()]
        return m.group("name"), tags, lang
    return None, None, None


def _from_alpaca(rec: dict, where: str) -> Review:
    instruction, input_text, output = rec.get("instruction"), rec.get("input") or "", rec.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(input_text, str):
        raise UserError(f"{where}: 'instruction', 'input' and 'output' must be strings; fix the record")
    name, tags, lang = parse_prompt(instruction, input_text)
    return Review(text=output, where=where, game_name=name, tags=tags, prompt_language=lang,
                  prompt=None if name else (instruction, input_text))


_ROLE_KEYS = (("from", "value"), ("role", "content"))
_USER, _ASSISTANT = {"human", "user"}, {"gpt", "assistant"}


def _from_sharegpt(rec: dict, where: str) -> Iterator[Review]:
    turns = rec.get("conversations", rec.get("messages"))
    prev_user = None
    for i, t in enumerate(turns, 1):
        role_key, text_key = next(((r, c) for r, c in _ROLE_KEYS if isinstance(t, dict) and r in t), (None, None))
        if role_key is None or not isinstance(t.get(text_key), str):
            raise UserError(f"{where}: turn {i}: expected from/value or role/content strings; fix the record")
        role = t[role_key]
        if role in _USER:
            prev_user = t[text_key]
        elif role in _ASSISTANT and prev_user is not None:
            instruction, _, input_text = prev_user.partition("\n")
            name, tags, lang = parse_prompt(instruction, input_text)
            yield Review(text=t[text_key], where=f"{where} turn {i}", game_name=name, tags=tags,
                         prompt_language=lang, prompt=None if name else (instruction, input_text))
            prev_user = None


def _appdetails(data: dict) -> dict[str, AppInfo] | None:
    """Parse appdetails JSON (wrapped per app id, or one bare ``data`` object); ``None`` if it is not."""
    if "steam_appid" in data and "name" in data:
        return {str(data["steam_appid"]): _app_info(data)}
    if data and all(k.isdigit() and isinstance(v, dict) and "success" in v for k, v in data.items()):
        return {k: _app_info(v.get("data") or {}) for k, v in data.items() if v.get("success")}
    return None


def _app_info(d: dict) -> AppInfo:
    genres = [g.get("description") for g in d.get("genres") or [] if isinstance(g, dict) and g.get("description")]
    return AppInfo(name=d.get("name") or None, tags=genres or None)


#: the most characters one CSV field may hold (a store-scrape ``user_reviews`` cell holds a game's reviews):
#: reading a field costs about 18 times its size in memory
CSV_FIELD_LIMIT = 1 << 24
#: the longest physical line, in bytes, read from a UTF-8 JSON Lines or CSV/TSV file (a field of
#: :data:`CSV_FIELD_LIMIT` characters at up to 4 bytes each); a longer one is refused when this much of it is read
LINE_BYTES_CAP = 4 * CSV_FIELD_LIMIT


def _header(path: Path, reader: csv.DictReader, line: int) -> list[str]:
    """``reader``'s header (on line ``line``).

    Raises:
        UserError: a header with a field over :data:`CSV_FIELD_LIMIT` (a quote that never closes, or not a table).
    """
    try:
        return reader.fieldnames or []
    except csv.Error as e:
        if not _over_field_limit(e):
            raise _broken_csv(path, line, e) from None
        raise UserError(f"{path}: line {line}: the header holds a field of more than {CSV_FIELD_LIMIT:,} characters (a "
                        "quote that never closes, or not a review table); put the column names on line 1, or convert "
                        "the file to JSON Lines") from None


def _over_field_limit(e: csv.Error) -> bool:
    return "field larger than field limit" in str(e)


def _broken_csv(path: Path, line: int, e: csv.Error) -> UserError:
    return UserError(f"{path}: broken CSV near line {line} ({e}); fix the quoting")


def _over_limit(path: Path, src: _RowLines, start: int, line_num: int) -> str:
    """Read past a record (the row from line ``start``, named by it as every row is; the reader stopped on line
    ``line_num``) that ``csv``
    stopped at a field over :data:`CSV_FIELD_LIMIT` (:meth:`_RowLines.skip_record`); the warning that names it. A
    quote left open by mistake can make such a field of many rows, so the warning names the lines it spans.

    Raises:
        UserError: when the record's quote never closes (the file ends inside it).
    """
    skipped = src.skip_record()
    if skipped is None:
        raise UserError(f"{path}: row {start}: a double quote opens a text that never closes (it runs "
                        f"past the {CSV_FIELD_LIMIT:,}-character field limit to the end of the file); remove the quote, "
                        "or close it")
    end = line_num + skipped
    lines = f" (lines {start}-{end})" if end > start else ""
    return (f"{path}: row {start}{lines}: a field of more than {CSV_FIELD_LIMIT:,} characters; dropped as too_long. "
            f"Shorten or remove the review; if a quote on line {start} was left open by mistake, close it and rerun")


def _read_csv(path: Path, chunks: Iterable[str], tag_language: str, columns: dict[str, str] | None) -> Loaded:
    """CSV or TSV (delimiter sniffed from the header line, or given by Excel's ``sep=;`` hint on line 1, which is
    skipped): the store-scrape CSV when it has ``title`` + ``user_reviews``, else a ``table``. ``chunks`` are the
    text's pieces that end at ``\\n`` (a streamed file's lines, or ``io.StringIO(text, newline="\\n")``)."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    chunks = iter(chunks)
    first = next(chunks, "").lstrip("\ufeff")
    header = first.removesuffix("\n")
    hint = _SEP_HINT.fullmatch(header.rstrip("\r"))
    ahead = [first]
    if hint:
        ahead.append(next(chunks, ""))
        header = ahead[1].removesuffix("\n")
    delim = hint.group(1) if hint else max((",", "\t", ";", "|"), key=header.count)  # one column reads as CSV
    src = _RowLines(itertools.chain(ahead, chunks))
    reader = csv.DictReader(src, delimiter=delim)
    if hint:
        next(reader.reader, None)  # the hint line still counts in line_num, so lines keep their numbers
    cols = [c for c in _header(path, reader, 1 + bool(hint)) if c is not None]
    if not cols or (len(cols) == 1 and not columns and columns_mod.field_of(cols[0]) != "review"):
        raise UserError(f"{path}: no CSV/TSV header found (first line: {header[:60]!r}); "
                        "put the column names on line 1, or convert the file to JSON Lines")
    repeated = columns_mod.repeated(cols, columns or {}, path)
    if "title" in cols and "user_reviews" in cols and not columns:
        src.take()
        return _read_store_csv(path, reader, tag_language, src)
    if not columns and not any(columns_mod.field_of(c) == "review" for c in cols):
        _refuse_title_rows(path, _bodies(src.kept + src.ahead(10))[1:10], delim)
    rows, over, said, headers, last, span = [], [], [], 0, [], (0, 0)
    rowlike = _RowLike(delim, _end(src.take()[-1]), one_column=len(cols) == 1)
    start = reader.line_num + 1  # the line the next row starts on (a row is named by it)
    for row in _rows(path, reader, lambda: start, src):
        if isinstance(row, str):
            over.append(Review(text="", where=f"{path}: row {start}", over_limit=True))
            said.append(row)
            start = reader.reader.line_num + src.blank + 1
            continue
        read = src.take()
        if None not in row and [str(v).lstrip("\ufeff") for v in row.values()] == [c.lstrip("\ufeff") for c in row]:
            headers += 1  # the header again: files joined by cat, each with its header
            last = last + read
        else:
            rows.append((f"row {start}", _whole_row(path, reader, row, delim, read, src, start)))
            last = read
            span = (start, reader.line_num)
            rowlike.add(start, read, rows[-1][1])
        start = reader.line_num + 1
    if not rows and not over:
        raise UserError(f"{path}: no rows under the header; remove it from the inputs")
    _refuse_unclosed_quote(path, _bodies(last + src.take()), span, delim)
    loaded = _read_table(path, rows, columns or {}, semicolon=delim == ";") if rows else Loaded(path, "table")
    loaded.reviews += over
    loaded.container = "TSV" if delim == "\t" else "CSV"
    loaded.warnings += repeated + said + rowlike.warnings(path)
    if headers:
        loaded.warnings.append(f"{path}: the header line came again {headers:,} time(s) below the first (files joined "
                               "into one?); skipped, not read as a review")
    return loaded


#: one line with its end, as ``io.StringIO(text, newline="")`` gives it (and so ``csv.reader``)
_LINE_WITH_END = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


class _RowLines:
    """The lines of a CSV text, each with its end, fed to ``csv.reader`` one at a time from the text's pieces that
    end at ``\\n``. The lines read since the last :meth:`take` are :attr:`kept` (the row just read, for its
    messages and checks), so that the text is never held whole."""

    def __init__(self, chunks: Iterable[str]):
        self._lines = (line for chunk in chunks for line in _LINE_WITH_END.findall(chunk))
        self._ahead: list[str] = []
        self.kept: list[str] = []
        self.blank = 0  # lines read past by skip_record, still to be counted by the reader

    def __iter__(self) -> _RowLines:
        return self

    def __next__(self) -> str:
        if self.blank:
            self.blank -= 1
            return "\n"  # an empty line: csv reads it as no row, and counts it
        line = self._next()
        self.kept.append(line)
        return line

    def _next(self) -> str:
        return self._ahead.pop(0) if self._ahead else next(self._lines)

    def skip_record(self) -> int | None:
        """After ``csv`` stopped inside a record at its field limit (the record's lines read so far are
        :attr:`kept`): read on, keeping nothing, to the line end where the record's quotes are closed (counted per
        line, as :func:`csvquotes.opening_line` does); the number of lines read on, which the reader is then served
        as empty lines so that its line numbers stay true; ``None`` when the file ends first."""
        open_ = sum(line.count('"') for line in self.take()) % 2 == 1
        read = 0
        while open_:
            try:
                line = self._next()
            except StopIteration:
                return None
            read += 1
            open_ ^= line.count('"') % 2 == 1
        self.blank = read
        return read

    def ahead(self, n: int) -> list[str]:
        """The next ``n`` lines (fewer at the end), left for the reader."""
        self._ahead += itertools.islice(self._lines, max(0, n - len(self._ahead)))
        return self._ahead[:n]

    def take(self) -> list[str]:
        """The lines read since the last call."""
        kept, self.kept = self.kept, []
        return kept

    def to_end(self) -> list[str]:
        """:meth:`take` after reading the rest of the text (for a message about a row that runs on)."""
        for _ in self:
            pass
        return self.take()


def _end(line: str) -> str:
    """How ``line`` (one of :class:`_RowLines`) ends: ``\\r\\n``, ``\\r``, ``\\n`` or ``""``."""
    return line[len(line.rstrip("\r\n")):]


def _bodies(lines: list[str]) -> list[str]:
    """``lines`` (each with its end) without their ends, as ``_LINE_END.split`` gives them: ``""`` after a last end."""
    return [line.rstrip("\r\n") for line in lines] + ([""] if not lines or _end(lines[-1]) else [])


def _refuse_title_rows(path: Path, lines: list[str], delim: str) -> None:
    """Refuse a CSV whose header is not on line 1 (a title or a date above it, as spreadsheet exports have): a
    line of the first ten (``lines`` are lines 2-10) whose cells name the review column is the header.

    Raises:
        UserError: naming that line and the lines above it to delete.
    """
    for n, line in enumerate(lines, 2):
        cells = next(csv.reader([line], delimiter=delim), [])
        if any(columns_mod.field_of(c) == "review" for c in cells):
            above = "line 1" if n == 2 else f"lines 1-{n - 1}"
            raise UserError(f"{path}: line {n} looks like the header ({', '.join(c for c in cells if c)[:80]}), with "
                            f"{above} above it (a title?); delete {above} so that the header is line 1, and rerun")


#: Excel's separator hint on line 1 of a CSV (``sep=;``): Excel reads and writes it, the ``csv`` module does not
_SEP_HINT = re.compile(r"sep=(.)")
_DELIM_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "vertical bar"}


def _whole_row(path: Path, reader: csv.DictReader, row: dict[str, Any], delim: str, read: list[str],
               src: _RowLines, start: int) -> dict[str, Any]:
    """``row`` (which starts on line ``start``; ``read`` are its lines, and ``src`` the rest of the file) when it has
    exactly the header's fields. ``csv.DictReader``
    files extra fields under the ``None`` key (its ``restkey``) and fills missing ones with ``None`` (its ``restval``):
    either means an unquoted separator in a text, or the wrong separator, or a quote that never closes (the lenient
    reader takes the lines after it into one text), and reading on would cut or shift the text silently.

    Raises:
        UserError: naming the file, the line (the row's last line; an unclosed quote's first) and the fixes.
    """
    extra = row.get(None)
    if extra is None and None not in row.values():
        if len(read) > 1:
            _refuse_reopened(path, _bodies(read)[:len(read)], start, delim)
        return row
    width = len(reader.fieldnames or [])
    found = width + len(extra) if extra is not None else sum(v is not None for k, v in row.items())
    rest = _bodies(read + src.to_end())
    lines = rest[:reader.line_num - start + 1]
    opened = csvquotes.opening_line(lines, start)
    if extra is None and csvquotes.ends_open(rest, delim):
        _runaway(path, opened or start, "the rest of the file would read as one text")
    if opened is not None:
        inner = [start + i for i, line in enumerate(lines[1:], 1)
                 if csvquotes.looks_like_row(line, delim, [(set(), None)] * width)]
        if inner:
            _runaway(path, opened, f"line {inner[0]}, a row of its own, would read as part of its text")
    raise UserError(f"{path}: line {reader.line_num}: {found} field{'s' * (found != 1)} where the header has {width} (separator read as "
                    f"{_DELIM_NAMES[delim]}); put double quotes around a text that holds a {_DELIM_NAMES[delim]} "
                    f"(\"Good, but short\"), or save the file with one separator throughout")


def _refuse_reopened(path: Path, lines: list[str], start: int, delim: str) -> None:
    """Refuse a record over several ``lines`` (from line ``start``) whose quoted text is closed by a quote that opens a
    later row's field: a stray quote took the lines between into its text (:func:`csvquotes.reopening_line`).

    Raises:
        UserError: naming the line where the quote opens.
    """
    i = csvquotes.reopening_line(lines, delim)
    if i is not None:
        opened = csvquotes.opening_line(lines, start) or start
        _runaway(path, opened, f"the quote that opens a text on line {start + i} closes it instead, so lines "
                               f"{opened}-{start + i} read as one text")


def _runaway(path: Path, line: int, why: str) -> NoReturn:
    raise UserError(f"{path}: line {line}: a double quote opens a text that never closes ({why}); remove the quote, "
                    "close it, or double a quote inside a quoted text (\"\")")


def _ranges(numbers: list[int]) -> str:
    """Ascending line ``numbers`` as runs: ``[8, 9, 10, 12]`` → ``"8-10, 12"``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _refuse_unclosed_quote(path: Path, lines: list[str], last: tuple[int, int], delim: str) -> None:
    """Refuse a text still open at the end of the file (see :mod:`steam_persona.reviews.csvquotes`);
    ``last`` is the last row's first and last line, and ``lines`` the file's lines from that first one on.

    Raises:
        UserError: naming the line where the quote opens.
    """
    a, b = last
    if csvquotes.ends_open(lines, delim):
        _runaway(path, csvquotes.opening_line(lines[:b - a + 1], a) or a, "the rest of the file would read as one text")


#: how many records with row-like lines are named one by one; the rest are counted in one more warning
_ROWLIKE_SHOWN = 5
#: a one-column file's multi-line texts are warned of only when at most one row in this many (or one row) runs over
#: several lines: where multi-line reviews are the file's way, a stray quote's text cannot be told from them
_ONE_COLUMN_RARE = 50


class _RowLike:
    """The multi-line texts of a CSV whose inner lines look like rows of the file (a quote left open and closed by a
    later stray quote, or a review that lists ``Graphics, 9/10``: see :mod:`steam_persona.reviews.csvquotes`), found
    row by row as the file is read: a row of several lines waits only until the columns' kinds are learnt from the
    first :data:`~steam_persona.reviews.csvquotes.SAMPLE` single-line rows. ``row_end`` is how the header's line ends.
    In a file of ``one_column`` every line reads as a row (:func:`csvquotes.one_column_rows`)."""

    def __init__(self, delim: str, row_end: str, one_column: bool = False):
        self.delim, self.row_end, self.one_column = delim, row_end, one_column
        self.rows = self.multi = 0  # rows, and (one column) rows whose quoted text runs over a line end
        self.single: list[list[Any]] = []
        self.kinds: list[tuple[set[str], set[str] | None]] | None = None
        self.waiting: list[tuple[int, list[str]]] = []
        self.found: list[tuple[int, list[int]]] = []

    def add(self, start: int, read: list[str], row: dict[str, Any]) -> None:
        """The row ``row`` that starts on line ``start``; ``read`` are its lines, each with its end."""
        self.rows += 1
        self.multi += self.one_column and len(read) > 1 and csvquotes.opening_line(_bodies(read), start) is not None
        if len(read) == 1 and self.kinds is None:
            self.single.append(list(row.values()))
            if len(self.single) == csvquotes.SAMPLE:
                self._learn()
        elif len(read) > 1:
            if self.kinds is None:
                self.waiting.append((start, read))
            else:
                self._check(start, read)

    def _learn(self) -> None:
        self.kinds = csvquotes.column_kinds(self.single)
        for start, read in self.waiting:
            self._check(start, read)
        self.waiting = []

    def _check(self, start: int, read: list[str]) -> None:
        lines = [line.rstrip("\r\n") for line in read]
        rowlike = (csvquotes.one_column_rows(lines, start) if self.one_column
                   else csvquotes.swallowed_rows(lines, start, self.delim, self.kinds or []))
        inner = [n for n in rowlike if _end(read[n - start]) == self.row_end]
        if inner:
            self.found.append((csvquotes.opening_line(lines, start) or start, inner))

    def warnings(self, path: Path) -> list[str]:
        """One warning per text found (the first :data:`_ROWLIKE_SHOWN`, then their count); the texts are kept."""
        if self.kinds is None and self.waiting:
            self._learn()
        found, why = self.found, ""
        if self.one_column:
            if self.multi > max(1, self.rows // _ONE_COLUMN_RARE):
                return []
            why = f" (one column, and {self.multi:,} of its {self.rows:,} rows run{'s' * (self.multi == 1)} over several lines)"
        out = [f"{path}: line {a}: a quoted text runs on over line{'s' * (len(inner) > 1)} {_ranges(inner)}, "
               f"which look{'s' * (len(inner) == 1)} like {'rows' if len(inner) > 1 else 'a row'} of the file{why}; kept "
               f"as that review's text. If the quote on line {a} was left open by mistake, close or remove it (a quote "
               f"inside a quoted text is doubled: \"\") and rerun prepare" for a, inner in found[:_ROWLIKE_SHOWN]]
        if len(found) > _ROWLIKE_SHOWN:
            out.append(f"{path}: {len(found) - _ROWLIKE_SHOWN} more quoted texts hold lines that look like rows "
                       f"(first on line {found[_ROWLIKE_SHOWN][0]}); kept as texts")
        return out


def _rows(path: Path, reader: csv.DictReader, start: Callable[[], int], src: _RowLines,
          ) -> Iterator[dict[str, Any] | str]:
    """``reader``'s rows (``src`` its lines; ``start()``: the line the next row starts on), and for a record with a
    field over :data:`CSV_FIELD_LIMIT`, read past, :func:`_over_limit`'s warning.

    Raises:
        UserError: ``csv``'s other errors, naming the line.
    """
    while True:
        try:
            yield from reader
            return
        except csv.Error as e:
            if not _over_field_limit(e):
                raise _broken_csv(path, reader.line_num, e) from None
            yield _over_limit(path, src, start(), reader.reader.line_num)


def _read_store_csv(path: Path, reader: csv.DictReader, tag_language: str, src: _RowLines) -> Loaded:
    """The store-scrape CSV (``src``'s lines, read by ``reader``): one row per game, its reviews a JSON list in
    ``user_reviews``."""
    loaded = Loaded(path, "store-csv")
    lang = 1 if tag_language == "zh" else 0
    start = reader.line_num + 1  # the line the next row starts on (a row is named by it)
    for row in _rows(path, reader, lambda: start, src):
        where = f"{path}: row {start}"
        if isinstance(row, str):
            raise UserError(f"{where}: a field of more than {CSV_FIELD_LIMIT:,} characters; split the game's reviews "
                            "over several rows, or remove the row")
        row = _whole_row(path, reader, row, ",", src.take(), src, start)
        start = reader.line_num + 1
        try:
            reviews = load_json(row["user_reviews"] or "[]")
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: user_reviews is not a JSON list ({json_msg(e)}); fix the cell") from None
        if not isinstance(reviews, list):
            raise UserError(f"{where}: user_reviews must be a JSON list of review texts; fix the cell")
        tags = _csv_tags(row.get("tags_raw") or "", loaded.unknown_tag_ids, lang, where)
        appid = (row.get("item_id") or "").strip() or None
        name = (row.get("title") or "").strip() or None
        if appid:
            loaded.apps[appid] = AppInfo(name=name, tags=tags or None)
        for i, r in enumerate(reviews, 1):
            text = r.get("review") if isinstance(r, dict) else r
            if not isinstance(text, str):
                raise UserError(f"{where}: review {i} in user_reviews is not a text; fix the cell")
            loaded.reviews.append(Review(text=text, where=f"{where} review {i}", appid=appid, game_name=name,
                                         tags=tags or None))
    return loaded


def read_app_names(path: Path, tag_language: str = "zh", encoding: str = "utf-8") -> dict[str, AppInfo]:
    """``--app_names FILE``: game names (and tags) by app id, from a CSV/TSV with ``appid`` and
    ``name`` columns (``tags`` optional), a JSON ``{appid: name}`` object or appdetails JSON.

    Raises:
        UserError: a missing file, or one with no app id and name.
    """
    if not path.is_file():
        raise UserError(f"{path}: --app_names file not found; check the path")
    text = decode(path, _read_bytes(path)[0], encoding)
    if text.lstrip().startswith("{"):
        try:
            data = load_json(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({json_msg(e)}); fix the file") from None
        apps = _appdetails(data)
        if apps is None:
            apps = _json_app_names(path, data)
        if apps:
            return apps
    else:
        apps = _csv_app_names(path, text.lstrip("\ufeff"))
        if apps:
            return apps
    raise UserError(f"{path}: no app ids and names found; write a CSV with columns appid,name[,tags] or a JSON "
                    "object {\"appid\": \"name\"}")


def _json_app_names(path: Path, data: dict[str, Any]) -> dict[str, AppInfo]:
    """``{appid: name}`` of an ``--app_names`` JSON file.

    Raises:
        UserError: a key that is no app id, or a name that is not text."""
    apps = {}
    for key, name in data.items():
        appid = columns_mod.steam_appid(key)
        if appid is None:
            raise UserError(f"{path}: key {key!r} is not a Steam app id (digits); write {{\"appid\": \"name\"}}")
        if not isinstance(name, str):
            raise UserError(f"{path}: \"{key}\": the name is {json.dumps(name, ensure_ascii=False)[:40]}, not text; "
                            f"write {{\"{appid}\": \"NAME\"}}")
        apps[appid] = AppInfo(name=name.strip() or None)
    return apps


def _csv_app_names(path: Path, text: str) -> dict[str, AppInfo]:
    """``appid,name[,tags]`` rows of an ``--app_names`` CSV/TSV file (empty when it has no such columns).

    Raises:
        UserError: a row whose appid is no Steam app id, with its line."""
    delim = max(("\t", ",", ";"), key=text.split("\n", 1)[0].count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    mapping = {columns_mod.field_of(h): h for h in (reader.fieldnames or [])}
    name_col = mapping.get("app_name") or mapping.get("author")  # a bare "name" column names the game here
    if not (mapping.get("appid") and name_col):
        return {}
    apps = {}
    for r in reader:
        cell = (r.get(mapping["appid"]) or "").strip()
        if not cell:
            continue
        appid = columns_mod.steam_appid(cell)
        if appid is None:
            raise UserError(f"{path}: line {reader.line_num}: appid {cell!r} is not a number; write the Steam app "
                            f"id (digits) in column {mapping['appid']!r}")
        apps[appid] = AppInfo(name=(r[name_col] or "").strip() or None,
                              tags=columns_mod.split_tags(r.get(mapping.get("tags") or "")))
    return apps


def _csv_tags(cell: str, unknown: set[int], lang: int, where: str) -> list[str]:
    """``tags_raw``: a JSON list of Steam tag ids (or names) → tag names, unknown ids skipped."""
    cell = cell.strip()
    if not cell:
        return []
    try:
        items = load_json(cell)
    except json.JSONDecodeError:
        items = [t for t in re.split(r"[,，;|]", cell.strip("[]")) if t.strip()]
    if not isinstance(items, list):
        items = [items]
    names = []
    for t in items:
        tid = _int(t)
        if tid is None:
            if str(t).strip():
                names.append(str(t).strip().strip("'\""))
        elif tid in STEAM_TAGS:
            names.append(STEAM_TAGS[tid][lang])
        else:
            unknown.add(tid)
    return names

