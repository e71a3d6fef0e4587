"""Text files in a user-chosen encoding, with an error that says how to fix a wrong one (shared by
training's dataset loader and ``prepare``'s readers)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from rich.markup import escape

from steam_persona.common.console import console
from steam_persona.common.errors import UserError


def decode(path: Path, raw: bytes, encoding: str) -> str:
    """``raw`` (the bytes of ``path``) as text in ``--encoding`` (``utf-8`` also accepts a BOM). A file whose non-ASCII
    bytes are valid UTF-8 is read as UTF-8 whatever a legacy ``--encoding`` (gbk, cp1252, latin-1 …) says, with a
    note: one flag serves every input, and Latin-1 would turn UTF-8 into mojibake (``TrÃ¨s``) without an error.

    Raises:
        UserError: an unknown encoding, or bytes that are not valid in it: the line, the byte offset
            and a hint (:func:`_hint`).
    """
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    if not enc.lower().startswith("utf") and not raw.isascii():
        try:  # --encoding gbk / cp1252 for a folder whose other files are UTF-8: read those as written
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            pass
        else:  # legacy-encoded text with non-ASCII bytes is practically never valid UTF-8
            console.print(f"[yellow]note[/] {escape(str(path))}: read as UTF-8 (its bytes are valid UTF-8), not as "
                          f"--encoding {escape(encoding)}")
            return text
    try:
        return raw.decode(enc)
    except LookupError:
        raise UserError(f"{path}: unknown --encoding '{encoding}'; use e.g. utf-8, gbk, gb18030, utf-16") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise UserError(f"{path}: line {line}, byte {column}: not valid {encoding}; {_hint(raw)}") from None


_LATIN = re.compile("[\u00c0-\u00ff]")
#: What Windows-1252 makes of the bytes 0x80–0x9F that are its punctuation (’ “ ” – — … € ™ …): Latin-1 has
#: control characters there and GBK lead bytes, whose second byte is rarely ASCII.
_CP1252_PUNCT = frozenset(bytes(range(0x80, 0xA0)).decode("cp1252", "ignore")) - set("ŠšŒœŽžŸƒ")
_NON_ASCII = re.compile("[^\x00-\x7f]")
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
#: Japanese or Traditional Chinese text: kana, ideographs, CJK and full-width punctuation (not half-width
#: katakana, which GBK's lead bytes become in Shift-JIS)
_CJK = re.compile("[\u3000-\u30ff\u4e00-\u9fff\uff01-\uff5e]")
_HANGUL = re.compile("[\uac00-\ud7a3]")
#: a Cyrillic word, lower case, capitalised or upper case, with no letter on either side
_CYRILLIC_WORD = re.compile(r"(?<![^\W\d_])(?:[\u0400-\u042f]?[\u0430-\u045f]+|[\u0400-\u042f]+)(?![^\W\d_])")
_CYRILLIC_VOWELS = frozenset("аеёиоуыэюяіїєў")
#: the lines holding non-ASCII bytes that are read to tell the encoding: this many bytes of them is enough
_SAMPLE_BYTES = 1 << 18
#: fewer Hangul syllables than this may be GBK text whose lead bytes fell in Hangul's range by chance
_MIN_HANGUL = 10
#: Korean's commonest particles and endings, about a third of the syllables of Korean text
_KOREAN_COMMON = frozenset("이가은는을를의에도고다요하지서게한로과와습니")


def _hint(raw: bytes) -> str:
    """How to read bytes that are not UTF-8: a UTF-16 byte-order mark says so; a file whose lines are UTF-8 and
    one legacy encoding says that it mixes them (:func:`_mixed_hint`); otherwise the legacy encoding
    (:func:`_guess`) of the lines holding non-ASCII bytes."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it starts with a UTF-16 byte-order mark; pass --encoding utf-16"
    lines = _non_ascii_lines(raw)
    mixed = _mixed_hint(raw, lines)
    if mixed:
        return mixed
    best = _guess(b"\n".join(line for _, line in lines))
    if best is None:
        return "re-save it as UTF-8 or pass the right --encoding"
    looks, flag, _ = _CANDIDATES[best]
    return f"it looks {looks}; re-save it as UTF-8 or pass --encoding {flag}"


def _guess(sample: bytes) -> str | None:
    """The legacy encoding (:data:`_CANDIDATES`) whose strict decoding of ``sample`` looks most like its script,
    judged by the non-ASCII characters alone, so that a mostly English file with a few Chinese names is as GBK as a
    Chinese one; ``None`` when none looks like it."""
    scores = {codec: _score(sample, codec, share) for codec, (_, _, share) in _CANDIDATES.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0.5 else None


def _mixed_hint(raw: bytes, lines: list[tuple[int, bytes]]) -> str | None:
    """The hint for a file whose non-ASCII ``lines`` (:func:`_non_ascii_lines`) are partly UTF-8 and partly a legacy
    encoding (rows appended from another export), which no single ``--encoding`` reads; ``None`` when the file
    does not look so: the lines that are valid UTF-8 must not look like the legacy encoding too, as a few GBK
    characters may be valid UTF-8 by chance."""
    utf8, other = [], []
    for start, line in lines:
        (other if _undecodable(line, "utf-8") else utf8).append((start, line))
    if not utf8 or not other:
        return None
    best = _guess(b"\n".join(line for _, line in other))
    if best is None or _score(b"\n".join(line for _, line in utf8), best, _CANDIDATES[best][2]) > 0.5:
        return None
    first_utf8, first_other = (raw.count(b"\n", 0, group[0][0]) + 1 for group in (utf8, other))
    looks, flag, _ = _CANDIDATES[best]
    return (f"the file mixes encodings: line {first_utf8} is UTF-8, line {first_other} looks {looks}, and no single "
            f"--encoding reads both; convert the lines that are not UTF-8 (from line {first_other}) to UTF-8, as "
            f"`iconv -f {flag} -t utf-8` does, or remove them")


def _undecodable(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return True
    return False


def _non_ascii_lines(raw: bytes) -> list[tuple[int, bytes]]:
    """The lines of ``raw`` that hold a non-ASCII byte, each with its offset, up to about :data:`_SAMPLE_BYTES` of
    them."""
    lines, size, pos = [], 0, 0
    while size < _SAMPLE_BYTES and (m := _HIGH_BYTE.search(raw, pos)):
        start, end = raw.rfind(b"\n", 0, m.start()) + 1, raw.find(b"\n", m.start())
        pos = len(raw) if end < 0 else end
        lines.append((start, raw[start:pos]))
        size += pos - start
    return lines


def _score(raw: bytes, encoding: str, share: Callable[[str], float]) -> float:
    try:
        return share(raw.decode(encoding))
    except UnicodeDecodeError:
        return 0.0


def _gb2312_share(text: str) -> float:
    """The share of ``text``'s non-ASCII characters that GB2312 holds (common simplified Chinese characters and
    punctuation): GBK text has few others, while Big5, Shift-JIS or Windows-1252 read as GB18030 give the rare
    characters of GBK's extension."""
    wide = _NON_ASCII.findall(text)
    return sum(_encodes(c, "gb2312") for c in wide) / max(1, len(wide))


def _encodes(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _cjk_share(text: str) -> float:
    return len(_CJK.findall(text)) / max(1, len(_NON_ASCII.findall(text)))


def _hangul_share(text: str) -> float:
    """The share of ``text``'s non-ASCII characters that are Hangul syllables, when there are enough of them and
    enough are Korean's commonest particles and endings (:data:`_KOREAN_COMMON`, a third of the syllables of Korean
    text): GBK read as CP949 gives Hangul too where its lead bytes fall in Hangul's range, but seldom those."""
    hangul = _HANGUL.findall(text)
    if len(hangul) < _MIN_HANGUL or sum(c in _KOREAN_COMMON for c in hangul) < 0.2 * len(hangul):
        return 0.0
    return len(hangul) / max(1, len(_NON_ASCII.findall(text)))


def _cyrillic_share(text: str) -> float:
    """The share of ``text``'s non-ASCII characters in Cyrillic words (:data:`_CYRILLIC_WORD`) of two letters or more
    with a vowel, between non-letters: Russian or Ukrainian text. CJK bytes read as Windows-1251 give Cyrillic
    letters too, but in runs of mixed case; Windows-1252 accents give them inside Latin words, or as one-letter words
    (Portuguese "é" reads as "й")."""
    words = [w for w in _CYRILLIC_WORD.findall(text) if len(w) > 1 and _CYRILLIC_VOWELS.intersection(w.lower())]
    return sum(map(len, words)) / max(1, len(_NON_ASCII.findall(text)))


def _latin_share(text: str) -> float:
    """The share of ``text``'s non-ASCII characters that read as Western text (:func:`_latin_like`): English from
    Excel or Notepad (``It’s``, ``“best”``, ``café``); Chinese read as Windows-1252 gives runs of accented letters
    with no ASCII between them."""
    wide = [i for i, c in enumerate(text) if ord(c) > 127]
    return sum(_latin_like(text, i) for i in wide) / max(1, len(wide))


def _latin_like(text: str, i: int) -> bool:
    """``text[i]`` reads as Western text: an accented letter next to an ASCII letter, or Windows-1252
    punctuation with ASCII (or the text's start or end) on both sides."""
    around = [text[j] for j in (i - 1, i + 1) if 0 <= j < len(text)]
    if _LATIN.match(text[i]):
        return any(c.isascii() and c.isalpha() for c in around)
    return text[i] in _CP1252_PUNCT and all(c.isascii() for c in around)


#: each candidate encoding: what it looks like, the --encoding that reads it, and how much its decoding looks like
#: its script (0 to 1); in the order that breaks a tie: Korean read as GB18030 is all GB2312 characters too, and
#: Windows-1252 text can read as Shift-JIS ideographs
_CANDIDATES: dict[str, tuple[str, str, Callable[[str], float]]] = {
    "cp949": ("EUC-KR/CP949-encoded (Korean Windows)", "cp949", _hangul_share),
    "gb18030": ("GBK/GB18030-encoded", "gbk", _gb2312_share),
    "cp1252": ("Windows-1252 / Latin-1 (Excel on Western Windows)", "cp1252", _latin_share),
    "cp932": ("Shift-JIS-encoded (Japanese Windows)", "cp932", _cjk_share),
    "cp950": ("Big5-encoded (Traditional Chinese Windows)", "cp950", _cjk_share),
    "cp1251": ("Windows-1251-encoded (Cyrillic Windows, e.g. Russian Excel)", "cp1251", _cyrillic_share),
}


def load_json(text: str, **kwargs: Any) -> Any:
    """``json.loads(text, **kwargs)``, where nesting deeper than Python's parser takes (about 1,000 levels: a
    ``RecursionError``) is a :class:`json.JSONDecodeError` at the deepest bracket, so that the caller's handler
    names the file, line and column as for any other broken JSON."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        depth, pos = _deepest(text)
        raise json.JSONDecodeError(f"brackets nested {depth} deep, deeper than the JSON reader takes",
                                   text, pos) from None


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _deepest(text: str) -> tuple[int, int]:
    """The deepest nesting of ``[`` / ``{`` in JSON ``text`` (strings skipped) and the offset where it is reached."""
    depth = deepest = at = 0
    for m in _JSON_TOKEN.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, at = depth, m.start()
        elif token in ("]", "}"):
            depth -= 1
    return deepest, at


def json_msg(e: json.JSONDecodeError) -> str:
    """``e.msg`` for a message that already names the line and column: Python's messages that end in
    "at" (``Unterminated string starting at``, meant to be followed by the position) end in "there". An
    error right after a comma asks about a trailing comma, the common hand-edit mistake."""
    msg = e.msg[:-3] + " there" if e.msg.endswith(" at") else e.msg
    if e.doc[:e.pos].rstrip().endswith(","):
        msg += "; a comma too many? JSON allows no trailing comma before ']' or '}'"
    return msg
