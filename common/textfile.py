"""Text files in a user-chosen encoding, with an error that says how to fix a wrong one (shared by
training's dataset loader and ``prepare``'s readers)."""

from __future__ import annotations

from pathlib import Path

from steam_persona.common.errors import UserError


def decode(path: Path, raw: bytes, encoding: str) -> str:
    """``raw`` (the bytes of ``path``) as text in ``--encoding`` (``utf-8`` also accepts a BOM).

    Raises:
        UserError: an unknown encoding, or bytes that are not valid in it: the line, the byte offset
            and a hint (``--encoding gbk`` when the bytes decode as GB18030).
    """
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(enc)
    except LookupError:
        raise UserError(f"{path}: unknown --encoding '{encoding}'; use e.g. utf-8, gbk, gb18030, utf-16") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        guess = ""
        for other in ("gb18030", "utf-16", "big5"):
            try:
                raw.decode(other)
                guess = other
                break
            except UnicodeDecodeError:
                continue
        hint = ("it looks GBK/GB18030-encoded; re-save it as UTF-8 or pass --encoding gbk" if guess == "gb18030"
                else f"it may be {guess}; pass --encoding {guess}" if guess
                else "re-save it as UTF-8 or pass the right --encoding")
        raise UserError(f"{path}: line {line}: not valid {encoding} (byte {e.start}); {hint}") from None
