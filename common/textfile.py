"""Text files in a user-chosen encoding, with an error that says how to fix a wrong one (shared by
training's dataset loader and ``prepare``'s readers)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


_CJK = re.compile("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")
_LATIN = re.compile("[\u00c0-\u00ff]")
#: What Windows-1252 makes of the bytes 0x80–0x9F that are its punctuation (’ “ ” – — … € ™ …): Latin-1 has
#: control characters there and GBK lead bytes, whose second byte is rarely ASCII.
_CP1252_PUNCT = frozenset(bytes(range(0x80, 0xA0)).decode("cp1252", "ignore")) - set("ŠšŒœŽžŸƒ")
_HINTS = {"gb18030": "it looks GBK/GB18030-encoded; re-save it as UTF-8 or pass --encoding gbk",
          "cp1252": "it looks Windows-1252 / Latin-1 (Excel on Western Windows); re-save it as UTF-8 or pass "
                    "--encoding cp1252"}


def _hint(raw: bytes) -> str:
    """How to read bytes that are not UTF-8: a UTF-16 byte-order mark says so; otherwise the legacy
    encoding whose decoding looks like its script. Both GB18030 and Windows-1252 decode most byte
    strings, so each decoding is scored: GB18030 by the share of CJK characters among the letters
    (Latin text read as GB18030 has a few stray ideographs among many ASCII letters), Windows-1252 by
    the share of non-ASCII characters that are accented letters next to an ASCII letter or Windows-1252
    punctuation between ASCII characters (``It’s``, ``“best”``: English from Excel or Notepad); Chinese read
    as Windows-1252 gives runs of accented letters with no ASCII between them."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "it starts with a UTF-16 byte-order mark; pass --encoding utf-16"
    scores = {"gb18030": _score(raw, "gb18030", _cjk_share), "cp1252": _score(raw, "cp1252", _latin_share)}
    best = max(scores, key=scores.get)
    return _HINTS[best] if scores[best] > 0.25 else "re-save it as UTF-8 or pass the right --encoding"


def _score(raw: bytes, encoding: str, share) -> float:
    try:
        return share(raw.decode(encoding))
    except UnicodeDecodeError:
        return 0.0


def _cjk_share(text: str) -> float:
    cjk = len(_CJK.findall(text))
    return cjk / max(1, cjk + sum(c.isascii() and c.isalpha() for c in text))


def _latin_share(text: str) -> float:
    wide = [i for i, c in enumerate(text) if ord(c) > 127]
    return sum(_latin_like(text, i) for i in wide) / max(1, len(wide))


def _latin_like(text: str, i: int) -> bool:
    """``text[i]`` reads as Western text: an accented letter next to an ASCII letter, or Windows-1252
    punctuation with ASCII (or the text's start or end) on both sides."""
    around = [text[j] for j in (i - 1, i + 1) if 0 <= j < len(text)]
    if _LATIN.match(text[i]):
        return any(c.isascii() and c.isalpha() for c in around)
    return text[i] in _CP1252_PUNCT and all(c.isascii() for c in around)


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
